"""Fixtures shared by the physics tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of small-grid tests.

    On these grids waking a thread pool costs more than each FFT; under load on
    2 cores the contract tests took 50 s with 2 threads and 6 s with one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
