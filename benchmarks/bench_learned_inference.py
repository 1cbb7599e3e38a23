#!/usr/bin/env python
"""Inference time and peak memory of the learned methods on 176×176×160, and training throughput.

Each row runs in a fresh subprocess so that its peak resident memory (``VmHWM``) is its own.
The field is the head model's local field (1 mm, B0 along z, ``simulate_volume`` with a
176×176×160 region); times are the median of ``--repeats`` calls after one warm-up call,
whose time is reported as the first-call cost.

Rows:

* ``dfqsm-unet-16``: the paper-sized DF-QSM U-Net (16 → 256 channels, 5.65 M parameters,
  random weights: time does not depend on them), eager; with ``channels_last_3d``; with
  ``torch.compile`` (inductor, freezing, channels-last; the first call includes compilation);
  and through :func:`torchqsm.models.inference.predict` (batch norm folded, channels-last);
* the shipped learned methods through the registry (``torchqsm.invert``): ``unet``,
  ``unet+dfqsm``, ``xqsm``, ``qsmnet`` (normalisation, padding and masking included);
* training throughput (samples/s) of each shipped configuration in ``configs/``: 10 steps
  after 3 warm-up steps, the data workers of the configuration included.

Examples
--------
Table in docs/benchmarks.md (its learned-inference section is regenerated)::

    python benchmarks/bench_learned_inference.py --threads 2

The data-consistent networks beside ``tv`` and ``unet``, in their own section (``--tag``)::

    python benchmarks/bench_learned_inference.py --threads 2 --tag consistent --rows tv unet lpcnn noqsm \
        noqsm-sd nextqsm train:configs/noqsm-hybrid-cpu.toml train:configs/noqsm-sd-hybrid-cpu.toml \
        train:configs/lpcnn-hybrid-cpu.toml train:configs/nextqsm-hybrid-cpu.toml
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "benchmarks.md"

def markers(tag: str = "cpu") -> tuple[str, str]:
    """The begin and end markers of this benchmark's section ``tag`` in docs/benchmarks.md."""
    return f"<!-- bench-learned-inference:{tag} -->", f"<!-- /bench-learned-inference:{tag} -->"


BEGIN, END = markers()
SHAPE = (176, 176, 160)
TARGETS = {"unet": 3.0, "unet+dfqsm": 5.0}


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _field():
    import torch

    from torchqsm.simulate import SimulationConfig, simulate_volume
    config = SimulationConfig(patch_size=None, region_size=SHAPE, max_tilt_deg=0.0, deform=False,
                              lesion_probability=0.0)
    volume = simulate_volume(config, torch.Generator().manual_seed(7))
    return volume.local_field_ppm * volume.mask, volume.mask, volume.chi_ppm


def _time(call, repeats: int) -> tuple[float, list[float]]:
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return first, times


def run_row(row: str, threads: int, repeats: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    result: dict = {"row": row, "threads": threads}
    if row.startswith("train:"):
        from torchqsm.train import load_config, train
        config = load_config(REPO / row.split(":", 1)[1])
        with tempfile.TemporaryDirectory() as folder:
            train(config, folder, progress=False, stop_after=3)
            started = time.perf_counter()
            done = train(config, folder, resume=True, progress=False, stop_after=10)
            seconds = time.perf_counter() - started
        result.update(samples_per_second=10 * config.training.batch_size / seconds, step_s=seconds / 10,
                      batch_size=config.training.batch_size, patch=list(config.data.patch_size), steps=done.step)
        result["peak_mib"] = _peak_mib()
        return result
    field, mask, chi = _field()
    if row.startswith("dfqsm-unet-16"):
        from torchqsm.models import UNet3d
        from torchqsm.models.inference import pad_to_multiple
        torch.manual_seed(0)
        model = UNet3d().eval()
        x, _ = pad_to_multiple(field[None, None] / 0.01, 16)
        if row.endswith(("channels-last", "compile")):
            model = model.to(memory_format=torch.channels_last_3d)
            x = x.contiguous(memory_format=torch.channels_last_3d)
        if row.endswith("compile"):  # inductor with freezing (constant weights folded and pre-packed)
            import torch._inductor.config as inductor_config
            inductor_config.freezing = True
            model = torch.compile(model)
        if row.endswith("predict"):  # torchqsm's own path: batch norm folded, channels-last (models.inference)
            from torchqsm.models import Normalization
            from torchqsm.models.inference import predict
            network = model

            def call():
                predict(network, field, mask, normalization=Normalization(input_scale_ppm=0.01))
        else:
            def call():
                with torch.inference_mode():
                    model(x)
        result["parameters"] = sum(p.numel() for p in UNet3d().parameters())
    else:
        from torchqsm.metrics import nrmse
        from torchqsm.pipeline.registry import get_method, invert
        get_method(row)
        output = {}

        def call():
            output["chi"] = invert(field, mask, row, voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0))
    first, times = _time(call, repeats)
    result.update(first_s=first, times_s=times, median_s=statistics.median(times), peak_mib=_peak_mib())
    if not row.startswith("dfqsm-unet-16"):
        result["nrmse_percent"] = float(nrmse(output["chi"], chi, mask))
    return result


def table(rows: list[dict], threads: int, *, tag: str = "cpu") -> str:
    begin, end = markers(tag)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    import torch
    title = "" if tag == "cpu" else f" ({tag})"
    lines = [begin, f"## Learned inversion{title}: inference and training throughput (CPU, {threads} threads)", "",
             f"Generated by `{shlex.join(['python', 'benchmarks/bench_learned_inference.py', *sys.argv[1:]])}` on {now}, "
             f"{platform.machine()}, torch {torch.__version__}. Volume 176×176×160 (1 mm head model, B0 along z); "
             "each row in its own process; median of the timed calls after one warm-up (first call). No GPU "
             "was available for this measurement.", "",
             "| row | first call (s) | median (s) | target (s) | peak RSS (MiB) | NRMSE (%) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "samples_per_second" in r:
            continue
        target = TARGETS.get(r["row"])
        met = "" if target is None else (f"≤ {target:g} ✓" if r["median_s"] <= target else f"≤ {target:g} ✗")
        nrmse = f"{r['nrmse_percent']:.1f}" if "nrmse_percent" in r else ""
        lines.append(f"| `{r['row']}` | {r['first_s']:.2f} | {r['median_s']:.2f} | {met} | {r['peak_mib']:.0f} | "
                     f"{nrmse} |")
    training = [r for r in rows if "samples_per_second" in r]
    if training:
        lines += ["", "| training configuration | patch | batch | s/step | samples/s | peak RSS (MiB) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in training:
            lines.append(f"| `{r['row'].split(':', 1)[1]}` | {'×'.join(map(str, r['patch']))} | {r['batch_size']} | "
                         f"{r['step_s']:.2f} | {r['samples_per_second']:.2f} | {r['peak_mib']:.0f} |")
    lines += ["", f"<!-- bench-data {json.dumps({'rows': rows, 'date': now}, separators=(',', ':'))} -->", end]
    return "\n".join(lines)


def write(section: str, tag: str = "cpu") -> None:
    begin, end = markers(tag)
    text = OUTPUT.read_text(encoding="utf-8")
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    OUTPUT.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", nargs="+", help="only these rows")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--tag", default="cpu", help="section of docs/benchmarks.md to write (default cpu)")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one row, print JSON
    args = parser.parse_args()
    if args.row:
        print(json.dumps(run_row(args.row, args.threads, args.repeats)))
        return
    from torchqsm.pipeline.registry import METHODS
    rows = args.rows or (["dfqsm-unet-16", "dfqsm-unet-16:channels-last", "dfqsm-unet-16:compile",
                          "dfqsm-unet-16:predict"]
                         + [m for m in ("unet", "unet+dfqsm", "xqsm", "qsmnet") if m in METHODS]
                         + [f"train:configs/{n}-hybrid-cpu.toml" for n in ("unet", "xqsm", "qsmnet")])
    results = []
    for row in rows:
        done = subprocess.run([sys.executable, __file__, "--row", row, "--threads", str(args.threads),
                               "--repeats", str(args.repeats)], capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            print(f"{row}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    section = table(results, args.threads, tag=args.tag)
    print(section)
    if not args.no_write:
        write(section, args.tag)


if __name__ == "__main__":
    main()
