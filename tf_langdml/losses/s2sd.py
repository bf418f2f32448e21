"""S2SD: simultaneous similarity-based self-distillation (Roth, Milbich, Ommer, Cohen, Ghassemi, ICML 2021).

Extra *target* heads that exist only for training map the backbone's pooled features
f (B × F) to higher-dimensional embeddings; each is trained with the target DML loss,
and the base embedding e's similarity matrix learns from theirs:

    h_i(f) = normalise(Dense(t_i)(relu(Dense(t_i)(f)))),   t = (1024, 1536, 2048) by default
    KLd(A, B) = (T² / B) Σ_i Σ_j softmax(B/T)_ij (log softmax(B/T)_ij − log softmax(A/T)_ij),
                row-wise softmax, B held constant (stop-gradient)
    L = ½ (L_DML(e) + mean_i L_DML(h_i(f))) + w · mean_i KLd(e eᵀ, h_i hᵀ_i)
        + [step ≥ feature_delay] · w_feat · KLd(e eᵀ, f̂ f̂ᵀ),   f̂ = stop_gradient(normalise(f)).

``feature_pooling="avg+max"`` (the paper's ``pool_aggr``: global average pool plus
global max pool) or ``"avg"`` gives f from the backbone's feature maps; the model hands
the feature maps of the same forward pass that made e (no second pass). The language
loss is added on e only, outside this loss. The heads train at the base learning rate
without weight decay (the paper's code gives their parameter group a learning rate only);
the exported embedder holds none of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from tf_langdml._keras import keras
from tf_langdml.errors import ArgumentError
from tf_langdml.losses.base import (
    BatchLoss,
    LearningRateGroup,
    check_positive,
    deserialize_dml_loss,
    dml_loss_value,
    plain_config,
    serialize_dml_loss,
)

FEATURE_POOLINGS = ("avg+max", "avg", "max")


def similarity_distillation(student: tf.Tensor, teacher: tf.Tensor, temperature: float = 1.0) -> tf.Tensor:
    """KLd(A, B) of S2SD for similarity matrices ``student`` = A, ``teacher`` = B (held constant); float32 scalar."""
    temperature = float(temperature)
    teacher = tf.stop_gradient(tf.cast(teacher, tf.float32)) / temperature
    student = tf.cast(student, tf.float32) / temperature
    teacher_log = tf.nn.log_softmax(teacher, axis=1)
    student_log = tf.nn.log_softmax(student, axis=1)
    rows = tf.cast(tf.shape(student)[0], tf.float32)
    return temperature**2 / rows * tf.reduce_sum(tf.exp(teacher_log) * (teacher_log - student_log))


def _gram(x: tf.Tensor) -> tf.Tensor:
    return tf.matmul(x, x, transpose_b=True)


def head_sizes(dims: int | Sequence[int]) -> list[int]:
    """S2SD's head sizes t_i as a list of ints (one size or a list of them); refused unless non-empty and positive."""
    sizes = [int(dim) for dim in (dims if isinstance(dims, (list, tuple)) else [dims])]
    if not sizes or any(size <= 0 for size in sizes):
        raise ArgumentError(
            f"dims must be a non-empty list of positive head sizes (default [1024, 1536, 2048]); got {sizes!r}.",
            argument="dims",
        )
    return sizes


class S2SDLoss(BatchLoss):
    """S2SD around target DML losses that are already built; see the module docstring.

    ``build_dml_loss("s2sd", target=..., target_arguments=...)`` builds the target losses
    by name (one per embedding, each with its own seed) and hands them here, as
    TF-Similarity's ``XBM(loss)`` takes a built loss.

    Args:
        target_losses: one DML loss for the base embedding, then one per head (``len(dims) + 1``
            losses, each a TF-Similarity loss or a :class:`BatchLoss` not yet set up; the paper:
            multi-similarity). A list of their Keras configs is accepted too (:meth:`from_config`).
        dims: the heads' sizes t_i.
        distill_weight: w (the paper's published runs: 0).
        temperature: T.
        feature_weight: w_feat, the weight of the feature distillation (0: off).
        feature_delay: optimizer steps before the feature distillation switches on.
        feature_pooling: how f is pooled from the feature maps (``"avg+max"``: the paper's ``pool_aggr``).
        seed: for the heads' initial weights.
    """

    needs_features = True

    def __init__(
        self,
        target_losses: Sequence[Any],
        dims: int | Sequence[int] = (1024, 1536, 2048),
        distill_weight: float = 0.0,
        temperature: float = 1.0,
        feature_weight: float = 0.0,
        feature_delay: int = 0,
        feature_pooling: str = "avg+max",
        seed: int = 0,
    ) -> None:
        super().__init__(name="s2sd_loss")
        dims = head_sizes(dims)
        target_losses = [deserialize_dml_loss(loss) if isinstance(loss, dict) else loss for loss in target_losses]
        if len(target_losses) != len(dims) + 1:
            raise ArgumentError(
                f"S2SD needs {len(dims) + 1} target losses (one for the embedding, one per head of "
                f"dims={dims}), got {len(target_losses)}; build them with build_dml_loss('s2sd', "
                "target=..., dims=...).",
                argument="target_losses",
            )
        if any(isinstance(loss, S2SDLoss) for loss in target_losses):
            raise ArgumentError(
                "S2SD's target loss cannot be 's2sd' itself; use e.g. target='multisimilarity'.",
                argument="target_losses",
            )
        if feature_pooling not in FEATURE_POOLINGS:
            raise ArgumentError(
                f"Unknown feature_pooling {feature_pooling!r}; expected one of {list(FEATURE_POOLINGS)}.",
                argument="feature_pooling",
            )
        if int(feature_delay) != feature_delay or feature_delay < 0:
            raise ArgumentError(
                f"feature_delay must be a whole number of steps >= 0, got {feature_delay!r}.", argument="feature_delay"
            )
        self.dims = dims
        self.distill_weight = check_positive("distill_weight", distill_weight, allow_zero=True)
        self.temperature = check_positive("temperature", temperature)
        self.feature_weight = check_positive("feature_weight", feature_weight, allow_zero=True)
        self.feature_delay = int(feature_delay)
        self.feature_pooling = feature_pooling
        self.seed = int(seed)
        self.base_loss = target_losses[0]
        self.head_losses = list(target_losses[1:])
        self.heads = [
            keras.Sequential(
                [
                    keras.layers.Dense(
                        dim,
                        activation="relu",
                        dtype="float32",
                        name=f"head_{dim}_hidden",
                        kernel_initializer=keras.initializers.GlorotUniform(seed=self.seed + 2 * index),
                    ),
                    keras.layers.Dense(
                        dim,
                        dtype="float32",
                        name=f"head_{dim}_out",
                        kernel_initializer=keras.initializers.GlorotUniform(seed=self.seed + 2 * index + 1),
                    ),
                ],
                name=f"s2sd_head_{dim}",
            )
            for index, dim in enumerate(dims)
        ]

    def get_config(self) -> dict[str, Any]:
        # The target losses as Keras configs, as LanguageGuidedModel.get_config holds its embedder.
        target_losses = [serialize_dml_loss(loss) for loss in [self.base_loss, *self.head_losses]]
        return plain_config(
            dict(
                target_losses=target_losses,
                dims=list(self.dims),
                distill_weight=self.distill_weight,
                temperature=self.temperature,
                feature_weight=self.feature_weight,
                feature_delay=self.feature_delay,
                feature_pooling=self.feature_pooling,
                seed=self.seed,
            )
        )

    def setup(self, num_classes: int | None, embed_dim: int, feature_dim: int | None = None) -> None:
        if feature_dim is None:
            raise ArgumentError(
                "S2SD needs the backbone's feature size (feature_dim); LanguageGuidedModel.compile passes it.",
                argument="feature_dim",
            )
        self.feature_dim = int(feature_dim)
        super().setup(num_classes, embed_dim, feature_dim)

    def create_variables(self) -> None:
        for head in self.heads:
            head.build((None, self.feature_dim))
        for loss, dim in zip([self.base_loss, *self.head_losses], [self.embed_dim, *self.dims]):
            if isinstance(loss, BatchLoss):
                loss.setup(self.num_classes, dim)

    @property
    def needs_classes(self) -> bool:
        return any(getattr(loss, "needs_classes", False) for loss in [self.base_loss, *self.head_losses])

    def learning_rate_groups(self) -> list[LearningRateGroup]:
        groups = []
        for loss in [self.base_loss, *self.head_losses]:
            if isinstance(loss, BatchLoss):
                groups += loss.learning_rate_groups()
        return groups

    def pool_features(self, feature_maps: tf.Tensor) -> tf.Tensor:
        feature_maps = tf.cast(feature_maps, tf.float32)
        average = tf.reduce_mean(feature_maps, axis=[1, 2])
        if self.feature_pooling == "avg":
            return average
        maximum = tf.reduce_max(feature_maps, axis=[1, 2])
        return maximum if self.feature_pooling == "max" else average + maximum

    def head_embeddings(self, features: tf.Tensor) -> list[tf.Tensor]:
        """The heads' L2-normalised embeddings of pooled features (a list, one (B, t_i) tensor per head)."""
        return [tf.math.l2_normalize(head(features), axis=-1, epsilon=1e-12) for head in self.heads]

    def loss_value(
        self, labels: tf.Tensor, embeddings: tf.Tensor, features: tf.Tensor | None, step: tf.Tensor
    ) -> tf.Tensor:
        if features is None:
            # A ValueError: Keras re-raises an error of Layer.call as type(error)(message), which ArgumentError's
            # required argument would turn into a RuntimeError.
            raise ValueError("S2SD needs the backbone's pooled features: loss(labels, embeddings, features=...).")
        base_similarities = _gram(embeddings)
        targets = self.head_embeddings(features)
        target_dml = tf.add_n(
            [dml_loss_value(loss, labels, target, step=step) for loss, target in zip(self.head_losses, targets)]
        ) / len(targets)
        loss = 0.5 * (dml_loss_value(self.base_loss, labels, embeddings, step=step) + target_dml)
        if self.distill_weight:
            distillation = tf.add_n(
                [similarity_distillation(base_similarities, _gram(target), self.temperature) for target in targets]
            ) / len(targets)
            loss += self.distill_weight * distillation
        if self.feature_weight:
            normalized = tf.stop_gradient(tf.math.l2_normalize(features, axis=-1, epsilon=1e-12))
            gate = tf.cast(step >= self.feature_delay, tf.float32)
            loss += (
                gate
                * self.feature_weight
                * similarity_distillation(base_similarities, _gram(normalized), self.temperature)
            )
        return loss
