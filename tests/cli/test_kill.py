"""`torchqsm run` killed at random moments (SIGINT and SIGKILL): the output folder always holds the
previous complete result, the new complete result, or nothing (issue 17).

Runs start from a fork server that has imported torchqsm once, so each kill costs the run itself,
not Python's start-up. ``TORCHQSM_KILL_RUNS`` sets the number of kills (default 50).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from torchqsm.cli.main import main
from torchqsm.io._fileset import STAGING_PREFIX, recover
from torchqsm.physics.units import ppm_to_phase
from torchqsm.simulate import forward_field, shapes_phantom

KILLS = int(os.environ.get("TORCHQSM_KILL_RUNS", "50"))
THRESHOLDS = (0.1, 0.2, 0.3)  # tkd thresholds: each gives a different χ, so a mixed set would show
MAPS = ("Chimap.nii.gz", "desc-brain_mask.nii.gz", "desc-eroded_mask.nii.gz", "desc-total_fieldmap.nii.gz",
        "desc-local_fieldmap.nii.gz")


def _inputs(folder: Path) -> tuple[Path, Path]:
    chi, mask = shapes_phantom((20, 20, 20), dtype=torch.float64)
    field = forward_field(chi, pad=8) * mask
    mags, phases = [], []
    for te in (0.004, 0.008):
        phases.append(torch.angle(torch.exp(1j * ppm_to_phase(field, echo_time_s=te, b0_tesla=3.0))) * mask)
        mags.append(mask * math.exp(-te * 25.0) + 0.002)
    paths = []
    for name, data in (("mag", mags), ("phase", phases)):
        path = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.moveaxis(torch.stack(data).numpy(), 0, -1).astype(np.float32), np.eye(4)), path)
        paths.append(path)
    return paths[0], paths[1]


def _argv(mag: Path, phase: Path, out: Path, threshold: float, overwrite: bool) -> list[str]:
    return ["run", "--mag", str(mag), "--phase", str(phase), "--echo-times", "0.004", "0.008", "--b0-tesla", "3",
            "-o", str(out), "--inversion", "tkd", "--inversion-param", f"threshold={threshold}",
            "--brain-extraction", "0", "--erode", "0", "--no-qc", "--quiet", *(["--overwrite"] if overwrite else [])]


def _state(out: Path, references: dict[float, np.ndarray]) -> float | None:
    """The threshold of the complete result in ``out``, ``None`` when empty; fails on anything else."""
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert hidden == [], f"left behind after recovery: {hidden}"
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return None
    assert names == sorted([f"phase_{m}" for m in MAPS] + ["phase_Chimap.json"]), names
    record = json.loads((out / "phase_Chimap.json").read_text())
    assert record["Status"] == "finished"
    threshold = record["Parameters"]["inversion_params"]["threshold"]
    chi = nib.load(out / "phase_Chimap.nii.gz").get_fdata()
    assert np.allclose(chi, references[threshold], atol=1e-6), "χ does not belong to its sidecar: a mixed set"
    return threshold


def test_random_kills_leave_old_new_or_nothing(tmp_path):
    mag, phase = _inputs(tmp_path)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torchqsm.cli.main", "torchqsm.pipeline.app", "torchqsm.cli.run"])

    def start(argv: list[str]):
        process = context.Process(target=main, args=(argv,))
        process.start()
        return process

    references, durations = {}, []
    for threshold in THRESHOLDS:  # uninterrupted runs: the reference χ of each threshold and the run time
        folder = tmp_path / f"reference-{threshold}"
        started = time.perf_counter()
        process = start(_argv(mag, phase, folder, threshold, overwrite=False))
        process.join(120)
        durations.append(time.perf_counter() - started)
        assert process.exitcode == 0
        references[threshold] = nib.load(folder / "phase_Chimap.nii.gz").get_fdata()
    assert not np.allclose(references[0.1], references[0.3], atol=1e-6)
    run_time = sorted(durations)[1]  # the first also started the fork server

    out = tmp_path / "out"
    rng = random.Random(17)
    current, outcomes = None, {"old": 0, "new": 0, "nothing": 0}
    for kill in range(KILLS):
        threshold = rng.choice([t for t in THRESHOLDS if t != current])
        process = start(_argv(mag, phase, out, threshold, overwrite=current is not None))
        time.sleep(rng.uniform(0.0, 1.1 * run_time))
        try:
            os.kill(process.pid, signal.SIGKILL if kill % 2 else signal.SIGINT)
        except ProcessLookupError:  # it finished first: then it must have left the new result
            pass
        process.join(120)
        assert process.exitcode is not None, "the run hangs after a signal"
        recover(out) if out.exists() else None  # what the next run does first
        found = _state(out, references) if out.exists() else None
        assert found in (current, threshold), (kill, current, threshold, found)
        outcomes["nothing" if found is None else "old" if found == current else "new"] += 1
        current = found
    assert sum(outcomes.values()) == KILLS
    assert not any(p.name.startswith(STAGING_PREFIX) for p in out.iterdir()) if out.exists() else True
    print(f"{KILLS} kills (runs of {run_time:.2f} s): {outcomes}")
