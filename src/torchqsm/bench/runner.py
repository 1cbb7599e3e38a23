r"""``torchqsm bench``: every method on every case of an evaluation suite, in parallel, resumable.

:func:`run_bench` plans one run per (method, case), reuses every run whose record in
``REPORT_DIR/runs/`` carries the same cache key (:func:`~torchqsm.bench.runs.run_key`), and
computes the rest through Dask: a local cluster of single-threaded worker processes by
default (``workers``), or an existing cluster by its scheduler address (its workers must see
the suite and the report folder at the same paths). With one worker, or one run to do, the
runs execute in this process, one after another. Each run writes its own result atomically
(:mod:`torchqsm.bench.runs`), so an interrupted bench loses only the runs in flight.

A method that fails on a case is recorded as failed, with its one-line error, and the rest
finish; a rerun keeps a failed record unless ``retry_failed``.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import InputError, ParameterError
from ..pipeline.registry import METHODS, coerce_parameter, get_method
from .bids import bids_case_digest, bids_cases, is_bids_dataset
from .runs import RunTask, case_digest, execute, read_record, recipe_key, resolved_params, run_file_stem, run_key

__all__ = ["MethodEntry", "BenchResult", "parse_method", "parse_recipe", "default_methods", "default_recipes",
           "read_suite", "run_bench", "SOURCES"]

#: What a bench run starts from: ``field`` (the case's local field, the inversion alone) or
#: ``raw`` (magnitude and wrapped phase through a ``torchqsm run`` recipe).
SOURCES = ("field", "raw")


@dataclass(frozen=True)
class MethodEntry:
    """A method to benchmark: its label in tables, its registered name, its parameters."""

    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchResult:
    """What :func:`run_bench` did: every record (case-major, methods in the order asked), which runs were
    computed and which reused, the cases run (their ``suite.json`` records plus ``folder``) and the suite index."""

    report_dir: Path
    records: list[dict[str, Any]]
    computed: list[tuple[str, str]]
    reused: list[tuple[str, str]]
    cases: list[dict[str, Any]]
    suite: dict[str, Any]
    source: str = "field"

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("status") != "ok"]


def parse_method(text: str) -> MethodEntry:
    """``name`` or ``name:key=value,key=value`` (labelled by the text itself).

    >>> parse_method("tkd:threshold=0.1")
    MethodEntry(label='tkd:threshold=0.1', name='tkd', params={'threshold': 0.1})
    """
    name, _, options = text.partition(":")
    spec = get_method(name.strip())
    params: dict[str, Any] = {}
    for item in filter(None, options.split(",")):
        key, equals, value = item.partition("=")
        if not equals:
            raise ParameterError(f"method option '{item}' is not KEY=VALUE", source=text)
        params[key.strip()] = coerce_parameter(spec.parameter(key.strip()), value.strip())
    resolved_params(spec.name, params)  # a bad value fails now, not on every case
    return MethodEntry(text if options else spec.name, spec.name, params)


def parse_recipe(text: str) -> MethodEntry:
    """A recipe name for ``--from raw`` (:data:`torchqsm.pipeline.recipes.RECIPES`).

    >>> parse_recipe("fast")
    MethodEntry(label='fast', name='fast', params={})
    """
    from ..pipeline.recipes import get_recipe

    name = text.strip()
    if ":" in name or "=" in name:
        raise ParameterError(f"--from raw takes recipe names without options, got '{text}'")
    return MethodEntry(name, get_recipe(name).name)


def default_recipes() -> list[MethodEntry]:
    """Every recipe (``all`` with ``--from raw``)."""
    from ..pipeline.recipes import RECIPES

    return [MethodEntry(name, name) for name in RECIPES]


def default_methods() -> list[MethodEntry]:
    """Every registered method that inverts one orientation (``all``): COSMOS needs several."""
    return [MethodEntry(name, name) for name, spec in METHODS.items() if not spec.multi_orientation]


def read_suite(dataset: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The suite index and its case records (name, varies, tilt_deg, snr, ...) of ``dataset``.

    ``dataset`` is a suite folder (``suite.json``), one case folder (``sub-01/anat`` and
    ``derivatives/groundtruth``), read as a suite of one case, or any BIDS dataset whose GRE runs
    have a ground-truth χ under ``derivatives/`` (:mod:`torchqsm.bench.bids`): a case per run.
    """
    root = Path(dataset)
    index_path = root / "suite.json"
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            cases = [dict(record) for record in index["cases"]]
            for record in cases:
                str(record["name"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(f"not a readable evaluation suite index: {error}", source=str(index_path)) from None
        return index, cases
    if (root / "derivatives" / "groundtruth").is_dir() and (root / "sub-01" / "anat").is_dir():
        return {"name": root.name, "version": "unversioned"}, [{"name": ".", "varies": "baseline"}]
    if not root.exists():
        raise InputError("the dataset folder does not exist", source=str(root))
    if is_bids_dataset(root):
        cases, skipped = bids_cases(root)
        return {"name": root.name, "version": "bids", "layout": "bids", "runs_without_truth": skipped}, cases
    raise InputError("not an evaluation suite (no suite.json), a case with derivatives/groundtruth, nor a BIDS "
                     "dataset (no dataset_description.json with sub-* folders)", source=str(root))


def _select(cases: list[dict[str, Any]], patterns: Sequence[str] | None, source: str) -> list[dict[str, Any]]:
    if not patterns:
        return cases
    chosen = [c for c in cases if any(fnmatch.fnmatchcase(c["name"], p) for p in patterns)]
    if not chosen:
        names = ", ".join(c["name"] for c in cases)
        raise ParameterError(f"no case matches {' '.join(patterns)} (cases: {names})", source=source)
    return chosen


def _plan(root: Path, out: Path, entries: Sequence[MethodEntry], cases: list[dict[str, Any]], device: str,
          suite_version: str, source: str = "field") -> list[RunTask]:
    tasks = []
    for case in cases:
        run_of = case.get("bids_key")
        folder = root.resolve() if run_of else (root / case["name"]).resolve()
        digest = (case.get("digest") or bids_case_digest(folder, run_of)) if run_of else case_digest(folder)
        name = root.resolve().name if case["name"] == "." else case["name"]
        meta = {k: case[k] for k in ("varies", "tilt_deg", "snr", "b0_tesla", "pathology", "input", "noise")
                if k in case}
        for entry in entries:
            stem = out / "runs" / run_file_stem(name) / run_file_stem(entry.label)  # may hold dots: not with_suffix
            if source == "raw":
                key = recipe_key(digest, entry.name, device, suite_version)
            else:
                key = run_key(digest, entry.name, entry.params, device, suite_version)
            tasks.append(RunTask(name, str(folder), entry.label, entry.name, entry.params, device, key,
                                 f"{stem}.json", f"{stem}.npy", digest, meta=meta,
                                 source=source, bids_key=run_of))
    return tasks


def _is_current(task: RunTask, retry_failed: bool) -> dict[str, Any] | None:
    record = read_record(task.record_path)
    if record is None or record.get("key") != task.key:
        return None
    if retry_failed and record.get("status") != "ok":
        return None
    return record


def run_bench(
    dataset: str | Path,
    report_dir: str | Path,
    methods: Sequence[str | MethodEntry] | None = None,
    *,
    cases: Sequence[str] | None = None,
    device: str = "cpu",
    workers: int | None = None,
    scheduler: str | None = None,
    retry_failed: bool = False,
    on_record: Callable[[dict[str, Any], bool], None] | None = None,
    source: str = "field",
) -> BenchResult:
    """Run (or reuse) every method on every chosen case and return all records.

    Parameters
    ----------
    dataset
        A suite folder written by :func:`~torchqsm.bench.suite.build_suite` (``suite.json``),
        or one case folder with ``derivatives/groundtruth``.
    report_dir
        Where the runs are cached (``runs/<case>/<method>.{json,npy}``); created if needed.
    methods
        Method names, ``name:key=value,...`` texts or :class:`MethodEntry` (default: every
        registered single-orientation method, :func:`default_methods`).
    cases
        Glob patterns of case names (default: every case).
    device
        ``cpu``, ``cuda`` or ``cuda:N``: where the inversions run.
    workers
        Local Dask worker processes (default: one per CPU core, at most one per run); 1 runs here.
    scheduler
        Address of a running Dask scheduler (``tcp://host:8786``) instead of a local cluster.
    retry_failed
        Recompute runs whose cached record is a failure.
    on_record
        Called with each record as it is ready and whether it was computed (``True``) or reused.
    source
        ``field`` (default): each method inverts the case's local field (truth plus the noise
        measured from its own echoes). ``raw``: ``methods`` are recipes (default every recipe),
        each run through :func:`~torchqsm.pipeline.subject.process_gre` from the case's magnitude
        and wrapped phase, as ``torchqsm run`` does, and scored in its final mask ∩ the brain.

    Returns
    -------
    BenchResult
        Every record (case-major, methods in the order given), and the (case, method) pairs
        computed now and reused from the cache.

    Raises
    ------
    InputError
        The dataset is not a suite, or the scheduler cannot be reached.
    ParameterError
        An unknown method, parameter or device, no case matches, or ``workers < 1``.
    """
    root = Path(dataset)
    index, listed = read_suite(root)
    chosen = _select(listed, cases, str(root))
    if source not in SOURCES:
        raise ParameterError(f"--from must be one of {', '.join(SOURCES)}, got '{source}'")
    if source == "raw":
        entries = [m if isinstance(m, MethodEntry) else parse_recipe(m) for m in (methods or default_recipes())]
    else:
        entries = [m if isinstance(m, MethodEntry) else parse_method(m) for m in (methods or default_methods())]
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise ParameterError(f"method labels must be unique, got {labels}")
    if workers is not None and workers < 1:
        raise ParameterError(f"--workers must be at least 1, got {workers}")
    _check_device(device)
    out = Path(report_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the report folder: {error.strerror or error}", source=str(out)) from None
    tasks = _plan(root, out, entries, chosen, device, str(index.get("version")), source)
    done: dict[str, dict[str, Any]] = {}
    pending = []
    for task in tasks:
        record = _is_current(task, retry_failed)
        if record is None:
            pending.append(task)
        else:
            done[task.record_path] = record
            if on_record is not None:
                on_record(record, False)
    path_of = {(t.case, t.label): t.record_path for t in pending}
    for record in _execute_all(pending, workers, scheduler):
        done[path_of[record["case"], record["method"]]] = record
        if on_record is not None:
            on_record(record, True)
    computed = [(t.case, t.label) for t in pending]
    reused = [(t.case, t.label) for t in tasks if t not in pending]
    case_meta = [dict(c, name=t.case, folder=t.case_dir) for c, t in zip(chosen, tasks[:: len(entries)])]
    return BenchResult(out, [done[t.record_path] for t in tasks], computed, reused, case_meta, index, source)


def _check_device(device: str) -> None:
    import torch

    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise ParameterError(f"unknown device '{device}' (cpu, cuda or cuda:N)") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError("device 'cuda' was asked for but no CUDA GPU is available")
    if target.type not in ("cpu", "cuda"):
        raise ParameterError(f"unsupported device '{device}' (cpu, cuda or cuda:N)")


def _execute_all(tasks: list[RunTask], workers: int | None, scheduler: str | None) -> Iterable[dict[str, Any]]:
    """Yield each task's record as it finishes: here (serial) or on Dask workers."""
    if not tasks:
        return
    if scheduler is None and (len(tasks) == 1 or workers == 1):
        for task in tasks:
            yield execute(task)
        return
    from dask.distributed import Client, as_completed

    cores = os.cpu_count() or 1
    cluster = None
    if scheduler is None:
        count = workers or max(1, min(len(tasks), cores))
        threads = max(1, cores // count)
        tasks = [_with_threads(t, threads) for t in tasks]
        cluster = _local_cluster(count, threads)
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as error:
            raise InputError(f"cannot reach the Dask scheduler: {error}", source=scheduler) from None
    try:
        futures = [client.submit(execute, task, pure=False, key=f"torchqsm-bench-{task.key[:16]}-{i}")
                   for i, task in enumerate(tasks)]
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _local_cluster(count: int, threads: int):
    """A local cluster of ``count`` single-task workers with ``threads`` torch/BLAS threads each
    (:func:`torchqsm.pipeline.app.local_cluster`: without Dask's allocator setting)."""
    from ..pipeline.app import local_cluster

    return local_cluster(count, threads)


def _with_threads(task: RunTask, threads: int) -> RunTask:
    return replace(task, threads=threads)
