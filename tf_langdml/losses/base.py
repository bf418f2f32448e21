"""What a DML loss with its own state looks like to the model: :class:`BatchLoss`.

TensorFlow-Similarity's losses are stateless ``keras.losses.Loss`` objects. The losses
of :mod:`~tf_langdml.losses.tuple_losses`, :mod:`~tf_langdml.losses.proxy_losses` and
:mod:`~tf_langdml.losses.s2sd` are Keras *layers* instead, so that whatever they learn
(proxies, class weights, the margin loss's β, S2SD's heads) is a variable owned by the
model that compiles them:

- ``LanguageGuidedModel.compile`` calls :meth:`BatchLoss.setup` with the number of
  training classes, the embedding size and (S2SD) the pooled-feature size; the
  variables are created there, under the model's distribution strategy;
- the loss becomes a tracked sub-layer of the model: its variables are in
  ``model.trainable_variables`` (so ``train_step`` differentiates them), in the resume
  checkpoints (``tf.train.Checkpoint(model=...)``), and never in the exported embedder
  (the export holds ``model.embedder`` only);
- :meth:`BatchLoss.learning_rate_groups` names the variables that train at another
  learning rate than the network (the paper's code: β at 5e-4, proxies at 2000× the
  base rate); the model gives each such group its own optimizer instance, because a
  multiplier on the *gradient* does nothing under Adam (scale invariant);
- the loss's variables get no weight decay (proxies, class vectors, β, S2SD's heads), as
  in the paper's PyTorch code, where only the network's parameter group has
  ``weight_decay``.

``loss(labels, embeddings, features=None, step=0)`` returns the batch loss (a float32
scalar). ``step`` is the optimizer step: the batch miners draw from a stateless random
stream seeded by ``(seed, step)``, so a step's triplets are the same after a resume and
on every replica.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import sys
from typing import Any

import tensorflow as tf

from tf_langdml._keras import keras
from tf_langdml.errors import ArgumentError


@dataclasses.dataclass(frozen=True)
class LearningRateGroup:
    """Variables trained at ``learning_rate`` (absolute) or, if that is None, at ``multiplier`` × the base rate."""

    variables: tuple
    learning_rate: float | None = None
    multiplier: float = 1.0

    def rate(self, base: float) -> float:
        """This group's learning rate for a base learning rate ``base`` (a float)."""
        return float(self.learning_rate) if self.learning_rate is not None else float(base) * self.multiplier


def check_positive(name: str, value: Any, allow_zero: bool = False) -> float:
    """``value`` as a float; an :class:`~tf_langdml.errors.ArgumentError` about ``name`` unless finite and > 0
    (>= 0 with ``allow_zero``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ArgumentError(f"{name} must be a finite number {bound}, got {value!r}.", argument=name)
    return number


class BatchLoss(keras.layers.Layer):
    """Base class of the DML losses that are layers (see the module docstring).

    Subclasses set ``needs_classes`` (their variables depend on the number of training
    classes) and ``needs_features`` (they read the backbone's pooled features), create
    their variables in :meth:`setup` and compute the loss in :meth:`loss_value`.
    """

    needs_classes = False
    needs_features = False

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name, dtype="float32")
        self.num_classes = None
        self.embed_dim = None

    def setup(self, num_classes: int | None, embed_dim: int, feature_dim: int | None = None) -> None:
        """Create the loss's variables for ``num_classes`` training classes and ``embed_dim``-sized embeddings."""
        if self.embed_dim is not None:
            raise ValueError(
                f"DML loss {self.name!r} is already set up (its variables belong to one model); build a new one "
                f"for another model or compile: build_dml_loss(name, **arguments), or pass the name / dict to compile."
            )
        if self.needs_classes:
            if num_classes is None or int(num_classes) < 2:
                raise ValueError(
                    f"DML loss {self.name!r} learns one vector per training class and needs num_classes >= 2 "
                    f"(the number of training classes); got {num_classes!r}. Pass num_classes=... to compile()."
                )
            num_classes = int(num_classes)
        self.num_classes = num_classes
        self.embed_dim = int(embed_dim)
        self.create_variables()
        self.built = True

    def create_variables(self) -> None:
        """Create the variables (called once by :meth:`setup`); the default has none."""

    def learning_rate_groups(self) -> list[LearningRateGroup]:
        """The variables that train at their own learning rate (default: none)."""
        return []

    def pool_features(self, feature_maps: tf.Tensor) -> tf.Tensor:
        """(B, F) pooled features from (B, h, w, F) maps; only for losses with ``needs_features``."""
        raise NotImplementedError(f"{type(self).__name__} does not read backbone features.")

    def loss_value(
        self, labels: tf.Tensor, embeddings: tf.Tensor, features: tf.Tensor | None, step: tf.Tensor
    ) -> tf.Tensor:
        """The batch loss (a float32 scalar) of int32 ``labels`` (B,), float32 ``embeddings`` (B, D)."""
        raise NotImplementedError

    def call(
        self, labels: tf.Tensor, embeddings: tf.Tensor, features: tf.Tensor | None = None, step: tf.Tensor | int = 0
    ) -> tf.Tensor:
        if not self.built or self.embed_dim is None:
            raise RuntimeError(
                f"DML loss {self.name!r} has no variables yet: call loss.setup(num_classes, embed_dim) first "
                f"(LanguageGuidedModel.compile does it)."
            )
        labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
        embeddings = tf.cast(embeddings, tf.float32)
        size = embeddings.shape[-1]
        if size is not None and int(size) != self.embed_dim:
            raise ValueError(
                f"DML loss {self.name!r} was set up for {self.embed_dim}-dimensional embeddings, got "
                f"{int(size)}; call loss.setup(num_classes, {int(size)}) (compile does it from the embedder)."
            )
        if features is not None:
            features = tf.cast(features, tf.float32)
        return self.loss_value(labels, embeddings, features, tf.cast(step, tf.int64))

    def get_config(self) -> dict[str, Any]:
        return plain_config(self._arguments)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BatchLoss:
        return cls(**config)


def plain_config(value: Any) -> Any:
    """Keras' tracking wrappers of dicts and lists back to plain dicts and lists (JSON-serialisable configs)."""
    if isinstance(value, collections.abc.Mapping):
        return {key: plain_config(item) for key, item in value.items()}
    if isinstance(value, collections.abc.Sequence) and not isinstance(value, str):
        return [plain_config(item) for item in value]
    return value


def mining_seed(seed: int, step: tf.Tensor | int) -> tf.Tensor:
    """The stateless seed of a step's draws: (seed, step) as an int64 pair."""
    return tf.stack([tf.constant(int(seed), tf.int64), tf.cast(step, tf.int64)])


def euclidean_distances(embeddings: tf.Tensor) -> tf.Tensor:
    """(B, B) Euclidean distances, float32, with a zero (not NaN-gradient) diagonal."""
    squared = tf.reduce_sum(tf.square(embeddings), axis=1)
    products = tf.matmul(embeddings, embeddings, transpose_b=True)
    squared_distances = tf.maximum(squared[:, None] + squared[None, :] - 2.0 * products, 0.0)
    # sqrt has an infinite derivative at 0: take it of max(d², tiny) and zero where d² was ~0.
    tiny = 1e-16
    distances = tf.where(squared_distances > tiny, tf.sqrt(tf.maximum(squared_distances, tiny)), 0.0)
    return tf.linalg.set_diag(distances, tf.zeros_like(squared))  # exactly 0 (float32 rounding leaves ~1e-4)


def pair_distance(embeddings: tf.Tensor, first: tf.Tensor, second: tf.Tensor, squared: bool = False) -> tf.Tensor:
    """‖e[first] − e[second]‖ per row (its square with ``squared``), with a finite gradient at 0."""
    difference = tf.gather(embeddings, first) - tf.gather(embeddings, second)
    squared_distance = tf.reduce_sum(tf.square(difference), axis=1)
    if squared:
        return squared_distance
    return tf.sqrt(tf.maximum(squared_distance, 1e-16))


def dml_loss_value(
    loss: Any,
    labels: tf.Tensor,
    embeddings: tf.Tensor,
    features: tf.Tensor | None = None,
    step: tf.Tensor | int = 0,
    training: bool = True,
) -> tf.Tensor:
    """The batch loss of any DML loss: a :class:`BatchLoss`, or a TF-Similarity loss (mean over the B anchors)."""
    if isinstance(loss, BatchLoss):
        return loss(labels, embeddings, features=features, step=step)
    if not training and _is_cross_batch_memory(loss):
        loss = loss.loss  # cross-batch memory must only remember training batches
    # TF-Similarity's losses branch in Python on tensors; AutoGraph converts them,
    # exactly as keras.losses.Loss.__call__ does, so they also work in a tf.function.
    call = tf.__internal__.autograph.tf_convert(loss.call, tf.__internal__.autograph.control_status_ctx())
    # Labels as (B, 1): TF-Similarity reshapes rank-1 labels under `if tf.rank(...) == 1`,
    # a cond whose branches differ in rank, which XLA (jit_compile) cannot compile.
    return tf.reduce_mean(call(tf.reshape(labels, [-1, 1]), tf.cast(embeddings, tf.float32)))


def collect_learning_rate_groups(loss: Any) -> list[LearningRateGroup]:
    """The learning-rate groups of a loss (none for a TF-Similarity loss)."""
    return loss.learning_rate_groups() if isinstance(loss, BatchLoss) else []


def _is_cross_batch_memory(loss: Any) -> bool:
    # Without importing TF-Similarity (seconds of start-up): a loss can only be its XBM once it is loaded.
    xbm = getattr(sys.modules.get("tensorflow_similarity.losses"), "XBM", None)
    return xbm is not None and isinstance(loss, xbm)


def serialize_dml_loss(loss: Any) -> dict[str, Any]:
    """A built DML loss as a JSON-serialisable Keras config (``keras.utils.serialize_keras_object``).

    TF-Similarity's losses serialise their distance as an object config that their own
    ``from_config`` refuses ("Unknown distance"); it is kept as the distance's name, which they accept.
    """
    config = plain_config(keras.utils.serialize_keras_object(loss))
    inner = config.get("config", {})
    distance = inner.get("distance")
    if isinstance(distance, dict) and "name" in distance.get("config", {}):
        inner["distance"] = distance["config"]["name"]
    return config


def deserialize_dml_loss(config: dict[str, Any]) -> Any:
    """The DML loss of a :func:`serialize_dml_loss` config (its class registered with Keras)."""
    return keras.utils.deserialize_keras_object(config)
