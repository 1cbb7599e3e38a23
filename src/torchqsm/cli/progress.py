"""A tqdm progress bar fed by a solver's status callback."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from ..solvers import SolverStatus

__all__ = ["progress_callback"]


def progress_callback(*, total: int, description: str) -> tuple[Any, tqdm]:
    """A (callback, bar) pair: the callback advances the bar and shows the solver's residual."""
    bar = tqdm(total=total, desc=description, unit="it", leave=False, dynamic_ncols=True)

    def callback(status: SolverStatus) -> None:
        bar.update(status.iteration - bar.n)
        bar.set_postfix_str(f"residual {status.residual:.2e}", refresh=False)

    return callback, bar
