"""A tqdm progress bar fed by a solver's status callback."""

from __future__ import annotations

from tqdm.auto import tqdm

from ..solvers import SolverStatus

__all__ = ["progress_callback", "ProgressBar"]


class ProgressBar:
    """A solver status callback that draws a bar, opened at the first iteration.

    Opening it lazily keeps stderr clean when the method rejects its input
    before iterating: the user then sees the one-line error and nothing else.
    """

    def __init__(self, *, total: int, description: str) -> None:
        self.total = total
        self.description = description
        self._bar: tqdm | None = None

    def __call__(self, status: SolverStatus) -> None:
        if self._bar is None:
            # disable=None: no bar when stderr is not a terminal (logs, CI), so logs stay readable.
            self._bar = tqdm(total=self.total, desc=self.description, unit="it", leave=False,
                             dynamic_ncols=True, disable=None)
        self._bar.update(status.iteration - self._bar.n)
        self._bar.set_postfix_str(f"residual {status.residual:.2e}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def progress_callback(*, total: int, description: str) -> tuple[ProgressBar, ProgressBar]:
    """A (callback, bar) pair: the callback advances the bar and shows the solver's residual."""
    bar = ProgressBar(total=total, description=description)
    return bar, bar
