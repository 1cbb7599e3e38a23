"""The installed ``torchqsm`` console script (the one test that starts a process)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_console_script_help() -> None:
    script = Path(sys.executable).with_name("torchqsm")
    executable = str(script) if script.exists() else shutil.which("torchqsm")
    if executable is None:
        pytest.skip("the torchqsm console script is not installed")
    completed = subprocess.run([executable, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("usage: torchqsm")
    for command in ("invert", "methods", "score"):
        assert command in completed.stdout
