"""Pre-processing: masking, echo combination, phase unwrapping, background-field removal, referencing."""
