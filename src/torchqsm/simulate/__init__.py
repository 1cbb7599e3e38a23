"""Simulation: χ models (phantoms, atlas head, hybrid brains, shapes, lesions), background fields, GRE signal.

The same physics as the pipeline, run backwards (χ → field → phase → signal) to
make training and evaluation data:

* :mod:`~torchqsm.simulate.phantoms`: analytic spheres, ellipsoids, cylinders;
* :mod:`~torchqsm.simulate.anatomy`: the atlas-based head model with literature χ;
* :mod:`~torchqsm.simulate.hybrid`, :mod:`~torchqsm.simulate.shapes`,
  :mod:`~torchqsm.simulate.lesions`, :mod:`~torchqsm.simulate.augment`: random anatomy;
* :mod:`~torchqsm.simulate.background`: external sources and shim residuals;
* :mod:`~torchqsm.simulate.forward`, :mod:`~torchqsm.simulate.signal`,
  :mod:`~torchqsm.simulate.orientation`: field, multi-echo signal, B0 directions;
* :mod:`~torchqsm.simulate.volume`: one simulated subject (χ, fields, signal maps);
* :mod:`~torchqsm.simulate.dataset`: on-the-fly training pairs cut from such subjects.
"""

from .anatomy import TISSUES, HeadModel, Tissue, load_head_model, sample_tissue_chi, tissue, tissue_parameters
from .augment import random_rotation, random_scale, rotate_volume, rotation_matrix, scale_susceptibility
from .background import background_field, external_sources, shim_field
from .dataset import SimulatedQSMDataset, SimulatedVolume, SimulationConfig, derive_seed, simulate_volume
from .forward import add_noise, forward_field
from .hybrid import hybrid_chi, random_deformation
from .lesions import LESION_KINDS, LesionKind, add_lesions, add_veins
from .orientation import affine_for_b0_dir, b0_tilt_deg, random_b0_dir
from .phantoms import cylinder, ellipsoid, shapes_phantom, sphere
from .shapes import random_shapes
from .signal import add_complex_noise, complex_gre_signal, gre_signal, smooth_phase_offset, truncate_kspace

__all__ = [
    "sphere", "ellipsoid", "cylinder", "shapes_phantom", "forward_field", "add_noise",
    "TISSUES", "Tissue", "tissue", "HeadModel", "load_head_model", "sample_tissue_chi", "tissue_parameters",
    "random_deformation", "hybrid_chi", "random_shapes",
    "LESION_KINDS", "LesionKind", "add_lesions", "add_veins",
    "external_sources", "background_field", "shim_field",
    "scale_susceptibility", "random_scale", "rotate_volume", "random_rotation", "rotation_matrix",
    "gre_signal", "complex_gre_signal", "add_complex_noise", "smooth_phase_offset", "truncate_kspace",
    "random_b0_dir", "affine_for_b0_dir", "b0_tilt_deg",
    "SimulationConfig", "SimulatedQSMDataset", "SimulatedVolume", "simulate_volume", "derive_seed",
]
