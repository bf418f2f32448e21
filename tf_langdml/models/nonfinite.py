"""The non-finite step guard: a NaN or Inf loss or gradient stops training with NonFiniteLossError.

The training step (:meth:`LanguageGuidedModel.train_step
<tf_langdml.models.LanguageGuidedModel.train_step>`) asks one question before its update,
:func:`finiteness_check`, and stops in one of three ways: eagerly it raises at once; in a
tf.function :func:`assert_finite` fails the step with an ``InvalidArgumentError`` whose
message carries :data:`NONFINITE_MARKER` and the report; under XLA on one replica (XLA
ignores Assert) :func:`apply_unless_nonfinite` skips the update and keeps the report in a
sticky record variable. :func:`guard_train_function` turns the last two into
:class:`NonFiniteLossError` after each call of Keras' train function, and
:func:`nonfinite_error` writes its message. A report is
``[step, loss, dml_loss, language_loss, gradients_finite]`` (float64; gradients_finite -1:
not checked).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tf_langdml._keras import keras
from tf_langdml.models.untracked import Untracked

# Starts the message of the in-graph check that stops a non-finite step (see assert_finite).
NONFINITE_MARKER = "tf_langdml-nonfinite"

# The record's value while no step has failed (step -1); a failed step overwrites it with its report.
_CLEAR_RECORD = [-1.0, 0.0, 0.0, 0.0, 1.0]

Report = Sequence[float] | np.ndarray


class NonFiniteLossError(FloatingPointError):
    """A training step's loss or gradients were NaN or Inf; its update was not applied.

    Attributes:
        step: the optimizer step of the failed update, 0-based: ``optimizer.iterations``
            before it (so also the number of updates applied before it).
        values: ``{"loss", "dml_loss", "language_loss": float, "gradients_finite": bool or
            None}`` of the failed step (None: not checked, as under loss scaling); may be
            empty when the error comes from a guard on written files.
        learning_rate: the optimizer's learning rate when it failed (or None).
    """

    def __init__(
        self,
        message: str,
        step: int | None = None,
        values: dict[str, Any] | None = None,
        learning_rate: float | None = None,
    ) -> None:
        super().__init__(message)
        self.step, self.values, self.learning_rate = step, dict(values or {}), learning_rate


def nonfinite_variables(variables: Sequence[tf.Variable]) -> list[str]:
    """Names of the floating-point variables holding NaN or Inf (eager; one reduction per variable)."""
    floats = [variable for variable in variables if variable.dtype.is_floating]
    if not floats:
        return []
    flags = tf.stack([tf.reduce_all(tf.math.is_finite(variable)) for variable in floats]).numpy()
    return [variable.name for variable, finite in zip(floats, flags) if not finite]


def forward_state(variables: Sequence[tf.Variable]) -> list[tuple[tf.Variable, tf.Tensor]]:
    """(variable, value) of the state variables a forward pass may move.

    Those are the ON_READ ones, as Keras creates BatchNorm moving statistics (and metric
    accumulators): replicas assign them locally, so they can be put back inside a replica,
    and frozen weights (ON_READ is not theirs) are never copied or written back.
    """
    return [
        (variable, tf.identity(variable))
        for variable in variables
        if variable.dtype.is_floating
        and getattr(variable, "synchronization", None) == tf.VariableSynchronization.ON_READ
    ]


def restore_forward_state(saved: Sequence[tuple[tf.Variable, tf.Tensor]]) -> tf.Tensor:
    """Put back the values :func:`forward_state` saved; returns False (a ``tf.cond`` branch's value)."""
    for variable, value in saved:
        variable.assign(value)
    return tf.constant(False)


def finiteness_check(
    step: tf.Tensor,
    total: tf.Tensor,
    dml: tf.Tensor,
    language: tf.Tensor,
    gradients: Sequence[tf.Tensor | None] | None,
    replicas: int,
) -> tuple[tf.Tensor, tf.Tensor]:
    """(finite, report): one flag for the losses and gradients, and [step, loss, dml, language, gradients_finite].

    gradients=None skips the gradient check (loss scaling); report[4] is then -1.
    """
    losses_finite = tf.reduce_all(
        tf.math.is_finite(tf.stack([tf.cast(value, tf.float32) for value in (total, dml, language)]))
    )
    if gradients is None:
        gradients_finite = tf.constant(True)
    else:
        flags = [
            tf.reduce_all(tf.math.is_finite(getattr(gradient, "values", gradient)))
            for gradient in gradients
            if gradient is not None
        ]
        gradients_finite = tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)
    if replicas > 1:  # all replicas must agree: sum their failures
        failures = tf.cast(tf.logical_not(tf.stack([losses_finite, gradients_finite])), tf.float32)
        failures = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, failures)
        losses_finite, gradients_finite = failures[0] == 0, failures[1] == 0
    gradient_flag = tf.constant(-1.0, tf.float64) if gradients is None else tf.cast(gradients_finite, tf.float64)
    report = tf.stack(
        [tf.cast(step, tf.float64)] + [tf.cast(value, tf.float64) for value in (total, dml, language)] + [gradient_flag]
    )
    return tf.logical_and(losses_finite, gradients_finite), report


def assert_finite(finite: tf.Tensor, report: tf.Tensor, saved: Sequence[tuple[tf.Variable, tf.Tensor]]) -> tf.Operation:
    """In a tf.function: the check an update must depend on; a non-finite step restores ``saved``, then fails.

    Its ``InvalidArgumentError`` names :data:`NONFINITE_MARKER` and the report, which
    :func:`parse_report` reads back.
    """
    restored = tf.cond(finite, lambda: tf.constant(True), lambda: restore_forward_state(saved))
    with tf.control_dependencies([restored]):
        return tf.debugging.Assert(finite, [NONFINITE_MARKER, report], summarize=8)


def apply_unless_nonfinite(
    finite: tf.Tensor,
    report: tf.Tensor,
    saved: Sequence[tuple[tf.Variable, tf.Tensor]],
    record: tf.Variable,
    update: Callable[[], None],
) -> None:
    """Under XLA (which ignores Assert): run ``update`` only if the step is finite and no earlier one failed.

    A failed step restores ``saved`` and writes its report into ``record``, which stays
    set (so the later steps of one ``steps_per_execution`` call are skipped too) until
    :func:`guard_train_function` reads and clears it.
    """
    proceed = tf.logical_and(finite, record[0] < 0)  # sticky over steps_per_execution

    def applied():
        update()
        return tf.constant(True)

    def skipped():
        restore_forward_state(saved)
        record.assign(tf.where(record[0] < 0, report, record))  # keep the first failure
        return tf.constant(False)

    tf.cond(proceed, applied, skipped)


def create_record() -> tf.Variable:
    """A fresh record variable for :func:`apply_unless_nonfinite` (created outside any tf.function)."""
    with tf.init_scope():
        return tf.Variable(_CLEAR_RECORD, dtype=tf.float64, trainable=False, name="nonfinite_record")


def parse_report(message: str) -> list[float] | None:
    """The report of :func:`finiteness_check` from the message of :func:`assert_finite`'s error, or None."""
    match = re.search(re.escape(NONFINITE_MARKER) + r"\]\s*\[([^\]]*)\]", message)
    if not match:
        return None
    try:
        values = [float(value) for value in match.group(1).split()]
    except ValueError:
        return None
    return values if len(values) == 5 else None


def guard_train_function(
    function: Callable[[Any], Any],
    record: Untracked,
    read_record: Callable[[], bool],
    error_for: Callable[[Report], NonFiniteLossError],
) -> Callable[[Any], Any]:
    """Keras' train ``function``, raising ``error_for(report)`` after a non-finite step.

    Args:
        function: what ``keras.Model.make_train_function`` returned.
        record: holds the record variable of :func:`apply_unless_nonfinite` (``record.value``,
            read at each call: it may be created after this function).
        read_record: whether the record is in use now (the model is XLA-compiled).
        error_for: the error of a report (the model's ``nonfinite_error``).
    """

    def train_function(iterator):
        try:
            logs = function(iterator)
        except tf.errors.InvalidArgumentError as error:
            report = parse_report(str(error))
            if report is None:
                raise
            raise error_for(report) from None
        variable = record.value
        if variable is not None and read_record():
            values = variable.numpy()
            if values[0] >= 0:
                variable.assign(_CLEAR_RECORD)
                raise error_for(values)
        return logs

    return train_function


def nonfinite_error(
    report: Report, optimizer: keras.optimizers.Optimizer, variables: Sequence[tf.Variable]
) -> NonFiniteLossError:
    """The :class:`NonFiniteLossError` of ``report``, naming ``optimizer``'s learning rate and any broken variable.

    Args:
        report: [step, loss, dml_loss, language_loss, gradients_finite] of the failed step.
        optimizer: the model's optimizer (for its current learning rate).
        variables: the model's trainable variables (to say whether they were already NaN or Inf).
    """
    step, total, dml, language, gradients_finite = (float(value) for value in report)
    step = int(step)
    values = {
        "loss": total,
        "dml_loss": dml,
        "language_loss": language,
        "gradients_finite": None if gradients_finite < 0 else bool(gradients_finite),
    }
    bad = [name for name in ("loss", "dml_loss", "language_loss") if not math.isfinite(values[name])]
    if values["gradients_finite"] is False:
        bad.append("gradients")
    gradients = {None: "not checked (the loss scale optimizer skips such steps)", True: "finite", False: "NaN/Inf"}[
        values["gradients_finite"]
    ]
    learning_rate = _learning_rate(optimizer)
    broken = nonfinite_variables(variables)
    if broken:
        state = (
            f"The update was not applied, but the weights were already NaN or Inf before it "
            f"({', '.join(broken[:3])}{' ...' if len(broken) > 3 else ''}): an earlier update overflowed them."
        )
    else:
        state = "The update was not applied: the weights and optimizer state are those after the last finite step."
    rate = f"{learning_rate:g}" if learning_rate is not None else "unknown"
    message = (
        f"Non-finite training step at optimizer step {step} (0-based optimizer.iterations; the "
        f"{_ordinal(step + 1)} update): {', '.join(bad) or 'the loss'} "
        f"{'is' if len(bad) == 1 else 'are'} NaN or Inf (loss={total:g}, dml_loss={dml:g}, "
        f"language_loss={language:g}, gradients {gradients}). {state} Likely causes: the learning rate "
        f"is too high (current learning rate {rate}); mixed precision (float16 layers) without loss "
        f"scaling (use a keras.mixed_precision.LossScaleOptimizer, which compile() adds under the "
        f"mixed_float16 policy); a broken language table (NaN or all-zero rows); bad input images "
        f"(NaN or Inf pixels, a failed decode)."
    )
    return NonFiniteLossError(message, step=step, values=values, learning_rate=learning_rate)


def _learning_rate(optimizer):
    """The optimizer's current learning rate as a float, or None."""
    try:
        value = optimizer.learning_rate
        if isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
            value = value(optimizer.iterations)
        return float(keras.backend.get_value(value))
    except Exception:  # noqa: BLE001  (only for the message)
        return None


def _ordinal(number):
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"
