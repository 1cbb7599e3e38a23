"""Command line interface (``torchqsm``)."""
