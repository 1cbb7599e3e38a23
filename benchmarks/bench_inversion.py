#!/usr/bin/env python
"""Wall time, peak memory, FFT count and accuracy of every classical dipole inversion.

Every method runs through ``torchqsm.invert`` on a shapes phantom
(``torchqsm.simulate.shapes_phantom``) in a fresh worker process of its own, so
that its peak memory is its own:

* CPU: the worker's peak resident set size (``VmHWM``, reset through
  ``/proc/self/clear_refs`` once the inputs are loaded; ``ru_maxrss`` where
  that is not possible) minus its resident size at that moment;
* CUDA: ``torch.cuda.max_memory_allocated`` minus what the inputs hold.

The first call is a warm-up, reported as "first call"; during it the worker
counts the FFTs (``torch.fft.rfftn``/``irfftn``/``fftn``/``ifftn`` wrapped with
counters, each call counted once per volume it transforms) and the solver
iterations (through the method's ``callback``). The timed calls that follow
run unwrapped and without a callback; their median is the "median time".

The FFT round trip (``rfftn`` + ``irfftn``, float32) is measured with
``torch.fft`` and with ``scipy.fft`` (``workers`` = ``--threads``) at the
image grid and at every grid the methods transformed (the padded grid), in
worker processes with and without the allocator setting of PERF-NOTES
(``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736``). The method
workers run with that setting unless ``--no-malloc-setting`` is given.

A method is "within the FFT bound" when its median time is at most 3 × its
FFT round trips × the torch round-trip time at its grid (a complex
``fftn``+``ifftn`` pair counts as two real round trips).

Examples
--------
Smoke run (48³, one repeat; prints the table, writes nothing)::

    python benchmarks/bench_inversion.py --quick

The table in docs/benchmarks.md (its CPU section is regenerated, other sections kept)::

    python benchmarks/bench_inversion.py --device cpu --threads 2

On a machine with a GPU (adds or regenerates the CUDA section)::

    python benchmarks/bench_inversion.py --device cuda
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHAPE = (176, 176, 160)
QUICK_SHAPE = (48, 48, 48)
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"
MALLOC_SETTING = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}
#: Method parameters that differ from the registered defaults (fixed iteration counts).
OVERRIDES = {
    "l2": {"max_iterations": 100, "tolerance": 0.0},
    "tv": {"max_iterations": 100, "tolerance": 0.0},
    "ndi": {"tolerance": 0.0},
}
#: Targets of the issue (seconds), for the 176×176×160 grid.
TARGETS = {"tkd": 0.1, "l2": 5.0, "tv": 10.0}
FFT_BOUND_FACTOR = 3.0
#: Forward simulation: zero padding (voxels per side, float64) and noise (fraction of the field's std in the mask).
FORWARD_PAD = 64
NOISE_FRACTION = 0.01
COSMOS_TILTS = ((0.0, 0), (25.0, 0), (25.0, 1))  # (degrees, about axis): 0°, +25° about x, +25° about y
RESULT_PREFIX = "BENCH-RESULT "


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- worker side

def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set
        pass


def _synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _proc_status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class _PeakRss:
    """Peak resident memory from now on, above the current resident size (MiB)."""

    def __init__(self) -> None:
        self.method = "ru_maxrss"
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
            if _proc_status_kib("VmHWM") is not None:
                self.method = "VmHWM"
        except OSError:
            pass
        current = _proc_status_kib("VmRSS")
        self.base_kib = current if (self.method == "VmHWM" and current is not None) else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.base_maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def increase_mib(self) -> float:
        if self.method == "VmHWM":
            peak = _proc_status_kib("VmHWM") or self.base_kib
            return max(0, peak - self.base_kib) / 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(0, peak - self.base_maxrss_kib) / 1024


class _FftCounter:
    """Wraps torch.fft's n-dimensional transforms with counters (volumes transformed per grid)."""

    NAMES = ("rfftn", "irfftn", "fftn", "ifftn")

    def __init__(self) -> None:
        self.counts: Counter = Counter()  # (name, grid) -> volumes
        self._originals: dict = {}

    @staticmethod
    def _dims(tensor, s, dim) -> list[int]:
        if dim is None:
            dims = list(range(tensor.ndim - len(s), tensor.ndim)) if s is not None else list(range(tensor.ndim))
        else:
            dims = [dim] if isinstance(dim, int) else list(dim)
        return [d % tensor.ndim for d in dims]

    def _wrap(self, name, original):
        def counted(input, *args, **kwargs):  # noqa: A002 - torch's own argument name
            s = args[0] if len(args) > 0 else kwargs.get("s")
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            dims = self._dims(input, s, dim)
            sizes = [input.shape[d] for d in dims]
            volumes = input.numel() // max(1, math.prod(sizes))
            if s is not None:
                grid = tuple(int(n) for n in s)
            elif name == "irfftn":
                grid = (*sizes[:-1], 2 * (sizes[-1] - 1))
            else:
                grid = tuple(sizes)
            self.counts[(name, grid)] += volumes
            return original(input, *args, **kwargs)

        return counted

    def __enter__(self):
        import torch

        for name in self.NAMES:
            self._originals[name] = getattr(torch.fft, name)
            setattr(torch.fft, name, self._wrap(name, self._originals[name]))
        return self

    def __exit__(self, *exc):
        import torch

        for name, original in self._originals.items():
            setattr(torch.fft, name, original)
        return False

    def summary(self) -> dict:
        """Per grid: real and complex transforms, and round trips in real-FFT equivalents."""
        grids: dict = {}
        for (name, grid), volumes in self.counts.items():
            entry = grids.setdefault("x".join(map(str, grid)), {"rfftn": 0, "irfftn": 0, "fftn": 0, "ifftn": 0})
            entry[name] += volumes
        for entry in grids.values():
            entry["round_trips"] = (entry["rfftn"] + entry["irfftn"]) / 2 + (entry["fftn"] + entry["ifftn"])
        return grids


def _load_problem(path: str, device: str):
    import torch

    data = torch.load(path, weights_only=True)
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in data.items()}


def _method_call(method: str, data: dict, *, with_callback: bool):
    """The arguments of torchqsm.invert for ``method`` (defaults except OVERRIDES) and an iteration counter."""
    from torchqsm.pipeline.registry import get_method

    spec = get_method(method)
    known = set(spec.parameters.names())
    params = {}
    skipped = []
    for name, value in OVERRIDES.get(method, {}).items():
        if name in known:
            params[name] = value
        else:
            skipped.append(name)
    if "magnitude" in known and spec.needs_magnitude:
        params["magnitude"] = data["magnitude"]
    if spec.multi_orientation:
        field, b0_dir = data["cosmos_fields"], [tuple(b) for b in data["cosmos_b0_dirs"].tolist()]
    else:
        field, b0_dir = data["field"], (0.0, 0.0, 1.0)
    iterations = [0]
    takes_callback = spec.progress
    if with_callback and takes_callback:
        def count(status):
            iterations[0] = max(iterations[0], int(status.iteration))
        params["callback"] = count
    shown = {k: v for k, v in params.items() if k not in ("magnitude", "callback")}
    return field, b0_dir, params, iterations if takes_callback else None, shown, skipped


def run_method_worker(args) -> dict:
    _set_threads(args.threads)
    import gc

    import torch

    import torchqsm
    from torchqsm.metrics import nrmse

    device = args.device
    data = _load_problem(args.problem, device)
    result = {"method": args.worker, "malloc_setting": all(os.environ.get(k) == v for k, v in MALLOC_SETTING.items()),
              "threads": torch.get_num_threads(), "device": device}

    def call(with_callback: bool):
        field, b0_dir, params, iterations, shown, skipped = _method_call(args.worker, data, with_callback=with_callback)
        _synchronize(device)
        start = time.perf_counter()
        callback = params.pop("callback", None)
        # 3 T, TE 20 ms: the nonlinear data terms (tv nonlinear, ndi, medi) at the values they had as defaults.
        acquisition = torchqsm.Acquisition(voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=b0_dir, b0_tesla=3.0,
                                           echo_times_s=(0.02,))
        chi = torchqsm.invert(field, data["mask"], args.worker, acquisition, callback=callback, **params)
        _synchronize(device)
        return time.perf_counter() - start, chi, iterations, shown, skipped

    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gpu_base = torch.cuda.memory_allocated()
    peak = _PeakRss()
    with _FftCounter() as counter:
        first, chi, iterations, shown, skipped = call(with_callback=True)
    result.update(first_s=first, fft=counter.summary(), iterations=None if iterations is None else iterations[0],
                  params=shown, skipped_overrides=skipped)
    times = []
    for _ in range(args.repeats):
        del chi
        gc.collect()
        elapsed, chi, *_ = call(with_callback=False)
        times.append(elapsed)
    result["times_s"] = times
    result["median_s"] = statistics.median(times) if times else first
    result["peak_rss_mib"] = peak.increase_mib()
    result["peak_rss_method"] = peak.method
    if device == "cuda":
        result["peak_gpu_mib"] = (torch.cuda.max_memory_allocated() - gpu_base) / 2**20
    result["nrmse_percent"] = nrmse(chi.cpu(), data["chi"].cpu(), data["mask"].cpu())
    return result


def _median_time(function, repeats: int, device: str) -> float:
    for _ in range(2):
        function()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_fft_worker(args) -> dict:
    _set_threads(args.threads)
    import numpy as np
    import scipy.fft
    import torch

    device = args.device
    out = {"malloc_setting": all(os.environ.get(k) == v for k, v in MALLOC_SETTING.items()), "grids": {}}
    for text in args.grids:
        grid = tuple(int(n) for n in text.split("x"))
        dims = (-3, -2, -1)
        x = torch.randn(grid, dtype=torch.float32, generator=torch.Generator().manual_seed(0)).to(device)
        a = x.cpu().numpy()
        torch_s = _median_time(lambda: torch.fft.irfftn(torch.fft.rfftn(x, dim=dims), s=grid, dim=dims),
                               args.fft_repeats, device)
        scipy_s = _median_time(lambda: scipy.fft.irfftn(scipy.fft.rfftn(a, workers=args.threads), s=grid,
                                                        workers=args.threads), args.fft_repeats, "cpu")
        assert scipy.fft.rfftn(a[:4, :4, :4]).dtype == np.complex64  # scipy keeps single precision
        out["grids"][text] = {"torch_s": torch_s, "scipy_s": scipy_s}
    return out


# --------------------------------------------------------------------------- driver side

def make_problem(shape: tuple[int, int, int], path: Path) -> dict:
    """Phantom χ, mask, noisy field (+ 3 orientations for COSMOS) and a magnitude, saved for the workers."""
    import torch

    from torchqsm.physics import tilt_b0_dir
    from torchqsm.simulate import add_noise, forward_field, shapes_phantom

    chi, mask = shapes_phantom(shape)
    generator = torch.Generator().manual_seed(0)

    def simulate(b0_dir):
        field = forward_field(chi.double(), b0_dir=b0_dir, pad=FORWARD_PAD).float()
        sigma = NOISE_FRACTION * float(field[mask].std())
        return add_noise(field, sigma=sigma, mask=mask, generator=generator) * mask

    directions = [tilt_b0_dir(angle, about=axis) for angle, axis in COSMOS_TILTS]
    field = simulate(directions[0])
    cosmos_fields = torch.stack([field] + [simulate(b) for b in directions[1:]])
    magnitude = (torch.clamp(1.0 - 2.0 * chi, 0.2, 1.5) * mask).float()
    torch.save({"chi": chi, "mask": mask, "field": field, "magnitude": magnitude, "cosmos_fields": cosmos_fields,
                "cosmos_b0_dirs": torch.tensor(directions, dtype=torch.float64)}, path)
    return {"cosmos_b0_dirs": [[round(v, 4) for v in b] for b in directions]}


def _worker_env(threads: int, malloc: bool) -> dict:
    env = dict(os.environ)
    for key in MALLOC_SETTING:
        env.pop(key, None)
    if malloc:
        env.update(MALLOC_SETTING)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def _run_worker(argv: list[str], env: dict, timeout: float) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), *argv]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"error": f"worker exited {done.returncode}: {tail}"}


def machine_info(device: str, threads: int) -> dict:
    import numpy
    import scipy
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        memory = f"{kib / 2**20:.0f} GiB"
    except (OSError, IndexError, ValueError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": cpu, "cores": cores, "memory": memory, "torch": torch.__version__, "numpy": numpy.__version__,
            "scipy": scipy.__version__, "python": platform.python_version(), "threads": threads,
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_before": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _fmt(value, digits=3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{max(1, digits - 1)}f}".rstrip("0").rstrip(".")
    return str(value)


def _mib(value) -> str:
    if value is None:
        return "—"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _trips(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def evaluate(row: dict, fft_times: dict, shape: tuple[int, ...], date: str) -> dict:
    """Add the padded grid, round trips, FFT-only time estimate, target and bound verdicts to a worker row."""
    if "error" in row:
        return row
    grids = row.get("fft", {})
    row["round_trips"] = sum(g["round_trips"] for g in grids.values())
    # The grid that carries most of the transforms (the padded grid).
    row["padded_grid"] = max(grids, key=lambda g: grids[g]["round_trips"]) if grids else None
    fft_only = 0.0
    for grid, counts in grids.items():
        timing = fft_times.get(grid)
        if timing is None:
            fft_only = None
            break
        fft_only += counts["round_trips"] * timing["torch_s"]
    row["fft_only_s"] = fft_only
    row["fft_ratio"] = row["median_s"] / fft_only if fft_only else None
    row["within_bound"] = None if fft_only is None else row["median_s"] <= FFT_BOUND_FACTOR * fft_only
    target = TARGETS.get(row["method"]) if tuple(shape) == DEFAULT_SHAPE else None
    row.setdefault("date", date)
    row["target_s"] = target
    row["meets_target"] = None if target is None else row["median_s"] <= target
    return row


def render_section(key: str, title: str, rows: list[dict], fft: dict, info: dict, command: str,
                   args, problem_info: dict, kept: list[str]) -> str:
    device = args.device
    memory_header = "peak GPU memory (MB)" if device == "cuda" else "peak RSS (MB)"
    lines = [f"<!-- bench-inversion:{key} -->", f"## {title}", ""]
    machine = f"{info['cpu']} ({info['cores']} cores available"
    machine += f", {info['memory']})" if info.get("memory") else ")"
    if device == "cuda":
        machine += f"; GPU {info['gpu']} (CUDA {info['cuda']})"
    lines += [
        f"- Machine: {machine}; Python {info['python']}, torch {info['torch']}, scipy {info['scipy']}, "
        f"numpy {info['numpy']}; {info['threads']} threads; measured {info['date']}"
        + (f"; load average {info['load_before']:.2f} before the run" if info.get("load_before") is not None else "")
        + ".",
        "- Allocator: method workers ran " + (
            "with `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736`" if args.malloc
            else "with glibc's default allocator settings (`--no-malloc-setting`)") + ".",
        f"- Reproduce: `{command}`",
        f"- Problem: `shapes_phantom({', '.join(map(str, args.shape))})` float32; field = `forward_field(χ, "
        f"pad={FORWARD_PAD})` (float64) + Gaussian noise σ = {NOISE_FRACTION:.0%} of the field's std in the mask "
        f"(seed 0); medi gets the magnitude `clamp(1 − 2χ, 0.2, 1.5)` in the mask; cosmos gets 3 orientations "
        f"(B0 {', '.join('(' + ', '.join(f'{v:.3f}' for v in b) + ')' for b in problem_info['cosmos_b0_dirs'])}). "
        "Every method runs through `torchqsm.invert` with its registered defaults except "
        + "; ".join(f"{m}: " + ", ".join(f"{k}={v:g}" for k, v in p.items()) for m, p in OVERRIDES.items()) + ".",
        f"- Times: median of {args.repeats} calls after a first (warm-up) call, each method in a fresh process; "
        f"peak memory over all its calls, above what the loaded inputs hold. NRMSE vs the phantom χ in the mask.",
        "",
        f"| method | padded grid | FFT round trips | median time (s) | first call (s) | {memory_header} "
        "| NRMSE (%) | target | within 3× FFT bound |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['method']} | — | — | — | — | — | — | — | error: {row['error']} |")
            continue
        name = row["method"] + (f" ({row['iterations']} it.)" if row.get("iterations") else "")
        memory = row.get("peak_gpu_mib") if device == "cuda" else row.get("peak_rss_mib")
        if row["target_s"] is None:
            target = "—"
        else:
            target = f"≤ {row['target_s']:g} s: " + ("pass" if row["meets_target"] else "**FAIL**")
        if row["within_bound"] is None:
            bound = "—"
        else:
            per_trip_ms = row["fft_only_s"] / row["round_trips"] * 1e3
            bound = ("yes" if row["within_bound"] else "**no**") + \
                f": {row['fft_ratio']:.1f} × ({_trips(row['round_trips'])} × {per_trip_ms:.1f} ms)"
        grid = (row["padded_grid"] or "—").replace("x", "×")
        lines.append(f"| {name} | {grid} | {_trips(row['round_trips'])} | {_fmt(row['median_s'])} | "
                     f"{_fmt(row['first_s'])} | {_mib(memory)} | {row['nrmse_percent']:.1f} | {target} | {bound} |")
    lines.append("")

    # FFT round-trip table.
    plural = "s" if args.threads != 1 else ""
    lib = "torch.fft on CUDA" if device == "cuda" else f"torch.fft ({args.threads} thread{plural})"
    variants = [(label, data) for label, data in (("allocator setting", fft.get("tuned")),
                                                   ("default allocator", fft.get("default"))) if data]
    header = "| grid |" + "".join(f" {lib}, {label} (ms) | scipy.fft workers={args.threads}, {label} (ms) |"
                                  for label, _ in variants) + " faster |"
    lines += ["Real FFT round trip (`rfftn` + `irfftn`, float32), median of "
              f"{args.fft_repeats} after 2 warm-ups:", "", header, "|" + " --- |" * (2 * len(variants) + 2)]
    main = variants[0][1]["grids"] if variants else {}
    for grid in main:
        cells = []
        for _, data in variants:
            timing = data["grids"].get(grid, {})
            cells += [f"{timing.get(lib_key, float('nan')) * 1e3:.1f}" for lib_key in ("torch_s", "scipy_s")]
        t, s = main[grid]["torch_s"], main[grid]["scipy_s"]
        faster = f"torch, {s / t:.2f}×" if t < s else f"scipy, {t / s:.2f}×"
        lines.append(f"| {grid.replace('x', '×')} | " + " | ".join(cells) + f" | {faster} |")
    lines.append("")

    lines += ["Notes (measured in this run):", ""] + [f"- {n}" for n in _notes(rows, fft, args, kept, info)]
    data = {"shape": list(args.shape), "device": device, "threads": args.threads, "rows": rows,
            "date": info["date"]}
    text = json.dumps(data, separators=(",", ":"), default=str).replace("--", "-\\u002d")
    lines += ["", f"<!-- bench-data {text} -->", f"<!-- /bench-inversion:{key} -->"]
    return "\n".join(lines) + "\n"


def _notes(rows: list[dict], fft: dict, args, kept: list[str], info: dict) -> list[str]:
    notes = []
    load = info.get("load_before")
    if load is not None and load >= 1.5:  # the 1-minute average lingers after earlier work; 2 cores
        notes.append(f"**The machine was busy** (1-minute load average {load:.2f} on {info['cores']} cores before "
                     "the run): other processes compete for the cores, and multi-threaded torch operations then "
                     "stall at their thread barriers, so these times overstate the methods' cost. Rerun on an "
                     "idle machine for the reference table.")
    tuned, default = fft.get("tuned"), fft.get("default")
    main = (tuned or default or {}).get("grids", {})
    for grid, timing in main.items():
        t, s = timing["torch_s"], timing["scipy_s"]
        winner = "torch.fft" if t < s else "scipy.fft"
        notes.append(f"FFT round trip at {grid.replace('x', '×')}: {winner} is faster "
                     f"({t * 1e3:.1f} ms torch vs {s * 1e3:.1f} ms scipy"
                     + (" with the allocator setting)." if tuned else ")."))
    if tuned and default:
        for grid, timing in tuned["grids"].items():
            plain = default["grids"].get(grid)
            if plain:
                notes.append(f"Allocator setting at {grid.replace('x', '×')}: torch round trip "
                             f"{plain['torch_s'] * 1e3:.1f} → {timing['torch_s'] * 1e3:.1f} ms, scipy "
                             f"{plain['scipy_s'] * 1e3:.1f} → {timing['scipy_s'] * 1e3:.1f} ms "
                             "(default → setting).")
    good = [r for r in rows if "error" not in r]
    over = [r for r in good if r.get("within_bound") is False]
    if over:
        notes.append("Outside the 3× FFT bound (time / FFT-only time): "
                     + ", ".join(f"{r['method']} {r['fft_ratio']:.1f}×" for r in over) + ".")
    elif any(r.get("within_bound") for r in good):
        notes.append("Every method measured is within 3× of its FFT round trips × the round-trip time.")
    missed = [r for r in good if r.get("meets_target") is False]
    if missed:
        notes.append("Targets missed: " + ", ".join(f"{r['method']} {r['median_s']:.3g} s > {r['target_s']:g} s"
                                                   for r in missed) + ".")
    if tuple(args.shape) != DEFAULT_SHAPE:
        notes.append("The time targets apply to 176×176×160 only, so the target column is empty here.")
    slow_first = [r for r in good if r["first_s"] > 1.5 * r["median_s"] and r["first_s"] - r["median_s"] > 0.05]
    if slow_first:
        notes.append("First calls notably slower than the median: "
                     + ", ".join(f"{r['method']} {r['first_s']:.3g} s vs {r['median_s']:.3g} s" for r in slow_first)
                     + ".")
    skipped = {r["method"]: r["skipped_overrides"] for r in good if r.get("skipped_overrides")}
    if skipped:
        notes.append("Overrides the method no longer takes (ignored): "
                     + "; ".join(f"{m}: {', '.join(s)}" for m, s in skipped.items()) + ".")
    other = {r["method"]: r["peak_rss_method"] for r in good if r.get("peak_rss_method") not in (None, "VmHWM")}
    if other and args.device == "cpu":
        notes.append("Peak RSS measured by ru_maxrss (VmHWM could not be reset): " + ", ".join(other) + ".")
    if kept:
        notes.append("Rows kept from an earlier run (not measured now): " + ", ".join(kept) + ".")
    return notes


def update_markdown(path: Path, key: str, section: str) -> None:
    begin, end = f"<!-- bench-inversion:{key} -->", f"<!-- /bench-inversion:{key} -->"
    if path.exists():
        text = path.read_text()
    else:
        text = ("# Benchmarks\n\nGenerated by `benchmarks/bench_inversion.py`. Each section is regenerated by a run "
                "on its device and grid (between its markers); the other sections are left as they are.\n\n")
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def previous_rows(path: Path, key: str, shape, device: str, threads: int) -> list[dict]:
    """Rows stored in an existing section for the same grid, device and threads."""
    if path is None or not path.exists():
        return []
    text = path.read_text()
    match = re.search(re.escape(f"<!-- bench-inversion:{key} -->") + r".*?<!-- bench-data (\{.*?\}) -->", text, re.S)
    if not match:
        return []
    try:
        data = json.loads(match.group(1))
    except json.JSONDecodeError:
        return []
    if data.get("shape") != list(shape) or data.get("device") != device or data.get("threads") != threads:
        return []
    return data.get("rows", [])


def reproduce_command(args, methods_given: bool) -> str:
    parts = ["python", "benchmarks/bench_inversion.py"]
    if args.quick:
        parts.append("--quick")
    else:
        parts += ["--shape", *map(str, args.shape), "--repeats", str(args.repeats)]
    parts += ["--device", args.device, "--threads", str(args.threads)]
    if methods_given:
        parts += ["--methods", *args.methods]
    if not args.malloc:
        parts.append("--no-malloc-setting")
    if args.output is not None:
        output = Path(args.output).resolve()
        parts += ["--output", str(output.relative_to(REPO)) if output.is_relative_to(REPO) else str(output)]
    return shlex.join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), default=None,
                        help="grid (default 176 176 160; 48 48 48 with --quick)")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered classical method")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls after the warm-up (default 3; 1 with --quick)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch threads and scipy.fft workers (default 2)")
    parser.add_argument("--output", type=Path, default=None,
                        help="markdown to update (default docs/benchmarks.md; none with --quick unless given)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 48³, one repeat, stdout only")
    parser.add_argument("--fft-repeats", type=int, default=7, help="timed FFT round trips per grid (≥ 5, default 7)")
    parser.add_argument("--no-malloc-setting", dest="malloc", action="store_false",
                        help="run the method workers without MALLOC_MMAP_MAX_/MALLOC_TRIM_THRESHOLD_")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per method worker (default 3600)")
    # Worker mode (internal).
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--problem", help=argparse.SUPPRESS)
    parser.add_argument("--grids", nargs="*", default=(), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        if args.repeats is None:
            args.repeats = 3
        try:
            result = run_fft_worker(args) if args.worker == "fft" else run_method_worker(args)
        except Exception as error:  # reported in the table rather than aborting the whole run
            import traceback

            traceback.print_exc()
            result = {"method": args.worker, "error": f"{type(error).__name__}: {error}".splitlines()[0][:200]}
        print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)
        return 0

    if args.fft_repeats < 5:
        parser.error("--fft-repeats must be at least 5")
    methods_given = args.methods is not None
    if args.quick:
        args.shape = tuple(args.shape or QUICK_SHAPE)
        args.repeats = 1 if args.repeats is None else args.repeats
    else:
        args.shape = tuple(args.shape or DEFAULT_SHAPE)
        args.repeats = 3 if args.repeats is None else args.repeats
        if args.output is None:
            args.output = DEFAULT_OUTPUT
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    import torch

    from torchqsm.pipeline.registry import METHODS

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available")
    classical = [name for name, spec in METHODS.items() if spec.kind == "classical"]
    args.methods = args.methods or classical
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)} (registered: {', '.join(METHODS)})")

    torch.set_num_threads(args.threads)
    shape_text = "×".join(map(str, args.shape))
    info = machine_info(args.device, args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-inversion-") as tmp:
        problem_path = Path(tmp) / "problem.pt"
        start = time.perf_counter()
        log(f"simulating the phantom problem at {shape_text} ...")
        problem_info = make_problem(args.shape, problem_path)
        log(f"problem ready in {time.perf_counter() - start:.1f} s")

        env = _worker_env(args.threads, args.malloc)
        common = ["--problem", str(problem_path), "--device", args.device, "--threads", str(args.threads)]
        rows = []
        for method in args.methods:
            log(f"{method} ...")
            row = _run_worker(["--worker", method, "--repeats", str(args.repeats), *common], env, args.timeout)
            row.setdefault("method", method)
            rows.append(row)
            if "error" in row:
                log(f"{method}: {row['error']}")
            else:
                log(f"{method}: first {row['first_s']:.3f} s, median {row['median_s']:.3f} s, "
                    f"NRMSE {row['nrmse_percent']:.1f} %")

        grids = ["x".join(map(str, args.shape))]
        for row in rows:
            for grid in row.get("fft", {}):
                if grid not in grids:
                    grids.append(grid)
        log(f"FFT round trips at {', '.join(grids)} ...")
        fft_argv = ["--worker", "fft", "--grids", *grids, "--fft-repeats", str(args.fft_repeats), *common]
        fft = {}
        for label, malloc in (("tuned", True), ("default", False)):
            if malloc and not args.malloc:
                continue
            result = _run_worker(fft_argv, _worker_env(args.threads, malloc), args.timeout)
            if "error" in result:
                log(f"FFT worker ({label}): {result['error']}")
            else:
                fft[label] = result
    fft_times = (fft.get("tuned") if args.malloc else fft.get("default")) or {"grids": {}}
    rows = [evaluate(row, fft_times["grids"], args.shape, info["date"]) for row in rows]

    quick_or_custom = args.quick or tuple(args.shape) != DEFAULT_SHAPE
    key = args.device if not quick_or_custom else f"{args.device}-{'x'.join(map(str, args.shape))}"
    kept = []
    if args.output is not None:
        measured = {r["method"] for r in rows}
        earlier = [r for r in previous_rows(args.output, key, args.shape, args.device, args.threads)
                   if r.get("method") not in measured]
        kept = [f"{r['method']} ({r.get('date', 'date unknown')})" for r in earlier]
        order: dict = {}
        for name in classical + args.methods:
            order.setdefault(name, len(order))
        rows = sorted(rows + earlier, key=lambda r: order.get(r["method"], len(order)))
    where = "CUDA" if args.device == "cuda" else f"CPU, {args.threads} thread{'s' if args.threads != 1 else ''}"
    title = f"Dipole inversion, {where}, {shape_text} float32"
    if args.quick:
        title += " (quick smoke run, not the reference table)"
    section = render_section(key, title, rows, fft, info, reproduce_command(args, methods_given), args,
                             problem_info, kept)
    print(section)
    if args.output is not None:
        update_markdown(args.output, key, section)
        log(f"wrote section '{key}' of {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
