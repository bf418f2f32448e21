"""Optimizers for a DML loss's own variables: one per learning-rate group (docs/dml_losses.md).

β, proxies, class vectors and S2SD's heads train at their own learning rates. Each
:class:`~tf_langdml.losses.base.LearningRateGroup` gets a fresh optimizer of the model
optimizer's type and settings at the group's rate; the model's optimizer trains every
other variable. A model holds the groups as ``[(optimizer, frozenset of variable refs)]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from tf_langdml._keras import keras
from tf_langdml.errors import ArgumentError
from tf_langdml.losses.base import LearningRateGroup, collect_learning_rate_groups
from tf_langdml.models.learning_rates import backbone_variables, base_learning_rate, head_variables, rate_like

LossGroups = list[tuple[keras.optimizers.Optimizer, frozenset]]


@keras.utils.register_keras_serializable(package="tf_langdml")
class ScaledLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """A learning-rate schedule times a constant (a learning-rate group's multiplier on a scheduled base rate).

    Args:
        schedule: the base learning-rate schedule.
        multiplier: the group's factor on it.
        offset: steps added to the optimizer's step before ``schedule`` reads it (the backbone's
            optimizer, which starts after a warmup of ``offset`` steps, follows the base step).
    """

    def __init__(
        self, schedule: keras.optimizers.schedules.LearningRateSchedule, multiplier: float, offset: int = 0
    ) -> None:
        self.schedule = schedule
        self.multiplier = float(multiplier)
        self.offset = int(offset)

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        return self.schedule(step + self.offset if self.offset else step) * self.multiplier

    def get_config(self) -> dict[str, Any]:
        config = {"schedule": keras.optimizers.schedules.serialize(self.schedule), "multiplier": self.multiplier}
        return {**config, "offset": self.offset} if self.offset else config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ScaledLearningRate:
        return cls(
            keras.optimizers.schedules.deserialize(config["schedule"]), config["multiplier"], config.get("offset", 0)
        )


def group_optimizer(
    optimizer: keras.optimizers.Optimizer, group: LearningRateGroup, index: int, kind: str = "loss_group"
) -> keras.optimizers.Optimizer:
    """A fresh optimizer of ``optimizer``'s type and settings at ``group``'s learning rate.

    A separate instance, not a gradient multiplier: Adam divides by the gradient's own
    scale, so scaling a gradient would not change its step.

    Args:
        optimizer: the model's optimizer (a LossScaleOptimizer's inner optimizer is copied).
        group: the variables and their learning rate (absolute, or a multiplier on the base rate);
            an absolute rate follows a :class:`~tf_langdml.models.learning_rates.StepDecay` base rate.
        index: the group's position, for the optimizer's name (``<name>_<kind>_<index>``).
        kind: ``"loss_group"`` or ``"head"``.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's optimizer
    config = inner.get_config()
    base = base_learning_rate(optimizer)
    if group.learning_rate is not None:
        rate = rate_like(base, group.learning_rate)
    elif isinstance(base, keras.optimizers.schedules.LearningRateSchedule):
        rate = ScaledLearningRate(base, group.multiplier)
    else:
        rate = float(keras.backend.get_value(base)) * group.multiplier
    config["learning_rate"] = rate
    config["name"] = f"{config.get('name', 'optimizer')}_{kind}_{index}"
    return type(inner).from_config(config)


def loss_groups(optimizer: keras.optimizers.Optimizer, loss: Any) -> LossGroups:
    """``[(optimizer, frozenset of variable refs)]``: one new optimizer per learning-rate group of ``loss``.

    Call it under the model's distribution strategy (the optimizers' variables belong there);
    a loss without groups (a TF-Similarity loss) gets none.
    """
    groups = collect_learning_rate_groups(loss)
    return [
        (group_optimizer(optimizer, group, index), frozenset(variable.ref() for variable in group.variables))
        for index, group in enumerate(groups)
    ]


def head_group(optimizer: keras.optimizers.Optimizer, embedder: keras.Model, rate: float) -> LossGroups:
    """``[(optimizer, refs)]`` of the embedder's head (:func:`~tf_langdml.models.learning_rates.head_variables`)
    at the absolute ``rate`` (decayed as the base rate is); call it under the model's distribution strategy."""
    variables = head_variables(embedder)
    group = LearningRateGroup(variables=tuple(variables), learning_rate=rate)
    return [(group_optimizer(optimizer, group, 0, kind="head"), frozenset(variable.ref() for variable in variables))]


def backbone_group(
    optimizer: keras.optimizers.Optimizer,
    embedder: keras.Model,
    warmup_steps: int,
    groups: LossGroups,
    trainable: Sequence[tf.Variable],
) -> LossGroups:
    """``[(optimizer, refs)]`` of the embedder's backbone (:func:`~tf_langdml.models.learning_rates.backbone_variables`)
    at the base rate, for a warmup of ``warmup_steps``: not applied during it, so its step count (Adam's
    bias correction) starts after it; a scheduled base rate is read at its step + ``warmup_steps`` (the
    model optimizer's step). Call it under the model's distribution strategy.

    Raises:
        tf_langdml.errors.ArgumentError: about ``warmup_steps`` under loss scaling when ``groups`` and
            the backbone leave none of the model's ``trainable`` variables to ``optimizer`` (its loss
            scale is updated only by a step of its own).
    """
    variables = backbone_variables(embedder)
    grouped = set().union(*(refs for _, refs in groups), (variable.ref() for variable in variables))
    rest = [variable for variable in trainable if variable.trainable and variable.ref() not in grouped]
    if isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer) and not rest:
        raise ArgumentError(
            f"warmup_steps={warmup_steps} under loss scaling (mixed_float16) leaves the model's optimizer no variable "
            "to scale the loss for (the head has its own rate): drop head_learning_rate, or the warmup, or train in "
            "mixed_bfloat16 or float32.",
            argument="warmup_steps",
        )
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's optimizer
    config = inner.get_config()
    base = base_learning_rate(optimizer)
    if isinstance(base, keras.optimizers.schedules.LearningRateSchedule):
        config["learning_rate"] = ScaledLearningRate(base, 1.0, offset=warmup_steps)
    else:
        config["learning_rate"] = float(keras.backend.get_value(base))
    config["name"] = f"{config.get('name', 'optimizer')}_backbone_0"
    return [(type(inner).from_config(config), frozenset(variable.ref() for variable in variables))]


@tf.autograph.experimental.do_not_convert
def variables_outside(variables: Sequence[tf.Variable], refs: frozenset) -> list:
    """The ``variables`` that are not in ``refs`` (a group left out of a step: no gradient is taken for it)."""
    return [variable for variable in variables if variable.ref() not in refs]


def build_all_optimizers(
    optimizer: keras.optimizers.Optimizer, groups: LossGroups, variables: Sequence[tf.Variable]
) -> None:
    """Create the slots of ``optimizer`` (for the ungrouped ``variables``) and of every group's optimizer."""
    grouped = set().union(*(refs for _, refs in groups)) if groups else set()
    optimizer.build([variable for variable in variables if variable.ref() not in grouped])
    for own_optimizer, refs in groups:
        own_optimizer.build([variable for variable in variables if variable.ref() in refs])


def apply_grouped_gradients(
    optimizer: keras.optimizers.Optimizer, groups: LossGroups, pairs: Sequence[tuple[tf.Tensor, tf.Variable]]
) -> None:
    """Apply (gradient, variable) pairs: the groups' variables to their optimizers, the rest to ``optimizer``.

    Under loss scaling the model's LossScaleOptimizer skips a step whose unscaled
    gradients overflowed; the groups' optimizers then get zero gradients instead of
    NaN or Inf, so the loss's variables stay finite (their Adam moments decay one step).
    """
    if not groups:
        optimizer.apply_gradients(pairs)
        return
    rest = [pair for pair in pairs if not any(pair[1].ref() in refs for _, refs in groups)]
    if rest:
        optimizer.apply_gradients(rest)
    else:  # every variable has its own optimizer (a warmup's backbone, the head): the step still counts
        optimizer.apply_gradients([])  # no update, but a scheduled rate is evaluated at this step (Keras)
        optimizer.iterations.assign_add(1)
    if isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer):
        finite = tf.reduce_all(
            [tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(gradient))) for gradient, _ in pairs]
        )
        pairs = [(tf.where(finite, tf.convert_to_tensor(gradient), 0.0), variable) for gradient, variable in pairs]
    for own_optimizer, refs in groups:
        grouped = [pair for pair in pairs if pair[1].ref() in refs]
        if grouped:
            own_optimizer.apply_gradients(grouped)
