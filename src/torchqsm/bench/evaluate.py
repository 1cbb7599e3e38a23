r"""Score dipole inversion methods on the evaluation suite (:mod:`torchqsm.bench.suite`).

Each case is read as a user's data would be (BIDS magnitude and phase, sidecars, affine) and
each method runs through the registry's :func:`~torchqsm.pipeline.registry.invert`, so every
registered method, classical or learned, is scored the same way.

What is evaluated is the dipole inversion alone, as in the QSM challenges: the input is the
ground-truth local field plus the field noise of the case's own acquisition, not a local field
from the raw phase (background removal on this suite is an open problem of its own; it would
dominate every method's error). The noise is measured from the multi-echo signal against the
noise-free truth, without unwrapping or background removal: for consecutive echoes
:math:`k, k+1` with :math:`\Delta T_k = T_{k+1} - T_k` and
:math:`a_k = 2\pi\bar\gamma B_0 \Delta T_k \cdot 10^{-6}` (rad per ppm),

.. math::
    r_k = \arg\!\big(S_{k+1}\,\overline{S_k}\,e^{-i a_k f}\big), \qquad
    \delta = \frac{\sum_k w_k a_k r_k}{\sum_k w_k a_k^2}, \qquad
    w_k = \frac{|S_k|^2 |S_{k+1}|^2}{|S_k|^2 + |S_{k+1}|^2},

where :math:`f` is the true total field (ppm) and :math:`r_k` the wrapped residual of the
measured phase difference. :math:`\delta` (ppm) is the weighted least-squares fit of
:math:`r_k \approx a_k \delta`; :math:`w_k` is the inverse variance of :math:`\arg(S_{k+1}
\overline{S_k})` for complex noise of equal σ in every echo (σ² (1/|S_k|² + 1/|S_{k+1}|²)), so
long echoes and dark voxels (veins, haemorrhage, 7 T) count less, as in a multi-echo field fit.
The correlation of consecutive differences (they share an echo) is ignored. The receive-phase
offset cancels in the difference. The input is :math:`(f_\mathrm{local} + \delta) M`. In the
coarse case ``res-1x1x2mm`` δ also holds the disagreement between the phase of the truncated signal
and the truncated field truth (suite 1.1, 1 mm: 47 ppb rms, 4.7× the local field, largest at the
slab ends; acquisition noise is 1.5 ppb at SNR 100), so that case scores this mismatch.

One case differs: ``residual-background`` (``field_input: "pdf"`` in the suite's index) gives the
inversion what PDF background removal (:func:`~torchqsm.preprocess.background.pdf`, in the true
brain mask) leaves of :math:`(f_\mathrm{total} + \delta) M`, so the residual background a real local
field carries is part of the input.

Metrics (:mod:`torchqsm.metrics`) are computed in the brain mask after demeaning both maps
there (χ is relative: the challenges and the suite's truth fix no common reference):
NRMSE (%), HFEN (%) and SSIM (data range of the demeaned truth).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from ..acquisition import Acquisition
from ..errors import InputError
from ..io import check_same_grid, load_gre, load_mask, load_nifti
from ..metrics import hfen, nrmse, ssim
from ..physics.units import radians_per_ppm
from ..preprocess.background import pdf
from ..pipeline.registry import get_method, invert

__all__ = ["SuiteInput", "EvaluationRow", "load_case", "measured_field_noise_ppm", "evaluate", "markdown_table"]

MethodEntry = str | tuple[str, str, Mapping[str, Any]]
Metric = Literal["nrmse", "hfen", "ssim", "seconds"]
#: Direction of each metric (best = lowest, except SSIM) and its cell format.
_METRICS = {"nrmse": ("NRMSE (%)", min, "{:.1f}"), "hfen": ("HFEN (%)", min, "{:.1f}"),
            "ssim": ("SSIM", max, "{:.3f}"), "seconds": ("time (s)", min, "{:.1f}")}


@dataclass(frozen=True, eq=False)
class SuiteInput:
    """One case of the suite, ready for a dipole inversion.

    Attributes
    ----------
    name
        Case name (its folder's name).
    local_field_ppm
        The inversion's input: true local field plus the measured field noise, zero outside
        ``mask``; ``(X, Y, Z)`` float32, ppm of B0.
    true_local_field_ppm
        The noise-free local field (ppm), ``(X, Y, Z)``.
    chi_ppm
        Ground-truth susceptibility (ppm, relative to CSF), ``(X, Y, Z)``.
    mask
        Brain mask, boolean ``(X, Y, Z)``.
    labels
        Tissue labels (``dseg``), int64 ``(X, Y, Z)``.
    voxel_size_mm
        Voxel size (mm).
    b0_dir
        Unit B0 direction in voxel coordinates, from the affine.
    b0_tesla
        Field strength (T).
    noise_rms_ppm
        Root mean square of the field noise in the mask (ppm).
    acquisition
        The case's :class:`~torchqsm.acquisition.Acquisition` (geometry, field strength, echo
        times from its BIDS sidecars): what every method is given.
    """

    name: str
    local_field_ppm: torch.Tensor
    true_local_field_ppm: torch.Tensor
    chi_ppm: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    voxel_size_mm: tuple[float, float, float]
    b0_dir: tuple[float, float, float]
    b0_tesla: float
    noise_rms_ppm: float
    acquisition: Acquisition | None = None


@dataclass(frozen=True)
class EvaluationRow:
    """The score of one method on one case: NRMSE and HFEN in %, SSIM, wall time of the inversion (s)."""

    case: str
    method: str
    nrmse: float
    hfen: float
    ssim: float
    seconds: float


def measured_field_noise_ppm(
    magnitude: torch.Tensor,
    phase_rad: torch.Tensor,
    total_field_ppm: torch.Tensor,
    *,
    echo_times_s: Sequence[float],
    b0_tesla: float,
) -> torch.Tensor:
    r"""Field noise (ppm) of a multi-echo signal against its noise-free total field.

    The weighted fit :math:`\delta = \sum_k w_k a_k r_k / \sum_k w_k a_k^2` of the module notes:
    no unwrapping, the receive-phase offset cancels.

    Parameters
    ----------
    magnitude, phase_rad
        The signal, ``(E, X, Y, Z)`` (arbitrary units; radians), ``E ≥ 2`` echoes.
    total_field_ppm
        The true total field (ppm), ``(X, Y, Z)``.
    echo_times_s
        ``E`` increasing echo times (s).
    b0_tesla
        Field strength (T).

    Returns
    -------
    torch.Tensor
        δ (ppm), ``(X, Y, Z)``, float32; 0 where every echo pair has zero magnitude.

    Examples
    --------
    >>> field = torch.full((4, 4, 4), 0.3)
    >>> times = (0.005, 0.015, 0.025)
    >>> phase = torch.stack([field * radians_per_ppm(echo_time_s=t, b0_tesla=3.0) + 1.0 for t in times])
    >>> noise = measured_field_noise_ppm(torch.ones_like(phase), phase, field, echo_times_s=times, b0_tesla=3.0)
    >>> float(noise.abs().max()) < 1e-6
    True
    """
    if magnitude.ndim != 4 or magnitude.shape != phase_rad.shape or magnitude.shape[0] < 2:
        raise InputError(f"need magnitude and phase of one shape (E ≥ 2, X, Y, Z), got "
                         f"{tuple(magnitude.shape)} and {tuple(phase_rad.shape)}")
    if len(echo_times_s) != magnitude.shape[0]:
        raise InputError(f"{len(echo_times_s)} echo times for {magnitude.shape[0]} echoes")
    signal = torch.polar(magnitude.double(), phase_rad.double())
    field = total_field_ppm.double()
    numerator = torch.zeros_like(field)
    denominator = torch.zeros_like(field)
    for k in range(signal.shape[0] - 1):
        a = radians_per_ppm(echo_time_s=echo_times_s[k + 1] - echo_times_s[k], b0_tesla=b0_tesla)
        # Removing the expected rotation before taking the angle wraps the residual into (-π, π].
        residual = torch.angle(signal[k + 1] * signal[k].conj() * torch.polar(torch.ones_like(field), -a * field))
        p, q = signal[k].abs() ** 2, signal[k + 1].abs() ** 2
        weight = torch.where(p + q > 0, p * q / (p + q).clamp_min(torch.finfo(p.dtype).tiny), 0.0)
        numerator += weight * a * residual
        denominator += weight * a * a
    return torch.where(denominator > 0, numerator / denominator.clamp_min(torch.finfo(field.dtype).tiny), 0.0).float()


def _echo_files(anat: Path, part: str) -> list[Path]:
    files = list(anat.glob(f"sub-01_echo-*_part-{part}_MEGRE.nii.gz"))
    if not files:
        raise InputError(f"no {part} echoes (sub-01_echo-<n>_part-{part}_MEGRE.nii.gz)", source=str(anat))
    try:
        return sorted(files, key=lambda path: int(path.name.split("_echo-")[1].split("_")[0]))
    except ValueError:
        names = [f.name for f in files]
        raise InputError(f"an echo number is not an integer among {names}", source=str(anat)) from None


def load_case(case_dir: str | Path) -> SuiteInput:
    """Read one case of the evaluation suite and build the inversion's noisy input.

    Parameters
    ----------
    case_dir
        ``<suite>/<case>`` as written by :func:`~torchqsm.bench.suite.build_suite`.

    Returns
    -------
    SuiteInput
        The input local field (truth + measured field noise, module notes), the truth and the geometry.

    Raises
    ------
    InputError
        The folder or a file is missing or unreadable, grids differ, or the phase is not in
        radians (the int16 files need their ``scl_slope`` applied); the message names the file.
    """
    folder = Path(case_dir)
    if not folder.is_dir():
        raise InputError("the suite case folder does not exist", source=str(folder))
    anat = folder / "sub-01" / "anat"
    gre = load_gre(_echo_files(anat, "mag"), _echo_files(anat, "phase"))
    largest = float(gre.phase.abs().max())
    if largest > math.pi + 1e-3:
        raise InputError(f"the phase reaches {largest:.4g}, not radians (is the int16 scl_slope missing?)",
                         source=gre.sources.get("phase_echo-1", str(anat)))
    truth = folder / "derivatives" / "groundtruth" / "sub-01" / "anat"

    def image(suffix: str, role: str, dtype: type = torch.float32) -> torch.Tensor:
        volume = load_nifti(truth / f"sub-01_{suffix}.nii.gz", role=role)
        check_same_grid(volume, gre.reference)
        return torch.from_numpy(volume.data).to(dtype)

    mask = torch.from_numpy(load_mask(truth / "sub-01_desc-brain_mask.nii.gz", like=gre.reference).data)
    chi, local, total = (image(s, r) for s, r in (("Chimap", "chi"), ("desc-local_fieldmap", "local field"),
                                                   ("desc-total_fieldmap", "total field")))
    labels = image("dseg", "labels", torch.int64)
    noise = measured_field_noise_ppm(gre.magnitude, gre.phase, total, echo_times_s=gre.echo_times_s,
                                     b0_tesla=gre.b0_tesla) * mask
    given = (local + noise) * mask
    if _field_input(folder) == "pdf":  # the residual-background case: what background removal leaves
        given = pdf((total + noise) * mask, mask, voxel_size_mm=tuple(gre.voxel_size_mm),
                    b0_dir=tuple(gre.b0_dir)).local_field_ppm.to(given.dtype) * mask
    return SuiteInput(folder.name, given, local * mask, chi * mask, mask, labels,
                      tuple(gre.voxel_size_mm), tuple(gre.b0_dir), float(gre.b0_tesla),
                      float(noise[mask].double().square().mean().sqrt()), gre.acquisition)


def _field_input(folder: Path) -> str:
    """The case's ``field_input`` from the suite's index beside it (``"truth"`` when there is none)."""
    index = folder.parent / "suite.json"
    if not index.is_file():
        return "truth"
    try:
        cases = json.loads(index.read_text(encoding="utf-8")).get("cases", [])
    except (OSError, ValueError, AttributeError) as error:
        raise InputError(f"the suite index is unreadable: {error}", source=str(index)) from None
    for record in cases:
        if isinstance(record, dict) and record.get("name") == folder.name:
            return str(record.get("field_input", "truth"))
    return "truth"


def _entries(methods: Sequence[MethodEntry]) -> list[tuple[str, str, dict[str, Any]]]:
    entries = []
    for entry in methods:
        label, name, params = (entry, entry, {}) if isinstance(entry, str) else entry
        get_method(name)  # an unknown name fails before any case is read
        entries.append((label, name, dict(params)))
    labels = [label for label, _, _ in entries]
    if len(set(labels)) != len(labels):
        raise InputError(f"method labels must be unique, got {labels}")
    return entries


def _score(chi: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, float]:
    """NRMSE, HFEN, SSIM of the maps demeaned in the mask."""
    estimate = (chi.double() - chi.double()[mask].mean()) * mask
    reference = (truth.double() - truth.double()[mask].mean()) * mask
    return nrmse(estimate, reference, mask), hfen(estimate, reference, mask), ssim(estimate, reference, mask)


def evaluate(
    suite_dir: str | Path,
    methods: Sequence[MethodEntry],
    *,
    cases: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[EvaluationRow]:
    """Run every method on every case of a built suite and score χ against the truth.

    Parameters
    ----------
    suite_dir
        The folder holding ``suite.json``.
    methods
        Registered method names, or ``(label, name, params)`` entries (``params`` passed to
        :func:`~torchqsm.pipeline.registry.invert`; labels must be unique).
    cases
        Case names (default: every case in ``suite.json``, in its order).
    device
        Where the inversions run (default CPU).
    progress
        Show a bar over case × method (only on a terminal).

    Returns
    -------
    list of EvaluationRow
        One row per case and method, case-major; metrics as in the module notes.

    Raises
    ------
    InputError
        ``suite.json`` or a case is missing or unreadable.
    ParameterError
        An unknown method or parameter.
    """
    root = Path(suite_dir)
    index_path = root / "suite.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        listed = [record["name"] for record in index["cases"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"not a readable evaluation suite index: {error}", source=str(index_path)) from None
    chosen = listed if cases is None else list(cases)
    entries = _entries(methods)
    rows: list[EvaluationRow] = []
    with tqdm(total=len(chosen) * len(entries), desc="evaluate", unit="run", leave=False, dynamic_ncols=True,
              disable=None if progress else True) as bar:
        for case_name in chosen:
            case = load_case(root / case_name)
            for label, name, params in entries:
                bar.set_postfix_str(f"{case_name}: {label}", refresh=False)
                started = time.perf_counter()
                chi = invert(case.local_field_ppm, case.mask, name, case.acquisition, voxel_size_mm=case.voxel_size_mm,
                             b0_dir=case.b0_dir, device=device, **params)
                seconds = time.perf_counter() - started  # χ is back on the CPU: the device work is done
                rows.append(EvaluationRow(case_name, label, *_score(chi, case.chi_ppm, case.mask), seconds))
                bar.update()
    return rows


def markdown_table(rows: Sequence[EvaluationRow], metric: Metric = "nrmse") -> str:
    """One Markdown table of ``metric``: a row per method, a column per case and their mean.

    The best value of each column is in bold (lowest; highest for SSIM); a missing run is "—".

    Examples
    --------
    >>> rows = [EvaluationRow("baseline", "tkd", 30.0, 28.0, 0.8, 0.2),
    ...         EvaluationRow("baseline", "tv", 20.0, 22.0, 0.9, 9.0)]
    >>> print(markdown_table(rows, "ssim"))
    | SSIM | baseline | mean |
    | --- | ---: | ---: |
    | tkd | 0.800 | 0.800 |
    | tv | **0.900** | **0.900** |
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    title, best_of, fmt = _METRICS[metric]
    methods = list(dict.fromkeys(row.method for row in rows))
    cases = list(dict.fromkeys(row.case for row in rows))
    value = {(row.method, row.case): getattr(row, metric) for row in rows}
    columns: dict[str, dict[str, float]] = {case: {m: value[m, case] for m in methods if (m, case) in value}
                                            for case in cases}
    columns["mean"] = {m: sum(value[m, c] for c in cases) / len(cases) for m in methods
                       if all((m, c) in value for c in cases)}
    best = {column: best_of(cells.values()) if cells else None for column, cells in columns.items()}
    lines = [f"| {title} | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for method in methods:
        cells = []
        for column, values in columns.items():
            if method not in values:
                cells.append("—")
                continue
            text = fmt.format(values[method])
            cells.append(f"**{text}**" if text == fmt.format(best[column]) and len(values) > 1 else text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
