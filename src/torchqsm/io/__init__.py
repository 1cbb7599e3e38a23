"""Input and output: NIfTI images, validation, JSON provenance sidecars, the acquisition record.

The numpy edge of torchqsm. :func:`load_nifti` and :func:`load_mask` read and
validate inputs (every problem is an :class:`~torchqsm.errors.InputError`
naming the file); :func:`acquisition_from_nifti` and :func:`load_gre` make the
:class:`~torchqsm.acquisition.Acquisition` from the header and the BIDS sidecars;
:func:`save_nifti` and :func:`write_sidecar` write outputs atomically and never
replace a file unless asked to.
"""

from torchqsm.io.acquisition import acquisition_from_nifti
from torchqsm.io.bids import GRE_SUFFIXES, GreRun, discover_gre
from torchqsm.io.derivatives import BIDS_VERSION, DERIVATIVE_SUFFIXES, derivative_path, write_dataset_description
from torchqsm.io.gre import GreData, load_gre
from torchqsm.io.nifti import Volume, check_same_grid, load_mask, load_nifti
from torchqsm.io.qc import qc_figure
from torchqsm.io.save import save_nifti
from torchqsm.io.sidecar import (
    json_safe,
    read_sidecar,
    sha256_of_file,
    sidecar_path_for,
    write_sidecar,
)

__all__ = [
    "acquisition_from_nifti",
    "Volume",
    "load_nifti",
    "load_mask",
    "check_same_grid",
    "save_nifti",
    "write_sidecar",
    "read_sidecar",
    "sidecar_path_for",
    "json_safe",
    "sha256_of_file",
    "GreData",
    "load_gre",
    "GreRun",
    "discover_gre",
    "derivative_path",
    "write_dataset_description",
    "DERIVATIVE_SUFFIXES",
    "GRE_SUFFIXES",
    "BIDS_VERSION",
    "qc_figure",
]
