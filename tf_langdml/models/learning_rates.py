"""The paper code's training knobs: step decay of the learning rate, the head's own rate, the backbone warmup.

- :class:`StepDecay` (the code's ``--tau`` / ``--gamma``): the rate times ``factor`` at each
  boundary step, a function of the optimizer step only, so a restored step restores the rate.
- :func:`rate_like`: an absolute rate (the head's, a loss group's) that follows the base
  rate's decay.
- :func:`head_variables` / :func:`backbone_variables`: the embedder's projection head (the
  layers after its global pooling: the code's ``--fc_lr`` group) and the rest (what a
  warmup freezes, the code's ``--warmup``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from tf_langdml._keras import keras
from tf_langdml.errors import ArgumentError
from tf_langdml.models.embedder import POOL_LAYERS

POOLING_LAYERS = (*POOL_LAYERS, "avg_plus_max_pool")


@keras.utils.register_keras_serializable(package="tf_langdml")
class StepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``initial_learning_rate * factor ** k`` at optimizer step ``step``, ``k`` = the boundaries <= ``step``.

    Each rate is computed once in float64 and rounded to float32 (a decayed rate is not the
    product of rounded rates).

    Args:
        initial_learning_rate: the rate before the first boundary.
        boundaries: increasing optimizer steps at which the rate is multiplied by ``factor``.
        factor: the decay factor (> 0).
    """

    def __init__(self, initial_learning_rate: float, boundaries: Sequence[int], factor: float) -> None:
        self.initial_learning_rate = float(initial_learning_rate)
        self.boundaries = [int(boundary) for boundary in boundaries]
        self.factor = float(factor)

    def rates(self) -> list[float]:
        """The rate before the first boundary, then after each one (Python floats)."""
        return [self.initial_learning_rate * self.factor**k for k in range(len(self.boundaries) + 1)]

    @tf.autograph.experimental.do_not_convert
    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        rates = tf.constant(self.rates(), tf.float32)
        if not self.boundaries:
            return rates[0]
        passed = tf.cast(tf.cast(step, tf.int64) >= tf.constant(self.boundaries, tf.int64), tf.int32)
        return tf.gather(rates, tf.reduce_sum(passed))

    def with_initial_rate(self, rate: float) -> StepDecay:
        """The same decay starting at ``rate`` (a head's or a loss group's absolute rate)."""
        return StepDecay(rate, self.boundaries, self.factor)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "boundaries": self.boundaries,
            "factor": self.factor,
        }


def step_decay(
    learning_rate: float, decay_epochs: Sequence[int], decay_factor: float, steps_per_epoch: int
) -> StepDecay:
    """The :class:`StepDecay` that multiplies ``learning_rate`` by ``decay_factor`` at each of ``decay_epochs``.

    An epoch ``e`` is the optimizer step ``e * steps_per_epoch``: the first step after ``e``
    whole epochs (PyTorch's ``MultiStepLR(milestones=decay_epochs, gamma=decay_factor)``
    stepped once an epoch).

    Raises:
        tf_langdml.errors.ArgumentError: about ``decay_epochs`` (empty, not positive whole
            numbers, not increasing), ``decay_factor`` (not finite and > 0) or ``steps_per_epoch``.
    """
    epochs = list(decay_epochs)
    if not epochs or any(isinstance(e, bool) or int(e) != e or e < 1 for e in epochs):
        raise ArgumentError(
            f"decay_epochs must be a list of whole epochs >= 1 (e.g. [30, 55]); got {epochs!r}.",
            argument="decay_epochs",
        )
    if any(later <= earlier for earlier, later in zip(epochs, epochs[1:])):
        raise ArgumentError(
            f"decay_epochs must be strictly increasing (e.g. [30, 55]); got {epochs!r}: sort them, drop repeats.",
            argument="decay_epochs",
        )
    factor = float(decay_factor)
    if not math.isfinite(factor) or factor <= 0:
        raise ArgumentError(
            f"decay_factor must be a finite number > 0 (e.g. 0.3; below 1 decays); got {decay_factor!r}.",
            argument="decay_factor",
        )
    if int(steps_per_epoch) != steps_per_epoch or steps_per_epoch < 1:
        raise ArgumentError(
            f"steps_per_epoch must be a whole number >= 1; got {steps_per_epoch!r}.", argument="steps_per_epoch"
        )
    return StepDecay(learning_rate, [int(e) * int(steps_per_epoch) for e in epochs], factor)


def rate_like(base: Any, rate: float) -> float | StepDecay:
    """An absolute ``rate`` that decays as ``base`` does when ``base`` is a :class:`StepDecay`, else ``rate``."""
    return base.with_initial_rate(rate) if isinstance(base, StepDecay) else float(rate)


def base_learning_rate(optimizer: keras.optimizers.Optimizer) -> Any:
    """The optimizer's rate as given: a schedule, or a variable / float (a LossScaleOptimizer's inner one)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    base = getattr(inner, "_learning_rate", None)
    return inner.learning_rate if base is None else base


def head_variables(embedder: keras.Model) -> list[tf.Variable]:
    """The trainable variables of ``embedder``'s layers after its global pooling (the projection head)."""
    names = [layer.name for layer in embedder.layers]
    pools = [index for index, name in enumerate(names) if name in POOLING_LAYERS]
    if not pools:
        raise ArgumentError(
            f"The embedder {embedder.name!r} has no global pooling layer ({', '.join(POOLING_LAYERS)}), so its "
            "head is unknown; build it with tf_langdml.models.build_embedder.",
            argument="embedder",
        )
    return [variable for layer in embedder.layers[max(pools) + 1 :] for variable in layer.trainable_variables]


def backbone_variables(embedder: keras.Model) -> list[tf.Variable]:
    """The embedder's trainable variables that are not its head's (what a warmup freezes)."""
    head = {variable.ref() for variable in head_variables(embedder)}
    return [variable for variable in embedder.trainable_variables if variable.ref() not in head]


def check_head_learning_rate(head_learning_rate: float | None) -> float | None:
    """None, or ``head_learning_rate`` as a float; refused unless finite and > 0."""
    if head_learning_rate is None:
        return None
    rate = float(head_learning_rate)
    if not math.isfinite(rate) or rate <= 0:
        raise ArgumentError(
            f"head_learning_rate must be a finite number > 0 or None (the base rate); got {head_learning_rate!r}.",
            argument="head_learning_rate",
        )
    return rate


def check_warmup_steps(warmup_steps: int) -> int:
    """``warmup_steps`` as an int; refused unless a whole number >= 0."""
    if isinstance(warmup_steps, bool) or int(warmup_steps) != warmup_steps or warmup_steps < 0:
        raise ArgumentError(
            f"warmup_steps must be a whole number of optimizer steps >= 0 (0: no warmup); got {warmup_steps!r}.",
            argument="warmup_steps",
        )
    return int(warmup_steps)
