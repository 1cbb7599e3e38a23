"""The one top-level guard of ``torchqsm`` (issue 17): every ending a user or the machine can cause
is one line and a documented exit status; a bug keeps its traceback and asks for a report."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from torchqsm.cli import commands
from torchqsm.cli import main as main_module
from torchqsm.errors import EXIT_CODES


def _raising(error: BaseException):
    def handler(*_, **__):
        raise error
    return handler


@pytest.mark.parametrize(("error", "status", "text"), [
    (PermissionError(13, "Permission denied", "/data/out/chi.nii.gz"), 3, "/data/out/chi.nii.gz: Permission denied"),
    (OSError(28, "No space left on device"), 3, "No space left on device"),
    (FileNotFoundError(2, "No such file or directory", "gone.nii"), 3, "gone.nii: No such file or directory"),
    (MemoryError(), 4, "not enough memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 500000000000 bytes."), 4, "not enough memory"),
])
def test_system_failures_are_one_line(cli, monkeypatch, error, status, text):
    monkeypatch.setattr(commands, "run_methods", _raising(error))
    result = cli("methods")
    assert result.code == status == EXIT_CODES["system" if status == 3 else "memory"]
    assert result.err.count("\n") == 1 and result.err.startswith("torchqsm methods: error: ")
    assert text in result.err and "Traceback" not in result.err


def test_a_bug_keeps_its_traceback_and_asks_for_a_report(cli, monkeypatch):
    monkeypatch.setattr(commands, "run_methods", _raising(ZeroDivisionError("division by zero")))
    result = cli("methods")
    assert result.code == EXIT_CODES["bug"] == 70
    assert result.err.startswith("Traceback (most recent call last):")
    assert "ZeroDivisionError: division by zero" in result.err
    assert result.err.rstrip().splitlines()[-1].endswith("please report it with the command and the traceback above")


def test_interrupt_while_loading_is_one_line(cli, monkeypatch):
    monkeypatch.setattr(main_module, "build_parser", _raising(KeyboardInterrupt()))
    result = cli("methods")
    assert (result.code, result.err) == (130, "torchqsm: interrupted\n")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored after the message


def test_broken_pipe_stops_quietly(cli, monkeypatch):
    monkeypatch.setattr(commands, "run_methods", _raising(BrokenPipeError(32, "Broken pipe")))
    assert cli("methods").code == 0


@pytest.mark.parametrize("delay_s", [0.2, 0.6, 1.5])
def test_ctrl_c_during_start_up(delay_s):
    """A real process: SIGINT while Python imports torch and the commands."""
    env = {**os.environ, "PYTHONPATH": str(Path(main_module.__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "torchqsm.cli.main", "methods"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(delay_s)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    if process.returncode == 0:  # it finished before the signal: nothing to check
        return
    assert "Traceback" not in err and err == "torchqsm: interrupted\n"
    # 130, or killed by SIGINT (-2; the shell shows 130 too): CPython ends that way when the interrupt
    # landed inside code that torch's import runs through PyRun_*, even though main caught it.
    assert process.returncode in (130, -signal.SIGINT)
