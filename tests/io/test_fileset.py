"""Replacing a set of output files as one (torchqsm.io._fileset): errors roll back, a killed run's
staging folder is rolled back and removed by the next run, a live run's is left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from torchqsm.io import _fileset
from torchqsm.io._fileset import STAGING_PREFIX, commit, recover, staging_folder


def _old_set(folder: Path) -> dict[str, str]:
    files = {"a_Chimap.nii.gz": "old chi", "a_mask.nii.gz": "old mask", "a_Chimap.json": "old sidecar"}
    for name, text in files.items():
        (folder / name).write_text(text)
    return files


def _staged(folder: Path, names) -> tuple[Path, dict[Path, Path]]:
    staging = staging_folder(folder)
    (staging / "new").mkdir()
    moves = {}
    for name in names:
        staged = staging / "new" / name
        staged.write_text(f"new {name}")
        moves[staged] = folder / name
    return staging, moves


def _contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_commit_replaces_the_set_and_removes_staging(tmp_path):
    _old_set(tmp_path)
    staging, moves = _staged(tmp_path, ["a_Chimap.nii.gz", "a_mask.nii.gz", "a_Chimap.json"])
    commit(staging, moves)
    assert _contents(tmp_path) == {name: f"new {name}" for name in ("a_Chimap.nii.gz", "a_mask.nii.gz", "a_Chimap.json")}


@pytest.mark.parametrize("failing_call", [1, 2, 3, 4, 5, 6])
def test_a_failing_move_keeps_the_previous_results(tmp_path, monkeypatch, failing_call):
    old = _old_set(tmp_path)
    staging, moves = _staged(tmp_path, ["a_Chimap.nii.gz", "a_mask.nii.gz", "a_Chimap.json"])
    real, calls = os.replace, []

    def flaky(source, target):
        calls.append(target)
        if len(calls) == failing_call:
            raise OSError(28, "No space left on device")
        return real(source, target)

    monkeypatch.setattr(_fileset.os, "replace", flaky)
    with pytest.raises(OSError, match="No space"):
        commit(staging, moves)
    monkeypatch.setattr(_fileset.os, "replace", real)
    assert _contents(tmp_path) == old  # previous results intact, no staging folder left


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _killed_staging(folder: Path, *, moved: int) -> Path:
    """What a run killed after ``moved`` moves of its swap leaves behind."""
    names = ["a_Chimap.nii.gz", "a_mask.nii.gz", "a_Chimap.json"]
    staging = folder / f"{STAGING_PREFIX}{_fileset._host()}-{_dead_pid()}-0000abcd"
    (staging / "new").mkdir(parents=True)
    (staging / "previous").mkdir()
    entries = [{"name": n, "target": str(folder / n), "existed": (folder / n).exists()} for n in names]
    (staging / "journal.json").write_text(json.dumps({"state": "swapping", "entries": entries}))
    for name in names:
        (staging / "new" / name).write_text(f"new {name}")
    # the swap's moves in order: old sidecar out, then per file old out / new in, sidecar last
    steps = [("out", "a_Chimap.json")] + [(kind, n) for n in names[:2] for kind in ("out", "in")] + [("in", "a_Chimap.json")]
    for kind, name in steps[:moved]:
        if kind == "out" and (folder / name).exists():
            os.replace(folder / name, staging / "previous" / name)
        elif kind == "in":
            os.replace(staging / "new" / name, folder / name)
    return staging


@pytest.mark.parametrize("moved", range(7))
def test_a_killed_swap_is_rolled_back_by_the_next_run(tmp_path, moved):
    old = _old_set(tmp_path)
    _killed_staging(tmp_path, moved=moved)
    lines = recover(tmp_path)
    assert len(lines) == 1 and "rolled back" in lines[0]
    assert _contents(tmp_path) == old


def test_a_killed_first_run_leaves_nothing(tmp_path):
    _killed_staging(tmp_path, moved=4)
    recover(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_staging_folder_without_journal_is_removed_and_a_live_one_kept(tmp_path):
    dead = tmp_path / f"{STAGING_PREFIX}{_fileset._host()}-{_dead_pid()}-00000001"
    (dead / "new").mkdir(parents=True)
    (dead / "new" / "a_Chimap.nii.gz").write_text("complete-looking")
    live = staging_folder(tmp_path)  # this process: alive
    assert recover(tmp_path) == [f"removed the staging folder {dead.name} of an interrupted run"]
    assert [p.name for p in tmp_path.iterdir()] == [live.name]
