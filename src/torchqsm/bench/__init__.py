"""Benchmarking: the evaluation suite of simulated BIDS datasets with ground truth, scoring on it,
``torchqsm bench`` (every method on every case, in parallel, resumable) and its report."""

from .evaluate import EvaluationRow, SuiteInput, evaluate, load_case, markdown_table, measured_field_noise_ppm
from .report import ReportFiles, write_report
from .runner import BenchResult, MethodEntry, default_methods, parse_method, run_bench
from .suite import SUITE_VERSION, SuiteCase, build_suite, suite_cases

__all__ = ["SUITE_VERSION", "SuiteCase", "build_suite", "suite_cases", "EvaluationRow", "SuiteInput", "evaluate",
           "load_case", "markdown_table", "measured_field_noise_ppm", "BenchResult", "MethodEntry", "default_methods",
           "parse_method", "run_bench", "ReportFiles", "write_report"]
