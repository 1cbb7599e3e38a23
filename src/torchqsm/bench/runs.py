r"""One benchmark run: a method on a case, scored, timed, and saved atomically under its cache key.

A run reads its case as :func:`~torchqsm.bench.evaluate.load_case` does (true local field plus
the field noise measured from the case's own multi-echo signal), inverts it through the
registry's :func:`~torchqsm.pipeline.registry.invert`, scores χ against the truth with
:func:`torchqsm.metrics.score` (and the ROI statistics of the case's label map, and the
lesion mean where the case has a lesion mask), and writes two files under
``REPORT_DIR/runs/<case>/``: ``<run>.npy`` (χ, ppm, float32) and then ``<run>.json`` (the
record, with every automatic choice the method made under ``choices``: the rule, value and
noise estimate of each ``"auto"`` parameter). Both are written atomically, the record last, so a record on disk always has its
χ beside it; a killed run leaves nothing, a finished run is never lost.

The cache key (:func:`run_key`) is the SHA-256 of the case's input files (their bytes), the
method, every parameter value (defaults filled in, so a changed default makes the run stale),
the device type and the torchqsm, torch and suite versions. A rerun reuses a record whose key
matches and recomputes the rest.

Peak memory is the peak resident set size of the process during the inversion (Linux: the
``VmHWM`` high-water mark, reset through ``/proc/self/clear_refs`` before the run), or on CUDA
the peak of :func:`torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..io import load_gre, load_mask
from ..inversion.regularization import collect_choices
from ..io._atomic import write_atomically
from ..metrics import score
from ..pipeline.registry import get_method, invert
from .bids import load_bids_case
from .evaluate import SuiteInput, _echo_files, load_case

__all__ = ["RunTask", "load_bench_case", "resolved_params", "run_key", "case_digest", "run_file_stem", "execute", "read_record"]

#: Keys of :func:`torchqsm.metrics.score` copied into every record (same order as the tables).
SCORE_KEYS = ("nrmse", "nrmse_demeaned", "dnrmse", "hfen", "ssim", "xsim", "psnr", "pearson")


@dataclass(frozen=True)
class RunTask:
    """Everything a worker needs for one run (picklable; paths are the report's, shared with workers).

    ``params`` are the method's parameter values as given (validated in the parent);
    ``key`` is :func:`run_key`; ``threads`` sets torch's intra-op threads on a worker (``None``:
    leave them).
    """

    case: str
    case_dir: str
    label: str
    method: str
    params: Mapping[str, Any]
    device: str
    key: str
    record_path: str
    chi_path: str
    case_hash: str = ""
    threads: int | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    source: str = "field"
    bids_key: str | None = None


def case_digest(case_dir: str | Path) -> str:
    """SHA-256 of every input and ground-truth file of a case (names and bytes), hex."""
    folder = Path(case_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        raise TypeError("image parameters are not part of a bench run")
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def resolved_params(method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The method's parameter values (defaults filled in, checked), without its image parameters.

    Images the method requires (MEDI's magnitude) are the bench's to give, so a placeholder
    stands in for them while checking.
    """
    spec = get_method(method)
    images = {s.name for s in spec.specs if s.image}
    placeholders = {s.name: torch.zeros(()) for s in spec.specs if s.image and s.required and s.name not in params}
    values = spec.values({**params, **placeholders}).as_kwargs()
    return {k: v for k, v in values.items() if k not in images}


def run_key(case_digest_hex: str, method: str, params: Mapping[str, Any], device: str, suite_version: str) -> str:
    """The cache key of a run: SHA-256 over its inputs, method, resolved parameters and versions."""
    values = resolved_params(method, params)
    payload = {"case": case_digest_hex, "method": method, "params": {k: _jsonable(v) for k, v in sorted(values.items())},
               "device": torch.device(device).type, "suite": suite_version, "torchqsm": __version__,
               "torch": torch.__version__}
    if values.get("weights"):  # retrained weights under the same name are another run
        payload["weights_sha256"] = _weights_sha256(str(values["weights"]))
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def recipe_key(case_digest_hex: str, recipe: str, device: str, suite_version: str) -> str:
    """The cache key of a ``--from raw`` run: the case, every field of the recipe, the versions."""
    from ..pipeline.recipes import get_recipe

    chosen = get_recipe(recipe)
    payload = {"case": case_digest_hex, "source": "raw", "recipe": _jsonable_tree(chosen.as_dict()),
               "device": torch.device(device).type, "suite": suite_version, "torchqsm": __version__,
               "torch": torch.__version__}
    if chosen.phase_network:
        from ..errors import ParameterError
        from ..pipeline.phase_networks import weights_for

        try:
            payload["weights_sha256"] = _weights_sha256(weights_for(chosen.phase_network))
        except ParameterError:  # no weights shipped: the run fails and says so
            payload["weights_sha256"] = ""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _weights_sha256(weights: str) -> str:
    """The SHA-256 its card records for the weights ``weights`` (name or card path); '' when it cannot be read
    (the run then fails and says why)."""
    from ..errors import InputError
    from ..models.weights import model_card

    try:
        return str(model_card(weights).get("sha256", ""))
    except InputError:
        return ""


def _jsonable_tree(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable_tree(v) for k, v in sorted(value.items())}
    return _jsonable(value)


def run_file_stem(label: str) -> str:
    """A file name for a method label: safe characters, plus a short hash when any were replaced.

    >>> run_file_stem("tv"), run_file_stem("tkd:threshold=0.1")
    ('tv', 'tkd_threshold_0.1-a8330d')
    """
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", label)
    return safe if safe == label else f"{safe}-{hashlib.sha256(label.encode()).hexdigest()[:6]}"


def read_record(path: str | Path) -> dict[str, Any] | None:
    """The record at ``path``, or ``None`` when it is missing, unreadable or lacks its χ file."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or "key" not in record:
        return None
    if record.get("status") == "ok" and not Path(str(path).removesuffix(".json") + ".npy").is_file():
        return None
    return record


def load_bench_case(case_dir: str, digest: str = "", bids_key: str | None = None):
    """The loaded case, its multi-echo GRE data (``GreData``) and lesion mask; cached per worker.

    ``bids_key``: the run of a BIDS dataset at ``case_dir`` (:mod:`torchqsm.bench.bids`);
    ``None``: a case folder of the evaluation suite.
    """
    if bids_key is not None:
        return load_bids_case(case_dir, bids_key, digest)
    return _case(case_dir, digest)


@lru_cache(maxsize=2)
def _case(case_dir: str, digest: str):
    case = load_case(case_dir)
    anat = Path(case_dir) / "sub-01" / "anat"
    gre = load_gre(_echo_files(anat, "mag"), _echo_files(anat, "phase"))
    lesion_path = Path(case_dir) / "derivatives" / "groundtruth" / "sub-01" / "anat" / "sub-01_desc-lesion_mask.nii.gz"
    lesion = torch.from_numpy(load_mask(lesion_path, like=gre.reference).data) if lesion_path.is_file() else None
    return case, gre, lesion


class _PeakMemory:
    """Peak memory (MiB) of the code inside the ``with`` block: CUDA allocator peak or process RSS."""

    def __init__(self, device: str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.kind = "cuda" if self.cuda else "rss"
        self.mib: float | None = None

    def __enter__(self) -> _PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            try:  # "5" resets VmHWM to the current RSS (Linux ≥ 4.0)
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.kind = "rss-lifetime"  # the process's peak since it started
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.mib = torch.cuda.max_memory_allocated() / 2**20
            return
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.mib = int(line.split()[1]) / 1024
        except OSError:
            import resource

            self.mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _score(chi: torch.Tensor, case: SuiteInput, lesion: torch.Tensor | None,
           mask: torch.Tensor | None = None) -> dict[str, Any]:
    """Every metric of ``chi`` against the truth in ``mask`` (default: the case's brain mask)."""
    mask = case.mask if mask is None else mask
    metrics = score(chi, case.chi_ppm, mask, labels=case.labels * mask)
    roi = metrics.pop("roi")
    result: dict[str, Any] = {key: float(metrics[key]) for key in SCORE_KEYS}
    result.update(roi_slope=roi.get("slope"), roi_intercept=roi.get("intercept"), roi_r_squared=roi.get("r_squared"),
                  roi=[{k: row[k] for k in ("label", "voxel_count", "mean_estimate", "mean_reference")}
                       for row in roi.get("rows", [])])
    if lesion is not None and bool(lesion.any()):
        # χ is relative: both lesion means are taken against their own brain mean.
        inside = lesion & mask
        if bool(inside.any()):
            result["lesion_mean"] = float(chi[inside].double().mean() - chi[mask].double().mean())
            result["lesion_mean_truth"] = float(case.chi_ppm[inside].double().mean() - case.chi_ppm[mask].double().mean())
    return result


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    return f"{type(error).__name__}: {text}"[:500]


def execute(task: RunTask) -> dict[str, Any]:
    """Run ``task``, write its χ and record atomically, and return the record.

    A failure of the method (any exception from loading, inverting or scoring) is recorded as
    ``status: "failed"`` with its one-line error instead of raised, so the other runs finish.
    """
    if task.threads is not None:
        torch.set_num_threads(task.threads)
    record: dict[str, Any] = {"case": task.case, "method": task.label, "name": task.method,
                              "params": {k: _jsonable(v) for k, v in task.params.items()}, "device": task.device,
                              "key": task.key, "torchqsm": __version__, **dict(task.meta)}
    try:
        chi, extra = _from_raw(task) if task.source == "raw" else _from_field(task)
        record.update(extra)
        array = chi.numpy()
        write_atomically(task.chi_path, lambda path: np.save(path, array), overwrite=True)
    except Exception as error:  # noqa: BLE001 - a failing method is a result, not a crash
        record.update(status="failed", error=_one_line(error))
    record["date"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = json.dumps(record, indent=1, allow_nan=True) + "\n"
    write_atomically(task.record_path, lambda path: path.write_text(text, encoding="utf-8"), overwrite=True)
    return record


def _from_field(task: RunTask) -> tuple[torch.Tensor, dict[str, Any]]:
    """The method on the case's local field (truth + measured noise), scored in the brain mask."""
    case, gre, lesion = load_bench_case(task.case_dir, task.case_hash, task.bids_key)
    params = dict(task.params)
    if get_method(task.method).needs_magnitude and "magnitude" not in params:
        params["magnitude"] = gre.magnitude.square().sum(0).sqrt().float()  # RSS over the echoes
    with _PeakMemory(task.device) as memory, collect_choices() as choices:
        started = time.perf_counter()
        chi = invert(case.local_field_ppm, case.mask, task.method, case.acquisition,
                     voxel_size_mm=case.voxel_size_mm, b0_dir=case.b0_dir, device=task.device, **params)
        if torch.device(task.device).type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    chi = chi.detach().cpu().float() * case.mask
    if not bool(torch.isfinite(chi).all()):
        raise FloatingPointError("χ has NaN or infinite values")
    return chi, {"status": "ok", "error": None, "seconds": seconds, "peak_memory_mib": memory.mib,
                 "memory_kind": memory.kind, "choices": [c.as_record() for c in choices], **_score(chi, case, lesion)}


def _from_raw(task: RunTask) -> tuple[torch.Tensor, dict[str, Any]]:
    """``--from raw``: the recipe on the case's magnitude and wrapped phase, as ``torchqsm run`` does.

    χ is scored in the voxels the pipeline reconstructed that lie in the brain (its final mask
    ∩ the case's brain mask); the record says how much of the brain that is.
    """
    from ..pipeline.recipes import get_recipe
    from ..pipeline.subject import process_gre

    case, gre, lesion = load_bench_case(task.case_dir, task.case_hash, task.bids_key)
    with _PeakMemory(task.device) as memory:
        started = time.perf_counter()
        result = process_gre(gre.magnitude.clone(), gre.phase.clone(), gre.acquisition, recipe=get_recipe(task.method),
                             device=task.device, source=str(Path(gre.sources.get("phase_echo-1", task.case_dir))))
        seconds = time.perf_counter() - started
    scored = result.local_mask.bool() & case.mask
    if not bool(scored.any()):
        raise ValueError("the pipeline's mask does not overlap the brain")
    chi = result.chi_ppm.detach().cpu().float() * scored
    if not bool(torch.isfinite(chi).all()):
        raise FloatingPointError("χ has NaN or infinite values")
    extra = {"status": "ok", "error": None, "seconds": seconds, "peak_memory_mib": memory.mib,
             "memory_kind": memory.kind, "source": "raw", "recipe": get_recipe(task.method).as_dict(),
             "stage_seconds": {k: round(float(v), 3) for k, v in result.timings_s.items()},
             "scored_voxels": int(scored.sum()), "brain_fraction": float(scored.sum()) / float(case.mask.sum()),
             **_score(chi, case, lesion, scored)}
    return chi, extra
