"""The acquisition record from files: geometry from the NIfTI header, TE and B0 from BIDS sidecars.

:func:`acquisition_from_nifti` makes the :class:`~torchqsm.acquisition.Acquisition` of one
image (a field map, a χ map): voxel size (mm) from the header's zooms, B0 direction from the
affine (B0 along world z), echo times and field strength from the JSON sidecar beside the file
(BIDS ``EchoTime``, ``MagneticFieldStrength``). Keyword values win over the files; the record's
``sources`` says for each value where it came from (``header``, ``sidecar``, ``flag`` or
``given``, ``default``). :func:`~torchqsm.io.gre.load_gre` uses the same readers for
multi-echo data, where the echo times must also match the number of echoes.

Every problem in a file is an :class:`~torchqsm.errors.InputError` naming it; echo times that
are not positive, not increasing or look like milliseconds are a
:class:`~torchqsm.errors.ParameterError`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from torchqsm import validation
from torchqsm.acquisition import DEFAULT_PAD, Acquisition, KernelForm
from torchqsm.errors import InputError, ParameterError
from torchqsm.io.nifti import Volume, affine_b0_dir, header_voxel_size_mm, open_nifti
from torchqsm.io.sidecar import read_sidecar, sidecar_path_for

__all__ = ["acquisition_from_nifti", "Sidecars", "OverrideSource"]

LOG = logging.getLogger("torchqsm")
PathLike = str | os.PathLike[str]
#: Each file's JSON sidecar path and its entries (None where there is no sidecar).
Sidecars = list[tuple[Path, dict[str, Any] | None]]
#: How keyword values are recorded in ``Acquisition.sources``: command-line flags or Python arguments.
OverrideSource = Literal["flag", "given"]

# Echo times above this are almost surely milliseconds given as seconds.
_MAX_ECHO_TIME_S = 1.0
# Relative difference below which two echo times (or field strengths) agree.
_RELATIVE_TOLERANCE = 1e-4


def sidecars_beside(paths: Sequence[Path]) -> Sidecars:
    """The BIDS JSON beside each file, and its entries (``None`` where there is no such file)."""
    found = []
    for path in paths:
        json_path = sidecar_path_for(path)
        found.append((json_path, read_sidecar(json_path) if json_path.is_file() else None))
    return found


def _positive_numbers(value: Any, *, key: str, source: Path) -> list[float]:
    values = value if isinstance(value, list) else [value]
    try:
        numbers = [float(item) for item in values]
    except (TypeError, ValueError):
        raise InputError(f"{key} must be a number or a list of numbers, got {value!r}", source=str(source)) from None
    if not numbers or not all(math.isfinite(n) and n > 0 for n in numbers):
        raise InputError(f"{key} must be positive and finite, got {value!r}", source=str(source))
    return numbers


def echo_times_from(sidecars: Sidecars) -> tuple[list[float], str] | None:
    """Echo times from one part's sidecars: one listing every echo, or one per echo file."""
    if not any(record is not None and "EchoTime" in record for _, record in sidecars):
        return None
    if len(sidecars) == 1:  # one file for every echo: EchoTime is a number or a list
        path, record = sidecars[0]
        return _positive_numbers(record["EchoTime"], key="EchoTime", source=path), path.name
    times = []
    for path, record in sidecars:
        if record is None or "EchoTime" not in record:
            raise InputError("no EchoTime for this echo (the other echoes' sidecars have one)", source=str(path))
        value = _positive_numbers(record["EchoTime"], key="EchoTime", source=path)
        if len(value) != 1:
            raise InputError(f"EchoTime lists {len(value)} values for a one-echo file", source=str(path))
        times += value
    return times, f"{sidecars[0][0].name} … {sidecars[-1][0].name}"


def field_strength_from(sidecars: Sidecars) -> tuple[float, Path] | None:
    """``MagneticFieldStrength`` (T) of the sidecars that have one; they must agree."""
    found = [(path, record["MagneticFieldStrength"]) for path, record in sidecars
             if record is not None and "MagneticFieldStrength" in record]
    if not found:
        return None
    values = [(path, _positive_numbers(value, key="MagneticFieldStrength", source=path)) for path, value in found]
    first_path, first = values[0]
    for path, value in values[1:]:
        if differ(value, first):
            raise InputError(f"MagneticFieldStrength {value[0]:g} T disagrees with {first[0]:g} T "
                             f"in {first_path.name}", source=str(path))
    return first[0], first_path


def differ(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two lists of echo times (or field strengths) differ by more than 1e-4 relative."""
    return len(a) != len(b) or any(abs(x - y) > _RELATIVE_TOLERANCE * max(abs(x), abs(y)) for x, y in zip(a, b))


def check_echo_times(times: Sequence[float], *, echo_count: int | None, where: str,
                     source: str | None) -> tuple[float, ...]:
    """Positive, increasing seconds (:func:`torchqsm.validation.check_echo_times`), ``echo_count`` of them
    when given; the error names ``source``."""
    times = tuple(float(t) for t in times)
    if echo_count is not None and len(times) != echo_count:
        raise InputError(f"{len(times)} echo times ({where}) for {echo_count} echoes", source=source)
    try:
        return validation.check_echo_times(times)
    except ParameterError as error:
        raise ParameterError(error.message, source=source) from None
    except InputError as error:
        raise InputError(error.message, source=source) from None


def resolve_echo_times(given: Sequence[float] | None, *parts: Sidecars, echo_count: int | None, source: str,
                       notes: list[str], required: bool) -> tuple[tuple[float, ...] | None, str | None]:
    """Echo times and where they came from: the argument if given (noting a differing sidecar), else
    the first of ``parts``' sidecars that has ``EchoTime``. ``(None, None)`` when neither and not ``required``."""
    if given is not None:
        times = check_echo_times(given, echo_count=echo_count, where="given", source=None)
        try:
            from_files = next((found for part in parts if (found := echo_times_from(part))), None)
        except InputError as error:  # the argument wins: a broken sidecar only earns a note
            notes.append(f"echo times given; sidecar EchoTime ignored ({error})")
            return times, "override"
        if from_files is not None and differ(times, from_files[0]):
            notes.append(f"echo times {list(times)} s given override EchoTime {from_files[0]} s in {from_files[1]}")
        return times, "override"
    from_files = next((found for part in parts if (found := echo_times_from(part))), None)
    if from_files is None:
        if required:
            raise InputError(f"no echo times: give --echo-times or EchoTime in {parts[0][0][0].name}", source=source)
        return None, None
    return check_echo_times(from_files[0], echo_count=echo_count, where=f"EchoTime in {from_files[1]}",
                            source=source), "sidecar"


def resolve_b0(given: float | None, sidecars: Sidecars, *, source: str, notes: list[str],
               required: bool) -> tuple[float | None, str | None]:
    """Field strength (T) and where it came from: the argument if given (noting a differing sidecar),
    else ``MagneticFieldStrength``. ``(None, None)`` when neither and not ``required``."""
    if given is not None:
        b0 = float(given)
        if not (math.isfinite(b0) and b0 > 0):
            raise ParameterError(f"b0_tesla must be positive and finite, got {given!r}")
        try:
            from_files = field_strength_from(sidecars)
        except InputError as error:
            notes.append(f"b0_tesla given; sidecar MagneticFieldStrength ignored ({error})")
            return b0, "override"
        if from_files is not None and differ([b0], [from_files[0]]):
            notes.append(f"b0_tesla {b0:g} T given overrides MagneticFieldStrength {from_files[0]:g} T "
                         f"in {from_files[1].name}")
        return b0, "override"
    from_files = field_strength_from(sidecars)
    if from_files is None:
        if required:
            raise InputError(f"no field strength: give --b0-tesla or MagneticFieldStrength in {sidecars[0][0].name}",
                             source=source)
        return None, None
    return from_files[0], "sidecar"


def build_acquisition(*, voxel_size_mm: Any, b0_dir: Any, echo_times_s: tuple[float, ...] | None,
                      b0_tesla: float | None, origins: dict[str, str | None], pad: Any = None,
                      kernel_form: KernelForm | None = None, override_source: OverrideSource = "given") -> Acquisition:
    """The record with ``sources`` filled in: ``origins`` maps each value to ``header``, ``sidecar`` or
    ``override`` (recorded as ``override_source``); pad and kernel form are ``default`` unless given."""
    if override_source not in ("flag", "given"):
        raise ParameterError(f"override_source must be 'flag' or 'given', got {override_source!r}")
    origins = {**origins, "pad": "default" if pad is None else "override",
               "kernel_form": "default" if kernel_form is None else "override"}
    sources = {name: override_source if origin == "override" else origin
               for name, origin in origins.items() if origin is not None}
    return Acquisition(voxel_size_mm=voxel_size_mm, b0_dir=b0_dir, b0_tesla=b0_tesla, echo_times_s=echo_times_s,
                       pad=DEFAULT_PAD if pad is None else pad, kernel_form=kernel_form or "kspace", sources=sources)


def acquisition_from_nifti(
    path: PathLike | Volume,
    *,
    echo_times_s: Sequence[float] | None = None,
    b0_tesla: float | None = None,
    b0_dir: Sequence[float] | Sequence[Sequence[float]] | None = None,
    voxel_size_mm: Sequence[float] | None = None,
    pad: int | Sequence[int] | None = None,
    kernel_form: KernelForm | None = None,
    override_source: OverrideSource = "given",
) -> Acquisition:
    """The acquisition record of a NIfTI image: header geometry, sidecar TE and B0, keyword overrides.

    Parameters
    ----------
    path
        A ``.nii``/``.nii.gz`` file (only its header is read), or a loaded
        :class:`~torchqsm.io.nifti.Volume`. Its JSON sidecar (same name, ``.json``), if there is
        one, gives ``EchoTime`` (s; a number or a list) and ``MagneticFieldStrength`` (T).
    echo_times_s
        Echo times (s), increasing; replaces the sidecar's (a differing sidecar is logged).
    b0_tesla
        Field strength (T); replaces the sidecar's.
    b0_dir
        B0 direction in voxel coordinates (any non-zero length; one per orientation for COSMOS);
        replaces the one derived from the affine (world z in voxel coordinates).
    voxel_size_mm
        Voxel size (mm); replaces the header's zooms.
    pad, kernel_form
        Zero padding (voxels per side) and dipole kernel form of the record
        (default :data:`~torchqsm.acquisition.DEFAULT_PAD`, ``kspace``).
    override_source
        How keyword values are recorded in ``sources``: ``given`` (Python) or ``flag`` (the CLI).

    Returns
    -------
    Acquisition
        Echo times and field strength are None where neither the sidecar nor a keyword gives
        them (methods that need them then refuse to run, naming what is missing).

    Raises
    ------
    InputError
        The file is missing or not NIfTI, its affine gives no B0 direction, or its sidecar is
        unreadable or holds a non-positive ``EchoTime``/``MagneticFieldStrength``.
    ParameterError
        A value is out of range (echo times not increasing, in milliseconds, ...).

    Examples
    --------
    >>> import json, tempfile, numpy as np
    >>> from torchqsm.io.save import save_nifti
    >>> folder = Path(tempfile.mkdtemp())
    >>> field = save_nifti(folder / "field.nii.gz", np.zeros((4, 4, 4)), affine=np.diag([1, 1, 2, 1]))
    >>> _ = (folder / "field.json").write_text(json.dumps({"EchoTime": [0.004, 0.008], "MagneticFieldStrength": 7}))
    >>> acquisition = acquisition_from_nifti(field, pad=0)
    >>> acquisition.voxel_size_mm, acquisition.b0_tesla, acquisition.echo_times_s
    ((1.0, 1.0, 2.0), 7.0, (0.004, 0.008))
    >>> dict(acquisition.sources)["b0_tesla"], dict(acquisition.sources)["voxel_size_mm"]
    ('sidecar', 'header')
    """
    if isinstance(path, Volume):
        if path.path is None:
            raise ParameterError("acquisition_from_nifti needs a volume read from a file (its sidecar sits beside it)")
        file, header, affine = path.path, path.header, path.affine
    else:
        file = Path(path)
        image = open_nifti(file, role="image")
        header, affine = image.header, image.affine
    source = str(file)
    geometry = {"voxel_size_mm": header_voxel_size_mm(header, source=str(file)) if voxel_size_mm is None else voxel_size_mm,
                "b0_dir": affine_b0_dir(affine, source=source) if b0_dir is None else b0_dir}
    sidecars = sidecars_beside([file])
    notes: list[str] = []
    times, times_origin = resolve_echo_times(echo_times_s, sidecars, echo_count=None, source=source, notes=notes,
                                             required=False)
    b0, b0_origin = resolve_b0(b0_tesla, sidecars, source=source, notes=notes, required=False)
    for note in notes:
        LOG.info("%s: %s", source, note)
    origins = {"voxel_size_mm": "header" if voxel_size_mm is None else "override",
               "b0_dir": "header" if b0_dir is None else "override",
               "echo_times_s": times_origin, "b0_tesla": b0_origin}
    return build_acquisition(**geometry, echo_times_s=times, b0_tesla=b0, origins=origins, pad=pad,
                             kernel_form=kernel_form, override_source=override_source)
