#!/usr/bin/env python
"""The loss curves of the shipped networks' training runs, from their committed logs.

Reads ``training/NAME/metrics.jsonl`` (one line per logged step: loss, learning rate, ...) for each
``--runs`` name and draws the training loss against the samples seen, as a running median over
``--window`` logged points (each point is one batch, and batches with a lesion cost 10-100×
more), relative to the run's first median so runs with different losses share one axis. Learning-rate
drops are marked. Prints, per run, the median of the first and last fifth of the run and their ratio.

Example::

    python benchmarks/figure_training_curves.py --out docs/figures/training_curves.png
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = ("noqsm-hybrid-cpu", "noqsm-sd-hybrid-cpu", "lpcnn-hybrid-cpu", "nextqsm-hybrid-cpu",
        "nextqsm-background-cpu", "nextqsm-pipeline-cpu")


def read_log(path: Path) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [line for line in lines if "loss" in line]


def running_median(values: list[float], window: int) -> list[float]:
    half = window // 2
    return [statistics.median(values[max(0, i - half): i + half + 1]) for i in range(len(values))]


def wall_seconds(log: list[dict]) -> float:
    """The run's wall time over all its calls: each resumed call logs its own elapsed seconds from 0."""
    total = 0.0
    for line, after in zip(log, log[1:] + [None]):
        if after is None or after["seconds"] < line["seconds"]:
            total += line["seconds"]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS))
    parser.add_argument("--window", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures" / "training_curves.png")
    args = parser.parse_args()
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=120)
    print("| run | steps | samples | wall time (min) | loss, first fifth | last fifth | last / first |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in args.runs:
        path = ROOT / "training" / name / "metrics.jsonl"
        if not path.exists():
            print(f"| {name} | (no log at {path.relative_to(ROOT)}) |")
            continue
        log = read_log(path)
        config = json.loads((path.parent / "config.json").read_text(encoding="utf-8"))
        batch = int(config["training"]["batch_size"])
        samples = [line["step"] * batch for line in log]
        smooth = running_median([line["loss"] for line in log], args.window)
        reference = smooth[0]
        line, = axis.plot(samples, [v / reference for v in smooth], label=name)
        for before, after in zip(log, log[1:]):
            if after["learning_rate"] < before["learning_rate"]:
                axis.axvline(after["step"] * batch, color=line.get_color(), alpha=0.25, linestyle=":")
        fifth = max(1, len(log) // 5)
        first = statistics.median(line["loss"] for line in log[:fifth])
        last = statistics.median(line["loss"] for line in log[-fifth:])
        print(f"| {name} | {log[-1]['step']} | {samples[-1]} | {wall_seconds(log) / 60:.1f} | {first:.3g} | "
              f"{last:.3g} | {last / first:.2f} |")
    axis.set_xscale("log")
    axis.set_xlabel("training samples seen (patches or whole heads)")
    axis.set_ylabel(f"training loss / its first value (running median of {args.window} logs)")
    axis.set_title("Shipped CPU training runs (dotted: learning-rate drops)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
