"""Benchmarking: the evaluation suite of simulated BIDS datasets with ground truth, scoring on it,
``torchqsm bench`` (every method on every case, in parallel, resumable) and its report.

The names below are imported on first use, so a Dask worker that only runs
:func:`torchqsm.bench.runs.execute` never imports matplotlib or the simulation engine
(seconds of CPU per worker).
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name → the submodule defining it.
_EXPORTS = {
    "SUITE_VERSION": "suite", "SuiteCase": "suite", "build_suite": "suite", "suite_cases": "suite",
    "EvaluationRow": "evaluate", "SuiteInput": "evaluate", "evaluate": "evaluate", "load_case": "evaluate",
    "markdown_table": "evaluate", "measured_field_noise_ppm": "evaluate",
    "BenchResult": "runner", "MethodEntry": "runner", "default_methods": "runner", "parse_method": "runner",
    "run_bench": "runner", "ReportFiles": "report", "write_report": "report",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
