"""Benchmarking: the evaluation suite of simulated BIDS datasets with ground truth, and scoring on it."""

from .evaluate import EvaluationRow, SuiteInput, evaluate, load_case, markdown_table, measured_field_noise_ppm
from .suite import SUITE_VERSION, SuiteCase, build_suite, suite_cases

__all__ = ["SUITE_VERSION", "SuiteCase", "build_suite", "suite_cases", "EvaluationRow", "SuiteInput", "evaluate",
           "load_case", "markdown_table", "measured_field_noise_ppm"]
