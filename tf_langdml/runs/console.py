"""What training prints while ``model.fit`` runs: a Keras progress bar on a terminal, one short line per epoch when piped.

Only the loss terms (total, DML, language matching where guidance is on), the step
time and the evaluation's recall@1 reach the console; the diagnostics stay in
TensorBoard and ``history.json`` (the callbacks that write those see the full logs,
which nothing here changes).
"""

from __future__ import annotations

import sys
import time
import typing
from collections.abc import Callable, Mapping

from tf_langdml._keras import keras

LOSS_KEYS = ("loss", "dml_loss", "language_loss")
RECALL_KEY = "val_recall@1"  # what RetrievalEvaluation puts into the logs of an epoch it evaluated


def shown_keys(language: bool) -> tuple[str, ...]:
    """The log keys the console shows: the loss terms (language matching only with guidance) and recall@1."""
    return tuple(key for key in LOSS_KEYS if language or key != "language_loss") + (RECALL_KEY,)


def step_time(seconds: float) -> str:
    """``85 ms/step`` below a second, else ``2.31 s/step``."""
    return f"{seconds * 1000:.0f} ms/step" if seconds < 1 else f"{seconds:.2f} s/step"


def epoch_line(epoch: int, epochs: int, logs: Mapping[str, float], step_seconds: float, language: bool) -> str:
    """``epoch 2/10: loss 1.2345 (dml 1.1000, language 0.1245), 85 ms/step, recall@1 0.5625`` (1-based ``epoch``).

    ``language``: guidance is on (the language matching term is shown); recall@1 only
    when ``logs`` holds it (the epoch evaluated).
    """
    terms = f"dml {float(logs['dml_loss']):.4f}"
    if language:
        terms += f", language {float(logs['language_loss']):.4f}"
    line = f"epoch {epoch}/{epochs}: loss {float(logs['loss']):.4f} ({terms}), {step_time(step_seconds)}"
    if RECALL_KEY in logs:
        line += f", recall@1 {float(logs[RECALL_KEY]):.4f}"
    return line


class EpochLines(keras.callbacks.Callback):
    """One :func:`epoch_line` per epoch on ``stream`` (stderr when None), prefixed ``tf_langdml:``.

    The step time is the epoch's training time (its start to its last batch's end, so
    the evaluation at its end is not in it) over its steps. List it after the
    evaluation callback, whose recall@1 it reads from the epoch's logs.
    """

    def __init__(
        self,
        epochs: int,
        language: bool,
        stream: typing.TextIO | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__()
        self.epochs, self.language, self.stream, self.clock = int(epochs), bool(language), stream, clock
        self._started = self._last = None
        self._steps = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = self._last = self.clock()
        self._steps = 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._last = self.clock()
        self._steps = batch + 1  # the batch index within this epoch (the last of an execution of several steps)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not logs or not self._steps:
            return
        seconds = (self._last - self._started) / self._steps
        print(
            f"tf_langdml: {epoch_line(epoch + 1, self.epochs, logs, seconds, self.language)}",
            file=self.stream or sys.stderr,
            flush=True,
        )


class LossProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar (``fit(verbose=1)``) showing only :func:`shown_keys` of the logs.

    Passed among ``fit``'s callbacks, it takes the place of the bar Keras would add
    (which would show every diagnostic); list it after the evaluation callback.
    """

    def __init__(self, language: bool) -> None:
        super().__init__(count_mode="steps")
        self.keys = shown_keys(language)

    def _shown(self, logs):
        return None if logs is None else {key: value for key, value in logs.items() if key in self.keys}

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        super().on_train_batch_end(batch, self._shown(logs))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_end(epoch, self._shown(logs))


def fit_console(
    verbose: int, epochs: int, language: bool, terminal: bool | None = None
) -> tuple[int, list[keras.callbacks.Callback]]:
    """``(fit verbose, callbacks to append)``: quiet; a terminal (stdout a TTY): Keras' bar; else :class:`EpochLines`.

    ``terminal`` None asks ``sys.stdout.isatty()``.
    """
    if not verbose:
        return 0, []
    if sys.stdout.isatty() if terminal is None else terminal:
        return 1, [LossProgbar(language)]
    return 0, [EpochLines(epochs, language)]
