"""Benchmarking: the evaluation suite of simulated BIDS datasets with ground truth (more to come)."""

from .suite import SUITE_VERSION, SuiteCase, build_suite, suite_cases

__all__ = ["SUITE_VERSION", "SuiteCase", "build_suite", "suite_cases"]
