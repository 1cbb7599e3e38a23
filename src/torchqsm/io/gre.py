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

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.io.nifti import Volume, check_same_grid, load_nifti
from torchqsm.io.sidecar import read_sidecar, sidecar_path_for

__all__ = ["GreData", "load_gre"]

PathLike = str | os.PathLike[str]
# Each file's JSON sidecar path and its entries (None where there is no sidecar).
Sidecars = list[tuple[Path, dict[str, Any] | None]]

# Echo times above this are almost surely milliseconds given as seconds.
_MAX_ECHO_TIME_S = 1.0
# Relative difference below which two echo times (or field strengths) agree.
_RELATIVE_TOLERANCE = 1e-4


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
    echo_times_s
        ``E`` echo times in seconds, increasing.
    b0_tesla
        Main field strength (T).
    affine
        4×4 voxel-to-world matrix (mm).
    voxel_size_mm
        Voxel size (mm) along X, Y, Z.
    b0_dir
        Unit B0 direction in voxel coordinates, from the affine.
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
    echo_times_s: tuple[float, ...]
    b0_tesla: float
    affine: np.ndarray
    voxel_size_mm: tuple[float, float, float]
    b0_dir: tuple[float, float, float]
    reference: Volume
    sources: Mapping[str, str]
    sidecar: Mapping[str, Any]
    notes: tuple[str, ...] = ()

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


def _sidecars(volumes: list[Volume]) -> Sidecars:
    """The BIDS JSON beside each file, and its entries (``None`` where there is no such file)."""
    found = []
    for volume in volumes:
        json_path = sidecar_path_for(volume.path)
        found.append((json_path, read_sidecar(json_path) if json_path.is_file() else None))
    return found


def _positive_numbers(value: Any, *, key: str, source: Path) -> list[float]:
    values = value if isinstance(value, list) else [value]
    try:
        numbers = [float(item) for item in values]
    except (TypeError, ValueError):
        raise InputError(
            f"{key} must be a number or a list of numbers, got {value!r}", source=str(source)
        ) from None
    if not numbers or not all(math.isfinite(n) and n > 0 for n in numbers):
        raise InputError(f"{key} must be positive and finite, got {value!r}", source=str(source))
    return numbers


def _echo_times_from(sidecars: Sidecars) -> tuple[list[float], str] | None:
    """Echo times from one part's sidecars: one listing every echo, or one per echo file."""
    if not any(record is not None and "EchoTime" in record for _, record in sidecars):
        return None
    if len(sidecars) == 1:  # one file for every echo: EchoTime is a number or a list
        path, record = sidecars[0]
        return _positive_numbers(record["EchoTime"], key="EchoTime", source=path), path.name
    times = []
    for path, record in sidecars:
        if record is None or "EchoTime" not in record:
            raise InputError(
                "no EchoTime for this echo (the other echoes' sidecars have one)", source=str(path)
            )
        value = _positive_numbers(record["EchoTime"], key="EchoTime", source=path)
        if len(value) != 1:
            raise InputError(
                f"EchoTime lists {len(value)} values for a one-echo file", source=str(path)
            )
        times += value
    return times, f"{sidecars[0][0].name} … {sidecars[-1][0].name}"


def _differ(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) != len(b) or any(
        abs(x - y) > _RELATIVE_TOLERANCE * max(abs(x), abs(y)) for x, y in zip(a, b)
    )


def _check_echo_times(
    times: Sequence[float], *, echo_count: int, where: str, source: str | None
) -> tuple[float, ...]:
    times = tuple(float(t) for t in times)
    if len(times) != echo_count:
        raise InputError(
            f"{len(times)} echo times ({where}) for {echo_count} echoes", source=source
        )
    if not all(math.isfinite(t) and t > 0 for t in times):
        raise ParameterError(
            f"echo times must be positive and finite seconds, got {times}", source=source
        )
    if max(times) > _MAX_ECHO_TIME_S:
        raise ParameterError(
            f"echo times are in seconds; {max(times):g} s looks like milliseconds (e.g. 0.004, not 4)",
            source=source,
        )
    if any(later <= earlier for earlier, later in zip(times, times[1:])):
        raise ParameterError(
            f"echo times must increase from echo to echo, got {times}", source=source
        )
    return times


def _field_strength_from(sidecars: Sidecars) -> tuple[float, Path] | None:
    found = [
        (path, record["MagneticFieldStrength"])
        for path, record in sidecars
        if record is not None and "MagneticFieldStrength" in record
    ]
    if not found:
        return None
    values = [
        (path, _positive_numbers(value, key="MagneticFieldStrength", source=path))
        for path, value in found
    ]
    first_path, first = values[0]
    for path, value in values[1:]:
        if _differ(value, first):
            raise InputError(
                f"MagneticFieldStrength {value[0]:g} T disagrees with {first[0]:g} T "
                f"in {first_path.name}",
                source=str(path),
            )
    return first[0], first_path


def _resolve_echo_times(
    given: Sequence[float] | None,
    phase_sidecars: Sidecars,
    magnitude_sidecars: Sidecars,
    *,
    echo_count: int,
    source: str,
    notes: list[str],
) -> tuple[float, ...]:
    """The argument if given (noting a differing sidecar), else the phase's or magnitude's sidecars."""
    if given is not None:
        times = _check_echo_times(given, echo_count=echo_count, where="given", source=None)
        try:
            from_files = _echo_times_from(phase_sidecars) or _echo_times_from(magnitude_sidecars)
        except InputError as error:  # the argument wins: a broken sidecar only earns a note
            notes.append(f"echo times given; sidecar EchoTime ignored ({error})")
            return times
        if from_files is not None and _differ(times, from_files[0]):
            notes.append(
                f"echo times {list(times)} s given override EchoTime {from_files[0]} s "
                f"in {from_files[1]}"
            )
        return times
    from_files = _echo_times_from(phase_sidecars) or _echo_times_from(magnitude_sidecars)
    json_path = phase_sidecars[0][0]
    if from_files is None:
        raise InputError(
            f"no echo times: give --echo-times or EchoTime in {json_path.name}", source=source
        )
    return _check_echo_times(
        from_files[0], echo_count=echo_count, where=f"EchoTime in {from_files[1]}", source=source
    )


def _resolve_b0(given: float | None, sidecars: Sidecars, *, source: str, notes: list[str]) -> float:
    """The argument if given (noting a differing sidecar), else ``MagneticFieldStrength``."""
    if given is not None:
        b0 = float(given)
        if not (math.isfinite(b0) and b0 > 0):
            raise ParameterError(f"b0_tesla must be positive and finite, got {given!r}")
        try:
            from_files = _field_strength_from(sidecars)
        except InputError as error:
            notes.append(f"b0_tesla given; sidecar MagneticFieldStrength ignored ({error})")
            return b0
        if from_files is not None and _differ([b0], [from_files[0]]):
            notes.append(
                f"b0_tesla {b0:g} T given overrides MagneticFieldStrength {from_files[0]:g} T "
                f"in {from_files[1].name}"
            )
        return b0
    from_files = _field_strength_from(sidecars)
    if from_files is None:
        json_path = sidecars[0][0]
        raise InputError(
            f"no field strength: give --b0 or MagneticFieldStrength in {json_path.name}",
            source=source,
        )
    return from_files[0]


def load_gre(
    magnitude: PathLike | Sequence[PathLike],
    phase: PathLike | Sequence[PathLike],
    *,
    echo_times_s: Sequence[float] | None = None,
    b0_tesla: float | None = None,
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

    Returns
    -------
    GreData
        Tensors shaped ``(E, X, Y, Z)``, geometry from the first magnitude
        file's affine, and provenance (files, sidecar entries, notes).

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

    phase_sidecars, magnitude_sidecars = _sidecars(phase_volumes), _sidecars(magnitude_volumes)
    notes: list[str] = []
    times = _resolve_echo_times(
        echo_times_s,
        phase_sidecars,
        magnitude_sidecars,
        echo_count=echo_count,
        source=phase_source,
        notes=notes,
    )
    b0 = _resolve_b0(
        b0_tesla, phase_sidecars + magnitude_sidecars, source=phase_source, notes=notes
    )
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
        echo_times_s=times,
        b0_tesla=b0,
        affine=reference.affine,
        voxel_size_mm=reference.voxel_size_mm,
        b0_dir=reference.b0_dir,
        reference=reference,
        sources=sources,
        sidecar=phase_sidecars[0][1] or magnitude_sidecars[0][1] or {},
        notes=tuple(notes),
    )
