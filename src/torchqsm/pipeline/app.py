"""Running the pipeline on files or on a BIDS dataset (many subjects in parallel through Dask).

:func:`run_files` processes one acquisition given as files and raises on any
problem. :func:`run_bids` discovers every GRE run of a BIDS dataset and
processes them as independent Dask tasks, on a local cluster by default or on
an existing cluster by address: one failing subject is reported and does not
stop the others, and a rerun skips subjects already finished.
"""

from __future__ import annotations

import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from .. import __version__
from ..errors import InputError, ParameterError, describe_failure
from ..io import load_mask
from ..io.bids import discover_gre
from ..io.derivatives import DERIVATIVE_SUFFIXES, derivative_path, write_dataset_description
from ..io._atomic import check_writable_folder
from ..io._fileset import recover
from ..io.gre import load_gre
from .outputs import OUTPUT_UNITS, is_finished, write_result
from .recipes import Recipe
from .subject import process_gre

__all__ = ["Job", "Outcome", "run_job", "run_files", "run_bids", "plan_bids_jobs"]

Logger = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Job:
    """One acquisition to process: inputs, where its outputs go, and how."""

    key: str
    magnitude_files: tuple[str, ...]
    phase_files: tuple[str, ...]
    outputs: dict[str, Path]
    qc_path: Path | None
    recipe: Recipe
    echo_times_s: tuple[float, ...] | None = None
    b0_tesla: float | None = None
    mask_file: str | None = None
    reference_mask_file: str | None = None
    phase_sign: int = 1
    device: str = "cpu"
    overwrite: bool = False
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What happened to a job: ``finished``, ``skipped`` (already done) or ``failed`` (with the message)."""

    key: str
    status: Literal["finished", "skipped", "failed"]
    message: str = ""
    seconds: float = 0.0


def run_job(job: Job, *, log: Logger | None = _stderr, threads: int | None = None) -> Outcome:
    """Load, process and write one job; raises :class:`TorchQSMError` on a user-facing problem."""
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    if not job.overwrite and is_finished(job.outputs["chi"]):
        return Outcome(job.key, "skipped", "already finished")
    gre = load_gre(list(job.magnitude_files), list(job.phase_files), echo_times_s=job.echo_times_s,
                   b0_tesla=job.b0_tesla, override_source="flag")
    mask = None
    if job.mask_file is not None:
        mask = torch.from_numpy(load_mask(job.mask_file, like=gre.reference).data)
    reference_mask = None
    if job.reference_mask_file is not None:
        reference_mask = torch.from_numpy(load_mask(job.reference_mask_file, like=gre.reference).data)
    prefix = f"[{job.key}] " if job.key else ""
    if log is not None:
        log(f"{prefix}{gre.magnitude.shape[0]} echo(es) {tuple(gre.magnitude.shape[1:])}, TE "
            f"{', '.join(f'{t * 1e3:g}' for t in gre.echo_times_s)} ms, {gre.b0_tesla:g} T, recipe {job.recipe.name}")
    result = process_gre(gre.magnitude, gre.phase, gre.acquisition, recipe=job.recipe, mask=mask,
                         reference_mask=reference_mask, phase_sign=job.phase_sign, device=job.device, log=log,
                         prefix=prefix, source=str(job.phase_files[0]))
    inputs = {role: str(path) for role, path in gre.sources.items()}
    if job.mask_file:
        inputs["mask"] = job.mask_file
    if job.reference_mask_file:
        inputs["reference_mask"] = job.reference_mask_file
    extra = {**job.extra, "Acquisition": gre.acquisition.as_dict(), "EchoTime": list(gre.echo_times_s), "MagneticFieldStrength": gre.b0_tesla,
             "B0Direction": list(gre.b0_dir), "VoxelSizeMM": list(gre.voxel_size_mm), "PhaseSign": job.phase_sign,
             "Device": job.device, "InputNotes": list(gre.notes), "ElapsedSeconds": round(time.perf_counter() - started, 3)}
    write_result(result, job.outputs, like=gre.reference, qc_path=job.qc_path, voxel_size_mm=gre.voxel_size_mm,
                 inputs=inputs, extra=extra, overwrite=job.overwrite)
    seconds = time.perf_counter() - started
    if log is not None:
        log(f"{prefix}done in {seconds:.1f} s: {job.outputs['chi']}")
    return Outcome(job.key, "finished", "", seconds)


def _safe_job(job: Job, threads: int | None, quiet: bool) -> Outcome:
    """A job as a Dask task: every failure becomes an Outcome, never an exception."""
    started = time.perf_counter()
    try:
        return run_job(job, log=None if quiet else _stderr, threads=threads)
    except Exception as error:
        described = describe_failure(error)  # a bad input, the OS refusing, memory: one line
        if described is not None:
            return Outcome(job.key, "failed", described[1], time.perf_counter() - started)
        # a bug, not a user error: report it with its location, go on with the others
        where = traceback.extract_tb(error.__traceback__)[-1]
        return Outcome(job.key, "failed", f"internal error {type(error).__name__}: {error} "
                       f"({Path(where.filename).name}:{where.lineno})", time.perf_counter() - started)


def _file_stem(phase_file: str) -> str:
    name = Path(phase_file).name
    name = re.sub(r"\.nii(\.gz)?$", "", name)
    name = re.sub(r"_(part-phase|echo-\d+|phase|ph)(?=_|$)", "", name)
    name = re.sub(r"_(MEGRE|T2starw|GRE)$", "", name)
    return name or "qsm"


def _output_paths(make: Callable[[str], Path]) -> dict[str, Path]:
    return {role: make(DERIVATIVE_SUFFIXES[role]) for role in OUTPUT_UNITS}


def run_files(
    magnitude: Sequence[str],
    phase: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    recipe: Recipe,
    echo_times_s: Sequence[float] | None = None,
    b0_tesla: float | None = None,
    mask: str | None = None,
    reference_mask: str | None = None,
    phase_sign: int = 1,
    device: str = "cpu",
    overwrite: bool = False,
    qc: bool = True,
    log: Logger | None = _stderr,
) -> Outcome:
    """Process one acquisition given as files; outputs ``OUT_DIR/<stem>_Chimap.nii.gz`` and friends.

    ``<stem>`` is the phase file's name without its extension and its ``part-``/``echo-``
    entities (``sub-01_echo-1_part-phase_MEGRE.nii.gz`` → ``sub-01``).
    """
    out = check_writable_folder(out_dir)  # before any work, not after the whole computation
    stem = _file_stem(phase[0])
    job = Job(key="", magnitude_files=tuple(map(str, magnitude)), phase_files=tuple(map(str, phase)),
              outputs=_output_paths(lambda suffix: out / f"{stem}_{suffix}.nii.gz"),
              qc_path=out / f"{stem}_{DERIVATIVE_SUFFIXES['qc']}.png" if qc else None, recipe=recipe,
              echo_times_s=tuple(echo_times_s) if echo_times_s else None, b0_tesla=b0_tesla, mask_file=mask,
              reference_mask_file=reference_mask, phase_sign=phase_sign, device=device, overwrite=overwrite)
    for line in recover(out):  # a killed run's staging folder: its previous results back, or nothing
        if log is not None:
            log(line)
    if not overwrite:
        existing = [p for p in [*job.outputs.values(), job.qc_path] if p is not None and p.exists()]
        if existing:
            raise InputError("output exists; pass --overwrite to replace it", source=str(existing[0]))
    return run_job(job, log=log)


def plan_bids_jobs(
    bids_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    recipe: Recipe,
    participant_labels: Sequence[str] | None = None,
    sessions: Sequence[str] | None = None,
    echo_times_s: Sequence[float] | None = None,
    b0_tesla: float | None = None,
    phase_sign: int = 1,
    device: str = "cpu",
    overwrite: bool = False,
    qc: bool = True,
) -> list[Job]:
    """One :class:`Job` per GRE run found in ``bids_dir`` (outputs under ``out_dir``)."""
    check_writable_folder(out_dir)
    runs = discover_gre(bids_dir, participant_labels=participant_labels, sessions=sessions)
    jobs = []
    for run in runs:
        outputs = _output_paths(lambda suffix, run=run: derivative_path(out_dir, run, suffix))
        qc_path = derivative_path(out_dir, run, DERIVATIVE_SUFFIXES["qc"], ext=".png") if qc else None
        jobs.append(Job(key=run.key, magnitude_files=tuple(map(str, run.magnitude_files)),
                        phase_files=tuple(map(str, run.phase_files)), outputs=outputs, qc_path=qc_path,
                        recipe=recipe, echo_times_s=tuple(echo_times_s) if echo_times_s else None,
                        b0_tesla=b0_tesla, phase_sign=phase_sign, device=device, overwrite=overwrite,
                        extra={"Sources": [str(f) for f in (*run.magnitude_files, *run.phase_files)]}))
    return jobs


def run_bids(
    jobs: Sequence[Job],
    out_dir: str | os.PathLike[str],
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    quiet: bool = False,
    log: Logger | None = _stderr,
) -> list[Outcome]:
    """Run ``jobs`` as Dask tasks and return one :class:`Outcome` each, in completion order.

    Parameters
    ----------
    scheduler
        Address of a running Dask scheduler (``tcp://host:8786``); default: a local cluster
        of ``workers`` single-threaded processes (default: one per subject, at most one per
        CPU core), torch threads shared out between them.
    workers
        Local worker processes (ignored with ``scheduler``). With one pending job, or
        ``workers=1`` and no scheduler, jobs run in this process, one after another.
    """
    from dask.distributed import Client, as_completed
    from tqdm.auto import tqdm

    if workers is not None and workers < 1:
        raise ParameterError(f"--workers must be at least 1, got {workers}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_dataset_description(out, version=__version__)
    pending = [job for job in jobs if job.overwrite or not is_finished(job.outputs["chi"])]
    outcomes = [Outcome(job.key, "skipped", "already finished") for job in jobs if job not in pending]
    for outcome in outcomes:
        if log is not None:
            log(f"[{outcome.key}] skipped: already finished")
    if not pending:
        return outcomes
    if scheduler is None and (len(pending) == 1 or workers == 1):
        # Nothing to run side by side: skip starting a cluster (seconds) and run here.
        for job in pending:
            outcome = _safe_job(job, None, quiet)
            outcomes.append(outcome)
            if log is not None and outcome.status == "failed":
                log(f"[{outcome.key}] FAILED: {outcome.message}")
        return outcomes
    cores = os.cpu_count() or 1
    if scheduler is None:
        count = workers or max(1, min(len(pending), cores))
        threads = max(1, cores // count)
        cluster = local_cluster(count, threads)
        client = Client(cluster)
    else:
        cluster, threads = None, None
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as error:
            raise InputError(f"cannot reach the Dask scheduler: {error}", source=scheduler) from None
    try:
        futures = [client.submit(_safe_job, job, threads, quiet, pure=False, key=f"torchqsm-{job.key}-{i}")
                   for i, job in enumerate(pending)]
        with tqdm(total=len(futures), desc="subjects", unit="subject", disable=None if not quiet else True) as bar:
            for future in as_completed(futures):
                outcome = future.result()
                outcomes.append(outcome)
                bar.update(1)
                if log is not None and outcome.status == "failed":
                    log(f"[{outcome.key}] FAILED: {outcome.message}")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return outcomes


def local_cluster(count: int, threads: int):
    """A Dask ``LocalCluster`` of ``count`` single-task worker processes with ``threads`` torch/BLAS threads each.

    Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` by default, so glibc hands every
    large tensor back to the OS and faults it in again: measured, 30 TV iterations on the 2 mm
    suite took 15.0 s of CPU in such a worker against 7.4 s without it (6.4 s serial). The
    workers inherit this process's allocator settings instead.
    """
    import dask
    from dask.distributed import LocalCluster

    environ = {key: value for key, value in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
               if key != "MALLOC_TRIM_THRESHOLD_"}
    environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return LocalCluster(n_workers=count, threads_per_worker=1, processes=True, dashboard_address=None)
