"""Progress lines for work made of several runs (a sweep, the demo): ``run i/N``, elapsed, an estimate of the rest.

No TensorFlow: the CLI prints these before and between runs. The estimate is the mean
time of the runs that trained in this process times the runs left; runs that were
already complete (a resumed sweep) take no time and are not counted in that mean.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from tf_langdml.durations import format_duration


class RunProgress:
    """Counts the runs of a batch of ``total`` and prints one line as each starts (to ``stream``, stderr by default).

    ``start(label)`` before a run, ``finish(trained=True)`` after it (``trained=False``:
    it was already complete, so its near-zero time does not shorten the estimate).
    ``clock``: a monotonic clock in seconds (tests pass their own).
    """

    def __init__(
        self, total: int, what: str = "run", stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if total < 1:
            raise ValueError(f"RunProgress needs at least one run; got total = {total}.")
        self.total, self.what, self.clock = int(total), what, clock
        self.stream = sys.stderr if stream is None else stream
        self.started = clock()
        self.done = 0
        self.trained_seconds, self.trained = 0.0, 0
        self._run_started = None

    def estimate_left(self) -> float | None:
        """Seconds the remaining runs should take (mean trained run x runs left); None before any run trained."""
        if not self.trained:
            return None
        return self.trained_seconds / self.trained * (self.total - self.done)

    def line(self, label: str) -> str:
        """``run 2/6 (language_weight=2.5 seed=0): 3 min 12 s elapsed, about 6 min 24 s left``."""
        left = self.estimate_left()
        estimate = "no estimate yet" if left is None else f"about {format_duration(left)} left"
        return (
            f"{self.what} {self.done + 1}/{self.total} ({label}): "
            f"{format_duration(self.clock() - self.started)} elapsed, {estimate}"
        )

    def start(self, label: str) -> None:
        print(f"tf_langdml: {self.line(label)}", file=self.stream, flush=True)
        self._run_started = self.clock()

    def finish(self, trained: bool = True) -> None:
        if self._run_started is None:
            raise RuntimeError("RunProgress.finish() without start().")
        if trained:
            self.trained_seconds += self.clock() - self._run_started
            self.trained += 1
        self.done += 1
        self._run_started = None
