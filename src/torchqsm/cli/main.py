"""The ``torchqsm`` command: thin commands over the library.

Each command loads, calls the library, and saves. :func:`main` is the one guard around
all of them: a user's mistake (a bad file, an unknown method or parameter) prints one line
and exits with status 2; the operating system refusing (permission, disk full), running
out of memory and Ctrl-C each print one line and exit with their own status
(:data:`torchqsm.errors.EXIT_CODES`); anything else is a bug and keeps its traceback,
followed by a line asking for a report.

This module imports nothing heavy at import time: the commands (and torch) load inside
:func:`main`'s guard, with Ctrl-C held until they have loaded, so an interrupt while they load is
one line too (exit 130).
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from collections.abc import Sequence

from .. import __version__
from ..errors import EXIT_CODES, describe_failure

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``torchqsm`` (its sub-commands and options)."""
    # Imported here, not at the top: torch loads with them, inside main's guard.
    from .bench import add_bench_parser
    from .commands import run_invert, run_methods, run_score
    from .models import add_models_parser
    from .run import add_run_parser
    from .simulate import add_simulate_parser
    from .train import add_train_parser

    parser = _Parser(prog="torchqsm", description="Quantitative susceptibility mapping in PyTorch.")
    parser.add_argument("--version", action="version", version=f"torchqsm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    invert = commands.add_parser(
        "invert", help="local field (ppm) → susceptibility χ (ppm) with a dipole inversion method",
        description="Invert a local field map (ppm of B0) to a susceptibility map (ppm). B0 direction and voxel "
                    "size come from the field's header unless given.")
    invert.add_argument("field", metavar="FIELD_PPM", help="local field NIfTI, ppm (4-D, orientations last, for cosmos)")
    invert.add_argument("mask", metavar="MASK", help="mask NIfTI on the field's grid")
    invert.add_argument("-o", "--output", required=True, metavar="CHI", help="output χ NIfTI (.nii or .nii.gz)")
    invert.add_argument("--method", default="tkd", help="method name (see `torchqsm methods`; default tkd)")
    invert.add_argument("--b0-dir", type=float, nargs="+", metavar="X",
                        help="B0 direction in voxel coordinates (3 numbers; 3 per orientation for cosmos)")
    invert.add_argument("--voxel-size", type=float, nargs=3, metavar=("X", "Y", "Z"), help="voxel size in mm")
    invert.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a method parameter (repeatable), e.g. --param threshold=0.15")
    invert.add_argument("--echo-times", type=float, nargs="+", metavar="TE_S",
                        help="echo times in s (default: EchoTime of the field's JSON sidecar); used by tv (nonlinear), "
                             "ndi and medi")
    invert.add_argument("--b0-tesla", type=float, metavar="T",
                        help="field strength in T (default: MagneticFieldStrength of the field's JSON sidecar)")
    invert.add_argument("--magnitude", metavar="MAG", help="magnitude NIfTI for data weights (required by medi)")
    invert.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    invert.add_argument("--overwrite", action="store_true", help="replace existing output files")
    invert.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    invert.set_defaults(handler=run_invert)

    methods = commands.add_parser("methods", help="list the dipole inversion methods and their parameters")
    methods.add_argument("name", nargs="?", help="show one method only")
    methods.add_argument("--json", action="store_true", help="print JSON")
    methods.set_defaults(handler=run_methods)

    score = commands.add_parser("score", help="compare a χ map with a reference: NRMSE, HFEN, SSIM, ...")
    score.add_argument("estimate", metavar="CHI", help="χ NIfTI (ppm)")
    score.add_argument("reference", metavar="REFERENCE", help="reference χ NIfTI (ppm) on the same grid")
    score.add_argument("--mask", required=True, metavar="MASK", help="mask NIfTI restricting the metrics")
    score.add_argument("--labels", metavar="LABELS", help="integer label NIfTI for ROI statistics")
    score.add_argument("--json", action="store_true", help="print JSON")
    score.set_defaults(handler=run_score)

    add_run_parser(commands)
    add_simulate_parser(commands)
    add_models_parser(commands)
    add_train_parser(commands)
    add_bench_parser(commands)
    return parser


def _report(error: BaseException, command: str) -> int:
    """Print one line (or, for a bug, the traceback and a request to report it); the exit status."""
    previous = None
    try:  # a second Ctrl-C while we print must not turn the line into a traceback
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass
    try:
        described = describe_failure(error)
        if described is None:
            traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
            print(f"{command}: internal error ({type(error).__name__}): this is a bug in torchqsm {__version__}; "
                  "please report it with the command and the traceback above", file=sys.stderr)
            return EXIT_CODES["bug"]
        kind, line = described
        line = " ".join(part.strip() for part in line.splitlines() if part.strip())  # one line, always
        print("torchqsm: interrupted" if kind == "interrupted" else f"{command}: error: {line}", file=sys.stderr)
        return EXIT_CODES[kind]
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


class _DeferredInterrupt:
    """A SIGINT handler that only notes the signal (raised later, from Python, by :func:`_deferring_interrupts`)."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum, frame) -> None:
        self.received = True


def _deferring_interrupts(load):
    """``load()`` with Ctrl-C held until it returns, then raised as KeyboardInterrupt.

    Importing torch runs Python callbacks from its C++ initialisers (pybind11); a KeyboardInterrupt
    raised inside one of them escapes as a C++ exception and aborts the process ("terminate called
    after throwing an instance of 'pybind11::error_already_set'"), past every Python guard. Holding
    the signal for the import (a second or two) keeps Ctrl-C one line.
    """
    deferred = _DeferredInterrupt()
    try:
        previous = signal.signal(signal.SIGINT, deferred)
    except ValueError:  # not the main thread: no handler to install
        return load()
    try:
        result = load()
    finally:
        signal.signal(signal.SIGINT, previous)
    if deferred.received:
        raise KeyboardInterrupt
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (:data:`torchqsm.errors.EXIT_CODES`: 0 ok, 1 some subjects
    failed, 2 user error, 3 system error, 4 out of memory, 70 internal error, 130 interrupted)."""
    command = "torchqsm"
    try:
        parser = _deferring_interrupts(build_parser)
        argv = list(sys.argv[1:] if argv is None else argv)
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_:  # --help, --version and usage errors: return the status, as documented
            code = exit_.code
            return code if isinstance(code, int) else (0 if code is None else 2)
        command = f"torchqsm {args.command}"
        args.argv = argv  # recorded in the sidecar as the command that made the output
        return int(args.handler(args) or 0)
    except BrokenPipeError:  # the reader went away (`torchqsm methods | head`): stop quietly
        import os

        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except SystemExit:
        raise
    except BaseException as error:  # noqa: BLE001 - the one top-level guard: one line, or a bug's traceback
        return _report(error, command)


if __name__ == "__main__":
    sys.exit(main())
