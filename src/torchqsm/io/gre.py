"""Load multi-echo gradient-echo (GRE) magnitude and phase, with echo times and field strength.

:func:`load_gre` reads one 4-D NIfTI per part (echoes along the last axis),
one 3-D file per echo, or a single 3-D echo, checks that magnitude and phase
describe one acquisition on one grid, and takes the echo times (s) and the
field strength (T) from the arguments or from the BIDS JSON sidecars beside
the files (``EchoTime``, ``MagneticFieldStrength``). Every problem is an
:class:`~torchqsm.errors.InputError` (or, for the echo times themselves, a
:class:`~torchqsm.errors.ParameterError`) naming the file.

Phase is returned as stored (after the header's scaling): converting scanner
units (e.g. 0…4095) to radians belongs to preprocessing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchqsm.acquisition import Acquisition
from torchqsm.errors import InputError, ParameterError
from torchqsm.io.acquisition import OverrideSource, build_acquisition, resolve_b0, resolve_echo_times, sidecars_beside
from torchqsm.io.nifti import Volume, check_same_grid, load_nifti

__all__ = ["GreData", "load_gre"]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True, eq=False)
class GreData:
    """A multi-echo GRE acquisition as loaded by :func:`load_gre`.

    Attributes
    ----------
    magnitude
        Shape ``(E, X, Y, Z)``, float32, arbitrary units.
    phase
        Shape ``(E, X, Y, Z)``, float32, the values as stored (radians or
        scanner units; not rescaled here).
    acquisition
        The :class:`~torchqsm.acquisition.Acquisition`: echo times and field strength (from the
        sidecars or the arguments), voxel size and B0 direction (from the first magnitude
        file's header), with the source of each value. :attr:`echo_times_s`,
        :attr:`b0_tesla`, :attr:`voxel_size_mm` and :attr:`b0_dir` read it.
    affine
        4×4 voxel-to-world matrix (mm).
    reference
        A 3-D :class:`~torchqsm.io.nifti.Volume` (the first magnitude echo)
        whose header and affine place outputs on the same grid
        (``save_nifti(path, chi, like=gre.reference)``).
    sources
        Files used, by role, ready for ``write_sidecar(inputs=...)``:
        ``magnitude``/``phase`` (one file per part) or ``magnitude_echo-1``, ...
        (one file per echo), plus each JSON sidecar read (``phase_json``, ...).
    sidecar
        The BIDS sidecar entries of the first phase file (else of the first
        magnitude file); empty when there is none.
    notes
        Remarks for the provenance record, e.g. an argument that overrode a
        differing sidecar value.
    """

    magnitude: torch.Tensor
    phase: torch.Tensor
    acquisition: Acquisition
    affine: np.ndarray
    reference: Volume
    sources: Mapping[str, str]
    sidecar: Mapping[str, Any]
    notes: tuple[str, ...] = ()

    @property
    def echo_times_s(self) -> tuple[float, ...]:
        """``E`` echo times in seconds, increasing."""
        return self.acquisition.echo_times_s  # type: ignore[return-value]

    @property
    def b0_tesla(self) -> float:
        """Main field strength (T)."""
        return self.acquisition.b0_tesla  # type: ignore[return-value]

    @property
    def voxel_size_mm(self) -> tuple[float, float, float]:
        """Voxel size (mm) along X, Y, Z, from the header."""
        return self.acquisition.voxel_size_mm

    @property
    def b0_dir(self) -> tuple[float, float, float]:
        """Unit B0 direction in voxel coordinates, from the affine."""
        return self.acquisition.b0_dir

    @property
    def header(self):
        """The reference image's NIfTI header (3-D)."""
        return self.reference.header

    @property
    def echo_count(self) -> int:
        """Number of echoes ``E``."""
        return int(self.magnitude.shape[0])


def _as_paths(files: PathLike | Sequence[PathLike], role: str) -> list[Path]:
    if isinstance(files, (str, os.PathLike)):
        return [Path(files)]
    paths = [Path(file) for file in files]
    if not paths:
        raise ParameterError(f"no {role} file given")
    return paths


def _load_part(paths: list[Path], role: str) -> tuple[np.ndarray, list[Volume]]:
    """Echoes of one part as ``(E, X, Y, Z)`` float32, and the volumes read."""
    if len(paths) == 1:
        volume = load_nifti(paths[0], role=role, ndim=(3, 4))
        data = volume.data if volume.data.ndim == 4 else volume.data[..., None]
        return np.ascontiguousarray(np.moveaxis(data, -1, 0)), [volume]
    volumes = [load_nifti(path, role=f"{role} (one file per echo)", ndim=3) for path in paths]
    for volume in volumes[1:]:
        check_same_grid(volume, volumes[0])
    return np.stack([volume.data for volume in volumes]), volumes


def load_gre(
    magnitude: PathLike | Sequence[PathLike],
    phase: PathLike | Sequence[PathLike],
    *,
    echo_times_s: Sequence[float] | None = None,
    b0_tesla: float | None = None,
    override_source: OverrideSource = "given",
) -> GreData:
    """Read a (multi-echo) GRE acquisition: magnitude, phase, echo times, field strength.

    Parameters
    ----------
    magnitude, phase
        Each one ``.nii``/``.nii.gz`` file holding every echo (4-D, echoes
        last) or a single echo (3-D), or a list of 3-D files, one per echo
        in echo order. Both parts must have the same echoes on one grid.
    echo_times_s
        Echo times (s), one per echo, increasing. Default: ``EchoTime`` from
        the JSON sidecars beside the files (phase first, then magnitude).
    b0_tesla
        Field strength (T). Default: ``MagneticFieldStrength`` from the sidecars.
        An argument always wins over a sidecar; a disagreement is recorded in
        :attr:`GreData.notes`.
    override_source
        How arguments are recorded in ``acquisition.sources``: ``given`` (Python) or
        ``flag`` (the command line).

    Returns
    -------
    GreData
        Tensors shaped ``(E, X, Y, Z)``, the acquisition record (geometry from the
        first magnitude file's header), and provenance (files, sidecar entries, notes).

    Raises
    ------
    InputError
        A file is missing, unreadable or not 3-D/4-D; magnitude and phase (or
        the per-echo files) differ in shape, affine or number of echoes; the
        phase has NaN/infinite values or is all zero; echo times or field
        strength are missing, their count differs from the echoes', or the
        sidecars disagree.
    ParameterError
        Echo times are not positive, not increasing, or look like milliseconds;
        the field strength is not positive.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from torchqsm.io.save import save_nifti
    >>> folder = tempfile.mkdtemp()
    >>> mag = save_nifti(f"{folder}/mag.nii.gz", np.ones((4, 4, 4, 2)), affine=np.eye(4))
    >>> phs = save_nifti(f"{folder}/phs.nii.gz", np.full((4, 4, 4, 2), 0.5), affine=np.eye(4))
    >>> gre = load_gre(mag, phs, echo_times_s=[0.004, 0.008], b0_tesla=3.0)
    >>> tuple(gre.phase.shape), gre.echo_times_s, gre.b0_dir
    ((2, 4, 4, 4), (0.004, 0.008), (0.0, 0.0, 1.0))
    >>> gre.acquisition.sources["b0_tesla"], gre.acquisition.sources["b0_dir"]
    ('given', 'header')
    """
    magnitude_data, magnitude_volumes = _load_part(_as_paths(magnitude, "magnitude"), "magnitude")
    phase_data, phase_volumes = _load_part(_as_paths(phase, "phase"), "phase")
    reference, phase_source = magnitude_volumes[0], str(phase_volumes[0].path)
    check_same_grid(phase_volumes[0], reference)
    if phase_data.shape[0] != magnitude_data.shape[0]:
        raise InputError(
            f"the phase has {phase_data.shape[0]} echoes, the magnitude ({reference.path.name}) "
            f"{magnitude_data.shape[0]}",
            source=phase_source,
        )
    echo_count = int(magnitude_data.shape[0])
    for data, volumes in ((phase_data, phase_volumes), (magnitude_data, magnitude_volumes)):
        for echo in range(echo_count):
            if not np.any(data[echo]):
                volume = volumes[echo] if len(volumes) > 1 else volumes[0]
                which = f"echo {echo + 1} of " if echo_count > 1 and len(volumes) == 1 else ""
                raise InputError(
                    f"{which}the {volume.role} image is all zero", source=str(volume.path)
                )

    phase_sidecars = sidecars_beside([v.path for v in phase_volumes])
    magnitude_sidecars = sidecars_beside([v.path for v in magnitude_volumes])
    notes: list[str] = []
    times, times_origin = resolve_echo_times(echo_times_s, phase_sidecars, magnitude_sidecars,
                                             echo_count=echo_count, source=phase_source, notes=notes, required=True)
    b0, b0_origin = resolve_b0(b0_tesla, phase_sidecars + magnitude_sidecars, source=phase_source, notes=notes,
                               required=True)
    acquisition = build_acquisition(
        voxel_size_mm=reference.voxel_size_mm, b0_dir=reference.b0_dir, echo_times_s=times, b0_tesla=b0,
        origins={"voxel_size_mm": "header", "b0_dir": "header", "echo_times_s": times_origin, "b0_tesla": b0_origin},
        override_source=override_source)
    sources: dict[str, str] = {}
    for role, volumes, sidecars in (
        ("magnitude", magnitude_volumes, magnitude_sidecars),
        ("phase", phase_volumes, phase_sidecars),
    ):
        single = len(volumes) == 1
        for echo, (volume, (json_path, record)) in enumerate(zip(volumes, sidecars), start=1):
            sources[role if single else f"{role}_echo-{echo}"] = str(volume.path)
            if record is not None:
                sources[f"{role}_json" if single else f"{role}_echo-{echo}_json"] = str(json_path)

    header = reference.header.copy()
    header.set_data_shape(magnitude_data.shape[1:])
    reference = replace(reference, data=magnitude_data[0], header=header)
    return GreData(
        magnitude=torch.from_numpy(magnitude_data),
        phase=torch.from_numpy(phase_data),
        acquisition=acquisition,
        affine=reference.affine,
        reference=reference,
        sources=sources,
        sidecar=phase_sidecars[0][1] or magnitude_sidecars[0][1] or {},
        notes=tuple(notes),
    )
