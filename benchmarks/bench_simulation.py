#!/usr/bin/env python
"""Throughput of the on-the-fly training simulation, and the build of the evaluation suite.

Training pairs: ``SimulatedQSMDataset`` through a ``torch.utils.data.DataLoader`` with
``--workers`` worker processes (one torch thread each), 64³ patches, for each task and source.
The rate is (pairs − first pair per worker) / (time from the first pair to the last): the
model loading and the first volume of each worker are excluded and reported as "first pair".
A per-stage profile of one volume (one thread, in this process) says where the time goes.

With ``--suite`` the full evaluation suite (and the ``--small`` one) is built into a temporary
folder and its wall time and size on disk are reported.

The section between ``<!-- simulation:begin -->`` and ``<!-- simulation:end -->`` of
docs/benchmarks.md is replaced (appended if missing); the rest of the file is kept.

Examples
--------
Smoke run (prints, writes nothing)::

    python benchmarks/bench_simulation.py --quick

The section in docs/benchmarks.md::

    python benchmarks/bench_simulation.py --workers 2 --suite
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- simulation:begin -->", "<!-- simulation:end -->"
TARGET_PAIRS_PER_S = 10.0
#: (task, source) pairs measured.
RUNS = [("local_to_chi", "head"), ("total_to_local", "head"), ("phase_to_chi", "head"), ("local_to_chi", "shapes")]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)


def measure_rate(task: str, source: str, *, pairs: int, workers: int) -> dict:
    from torchqsm.simulate.dataset import SimulatedQSMDataset, SimulationConfig

    config = SimulationConfig(task=task, source=source)
    loader = DataLoader(SimulatedQSMDataset(config, seed=0), batch_size=None, num_workers=workers,
                        worker_init_fn=_one_thread if workers else None, persistent_workers=False)
    started = time.perf_counter()
    first_times, seen_seeds, count = [], set(), 0
    iterator = iter(loader)
    if workers == 0:
        torch.set_num_threads(1)
    for sample in iterator:
        now = time.perf_counter()
        if len(first_times) < max(workers, 1) and int(sample["seed"]) not in seen_seeds:
            first_times.append(now)  # the first pair of each worker's first volume
        seen_seeds.add(int(sample["seed"]))
        count += 1
        if count >= pairs:
            break
    elapsed = time.perf_counter() - first_times[-1]
    del iterator
    # Patches are cut in bulk: count the volumes simulated after the timer started, not the pairs yielded.
    volumes = len(seen_seeds) - max(workers, 1)
    return {"task": task, "source": source, "pairs": count, "first_s": first_times[-1] - started,
            "rate": volumes * config.patches_per_volume / elapsed if elapsed > 0 else float("nan"),
            "patches_per_volume": config.patches_per_volume, "region": config.region_size}


def profile_volume(task: str) -> list[tuple[str, float]]:
    """Seconds per stage of one head volume (one thread)."""
    from torchqsm.physics import DipoleOp
    from torchqsm.simulate.anatomy import TISSUES, tissue_parameters
    from torchqsm.simulate.background import external_sources, shim_field
    from torchqsm.simulate.dataset import SimulationConfig
    from torchqsm.simulate.volume import _head_model, _region
    from torchqsm.simulate.hybrid import hybrid_chi, random_deformation
    from torchqsm.simulate.signal import add_complex_noise, complex_gre_signal, smooth_phase_offset

    torch.set_num_threads(1)
    config = SimulationConfig(task=task)
    g = torch.Generator().manual_seed(0)
    stages, clock = [], time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages.append((name, now - clock))
        clock = now

    model, is_brain, brain_voxels = _head_model(config.voxel_size_mm)
    stage("head model (cached after the first volume)")
    labels = random_deformation(_region(model, config.region_size, brain_voxels, g), generator=g)
    stage(f"region {config.region_size} + random deformation")
    chi = hybrid_chi(labels, chi_ranges_ppm={t.label: t.chi_range_ppm for t in TISSUES}, generator=g)
    stage("hybrid χ (mixture + texture)")
    op = DipoleOp(tuple(chi.shape), voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1), pad=config.pad)
    op(torch.stack([chi, chi]) if task != "local_to_chi" else chi[None])
    stage(f"dipole field, padded grid {op.pad.padded_shape}")
    if task == "phase_to_chi":
        mask = is_brain[labels.long()]
        external_sources(tuple(chi.shape), mask, generator=g, count=config.external_sources)
        stage(f"{config.external_sources} external sources")
        shim_field(tuple(chi.shape), generator=g)
        smooth_phase_offset(tuple(chi.shape), generator=g)
        stage("shim residual and receive-phase offset")
        m0, r2star = tissue_parameters(labels, b0_tesla=3.0, generator=g)
        stage("M0, R2* maps")
        patch = (slice(32, 96),) * 3

        def pair_signal():
            signal = complex_gre_signal(chi[patch] * 0.1, echo_times_s=config.echo_times_s, b0_tesla=3.0,
                                        m0=m0[patch], r2star_hz=r2star[patch])
            signal = add_complex_noise(signal, snr=100.0, generator=g)
            return signal.abs(), signal.angle()

        pair_signal()  # the first complex kernels pay a one-off start-up (0.5 s)
        stage("(warm-up of the complex kernels, not counted)")
        for _ in range(5):
            pair_signal()
        clock += (time.perf_counter() - clock) * 4 / 5  # report one pair: the mean of five
        stage(f"signal of one 64³ pair ({len(config.echo_times_s)} echoes, noise, magnitude and phase)")
    return stages


def suite_build(small: bool) -> dict:
    from torchqsm.bench.suite import build_suite

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        build_suite(folder, small=small)
        elapsed = time.perf_counter() - started
        size = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
    return {"small": small, "seconds": elapsed, "megabytes": size / 1e6}


def render(rows: list[dict], profile: list[tuple[str, float]], suites: list[dict], args, command: str) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [BEGIN, f"## Simulation throughput, CPU, {args.workers} DataLoader workers × 1 thread", "",
             f"- Machine: {platform.processor() or platform.machine()} ({os.cpu_count()} cores); Python "
             f"{platform.python_version()}, torch {torch.__version__}; measured {date}; load average {load:.2f} "
             "before the run (other work on the machine slows every number here).",
             f"- Reproduce: `{command}`",
             "- Pairs: `SimulatedQSMDataset(SimulationConfig(task, source))` with the default configuration "
             "(64³ patches, 16 per volume; head source: 128³ regions warped and simulated on their own); rate = "
             "volumes simulated after each worker's first pair × 16 / time from that pair to the last (model loading "
             "and first volumes excluded, reported as first pair).", "",
             "| task | source | pairs timed | first pair (s) | pairs / s | target ≥ 10 / s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        verdict = "yes" if row["rate"] >= TARGET_PAIRS_PER_S else "**no**"
        lines.append(f"| {row['task']} | {row['source']} | {row['pairs']} | {row['first_s']:.1f} | "
                     f"{row['rate']:.1f} | {verdict} |")
    lines += ["", "One head volume, stage by stage (one thread, local_to_chi unless named):", "",
              "| stage | seconds |", "| --- | --- |"]
    lines += [f"| {name} | {seconds:.2f} |" for name, seconds in profile]
    slow = [row for row in rows if row["rate"] < TARGET_PAIRS_PER_S]
    if slow:
        pair = next((t for n, t in profile if "signal of one" in n), float("nan"))
        volume = sum(t for n, t in profile[1:] if "signal of one" not in n and "warm-up" not in n)
        lines += ["", "Notes (measured in this run):", ""]
        for row in slow:
            if row["task"] == "phase_to_chi":
                per_worker = 16 / (volume + 16 * pair)
                reason = (f"One thread spends {volume:.2f} s on a volume's work, which 16 pairs share, and {pair:.3f} s "
                          "on each pair's own signal (echoes × 64³ complex values: cos/sin, Gaussian draws, magnitude "
                          f"and phase): {per_worker:.1f} pairs/s per worker on a free core. The run had "
                          f"{args.workers} workers on {os.cpu_count()} cores shared with other work (load {load:.2f}): "
                          "the CPU time per pair limits it; more workers (cores) scale it.")
            else:
                reason = "The volume work (deformation, χ, padded FFT), shared by 16 pairs, limits it."
            lines.append(f"- {row['task']} / {row['source']}: {row['rate']:.1f} pairs/s, below the target. {reason}")
    if suites:
        lines += ["", "Evaluation suite (`torchqsm.bench.build_suite`, 13 cases, default threads):", "",
                  "| suite | build time (s) | size on disk (MB) | limit |", "| --- | --- | --- | --- |"]
        for s in suites:
            limit = "≤ 60 s" if s["small"] else "≤ 600 s, ≤ 500 MB"
            lines.append(f"| {'small (2 mm)' if s['small'] else 'full (1 mm)'} | {s['seconds']:.0f} | "
                         f"{s['megabytes']:.0f} | {limit} |")
    lines += ["", END, ""]
    return "\n".join(lines)


def update_markdown(path: Path, section: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.S)
    text = pattern.sub(lambda _: section, text, count=1) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=320, help="pairs per run (default 320: 20 volumes)")
    parser.add_argument("--suite", action="store_true", help="also build the suites and report time and size")
    parser.add_argument("--quick", action="store_true", help="local_to_chi only, 40 pairs, print only")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    runs = RUNS[:1] if args.quick else RUNS
    pairs = 64 if args.quick else args.pairs
    rows = []
    for task, source in runs:
        log(f"{task} / {source} ...")
        rows.append(measure_rate(task, source, pairs=pairs, workers=args.workers))
        log(f"  {rows[-1]['rate']:.1f} pairs/s")
    profile = profile_volume("local_to_chi")
    profile += [(f"phase_to_chi: {n}", t) for n, t in profile_volume("phase_to_chi")[4:]]
    suites = [suite_build(small=True), suite_build(small=False)] if args.suite else []
    command = shlex.join(["python", "benchmarks/bench_simulation.py", *(argv if argv is not None else sys.argv[1:])])
    section = render(rows, profile, suites, args, command)
    print(section)
    if not args.quick:
        update_markdown(args.output, section)
        log(f"wrote the simulation section of {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
