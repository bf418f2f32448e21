"""Losses with one learned vector per training class: ProxyAnchor, ProxyNCA, normalised softmax, ArcFace.

x̂ is an L2-normalised embedding with label y, p̂_c the L2-normalised vector of class c
(C training classes), s_ic = x̂_i · p̂_c.

``proxy_anchor`` (Kim et al. 2020)
    L = (1/|P⁺|) Σ_{c∈P⁺} log(1 + Σ_{i: y_i=c} exp(−α (s_ic − δ)))
      + (1/C) Σ_c log(1 + Σ_{i: y_i≠c} exp(α (s_ic + δ))),
    P⁺ the classes present in the batch; α = 32, δ = 0.1.
``proxy_nca`` (Movshovitz-Attias et al. 2017, as the paper's code)
    With both sides scaled to norm 3: D_ic = ‖3x̂_i − 3p̂_c‖²;
    L = mean_i [D_iy + log Σ_{c≠y} exp(−D_ic)].
``normalized_softmax`` (Zhai & Wu 2018)
    L = mean_i cross-entropy(s_i / T, y_i), T = 0.05.
``arcface`` (Deng et al. 2019)
    L = mean_i cross-entropy(s · [cos θ_ic, with cos(θ_iy + m) for the true class], y_i),
    cos θ_ic = s_ic, m = 0.5, s = 16. cos(θ + m) is computed as cos θ cos m − sin θ sin m
    (no arccos, whose derivative is infinite at ±1).

The class vectors are model variables (created at compile from the number of training
classes) and train at their own rate: proxies at ``proxy_lr_multiplier`` × the base
rate (the paper's code: 2000), ArcFace's at ``class_learning_rate`` (5e-4), the
normalised softmax's at the base rate unless ``class_learning_rate`` is set.
"""

from __future__ import annotations

import math

import tensorflow as tf

from tf_langdml._keras import keras
from tf_langdml.losses.base import BatchLoss, LearningRateGroup, check_positive

_NEG = -1e9


def _normalize(x: tf.Tensor) -> tf.Tensor:
    return tf.math.l2_normalize(x, axis=-1, epsilon=1e-12)


class ClassVectorLoss(BatchLoss):
    """Shared part: a (C, d) variable of class vectors and its learning rate."""

    needs_classes = True

    def __init__(
        self,
        name: str,
        learning_rate: float | None = None,
        multiplier: float = 1.0,
        initializer: str = "proxy",
        seed: int = 0,
    ) -> None:
        super().__init__(name=name)
        self.class_learning_rate = (
            None if learning_rate is None else check_positive("class_learning_rate", learning_rate, allow_zero=True)
        )
        self.multiplier = check_positive("proxy_lr_multiplier", multiplier, allow_zero=True)
        self.initializer_kind = initializer
        self.seed = int(seed)

    def create_variables(self) -> None:
        if self.initializer_kind == "proxy":  # the paper's code: randn / 8
            initializer = keras.initializers.RandomNormal(stddev=1.0 / 8.0, seed=self.seed)
        else:  # a Linear layer's default: uniform in ±1/sqrt(d)
            limit = 1.0 / math.sqrt(self.embed_dim)
            initializer = keras.initializers.RandomUniform(-limit, limit, seed=self.seed)
        self.class_vectors = self.add_weight(
            name="class_vectors",
            shape=(self.num_classes, self.embed_dim),
            dtype=tf.float32,
            initializer=initializer,
            trainable=True,
        )

    def learning_rate_groups(self) -> list[LearningRateGroup]:
        return [
            LearningRateGroup((self.class_vectors,), learning_rate=self.class_learning_rate, multiplier=self.multiplier)
        ]

    def similarities(self, labels: tf.Tensor, embeddings: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(B, C) cosine similarities, (B, C) one-hot labels and the labels; a clear error for a label outside [0, C).

        Everything returned depends on the check, so no op can see a bad label before it fails.
        """
        check = tf.debugging.assert_less(
            labels,
            self.num_classes,
            message=f"{self.name}: a label is >= num_classes ({self.num_classes}); the class vectors were created for "
            f"{self.num_classes} training classes (compile(num_classes=...) must be the number of training classes)",
        )
        with tf.control_dependencies([check]):
            labels = tf.identity(labels)
            embeddings = tf.identity(embeddings)
        one_hot = tf.one_hot(labels, self.num_classes, dtype=tf.float32)
        return tf.matmul(_normalize(embeddings), _normalize(self.class_vectors), transpose_b=True), one_hot, labels


class ProxyAnchorLoss(ClassVectorLoss):
    """ProxyAnchor (Kim et al. 2020); see the module docstring."""

    def __init__(
        self, alpha: float = 32.0, delta: float = 0.1, proxy_lr_multiplier: float = 2000.0, seed: int = 0
    ) -> None:
        super().__init__("proxy_anchor_loss", multiplier=proxy_lr_multiplier, seed=seed)
        self.alpha = check_positive("alpha", alpha)
        self.delta = float(delta)
        self._arguments = dict(alpha=self.alpha, delta=self.delta, proxy_lr_multiplier=self.multiplier, seed=self.seed)

    @tf.autograph.experimental.do_not_convert
    def loss_value(
        self, labels: tf.Tensor, embeddings: tf.Tensor, features: tf.Tensor | None, step: tf.Tensor
    ) -> tf.Tensor:
        similarities, positive, labels = self.similarities(labels, embeddings)
        negative = 1.0 - positive

        def log1p_sum_exp(exponents, mask):  # per class: log(1 + Σ_{mask} exp(x)), 0 for an empty set
            exponents = tf.where(mask > 0, exponents, _NEG)
            return tf.nn.softplus(tf.reduce_logsumexp(exponents, axis=0))

        positive_terms = log1p_sum_exp(-self.alpha * (similarities - self.delta), positive)
        negative_terms = log1p_sum_exp(self.alpha * (similarities + self.delta), negative)
        present = tf.reduce_sum(tf.cast(tf.reduce_sum(positive, axis=0) > 0, tf.float32))
        return tf.math.divide_no_nan(tf.reduce_sum(positive_terms), present) + tf.reduce_sum(negative_terms) / float(
            self.num_classes
        )


class ProxyNCALoss(ClassVectorLoss):
    """ProxyNCA as the paper's code (scale 3); see the module docstring."""

    def __init__(self, scale: float = 3.0, proxy_lr_multiplier: float = 2000.0, seed: int = 0) -> None:
        super().__init__("proxy_nca_loss", multiplier=proxy_lr_multiplier, seed=seed)
        self.scale = check_positive("scale", scale)
        self._arguments = dict(scale=self.scale, proxy_lr_multiplier=self.multiplier, seed=self.seed)

    @tf.autograph.experimental.do_not_convert
    def loss_value(
        self, labels: tf.Tensor, embeddings: tf.Tensor, features: tf.Tensor | None, step: tf.Tensor
    ) -> tf.Tensor:
        similarities, positive, labels = self.similarities(labels, embeddings)
        # ‖s x̂ − s p̂‖² = 2 s² (1 − x̂·p̂) for unit vectors
        distances = 2.0 * self.scale**2 * (1.0 - similarities)
        positive_distance = tf.reduce_sum(distances * positive, axis=1)
        negatives = tf.reduce_logsumexp(tf.where(positive > 0, _NEG, -distances), axis=1)
        return tf.reduce_mean(positive_distance + negatives)


class NormalizedSoftmaxLoss(ClassVectorLoss):
    """Normalised softmax with temperature (Zhai & Wu 2018); see the module docstring."""

    def __init__(self, temperature: float = 0.05, class_learning_rate: float | None = None, seed: int = 0) -> None:
        super().__init__("normalized_softmax_loss", learning_rate=class_learning_rate, initializer="uniform", seed=seed)
        self.temperature = check_positive("temperature", temperature)
        self._arguments = dict(
            temperature=self.temperature, class_learning_rate=self.class_learning_rate, seed=self.seed
        )

    @tf.autograph.experimental.do_not_convert
    def loss_value(
        self, labels: tf.Tensor, embeddings: tf.Tensor, features: tf.Tensor | None, step: tf.Tensor
    ) -> tf.Tensor:
        similarities, _, labels = self.similarities(labels, embeddings)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, similarities / self.temperature))


class ArcFaceLoss(ClassVectorLoss):
    """ArcFace (Deng et al. 2019); see the module docstring."""

    def __init__(
        self, angular_margin: float = 0.5, scale: float = 16.0, class_learning_rate: float | None = 5e-4, seed: int = 0
    ) -> None:
        super().__init__("arcface_loss", learning_rate=class_learning_rate, initializer="uniform", seed=seed)
        self.angular_margin = check_positive("angular_margin", angular_margin, allow_zero=True)
        self.scale = check_positive("scale", scale)
        self._arguments = dict(
            angular_margin=self.angular_margin,
            scale=self.scale,
            class_learning_rate=self.class_learning_rate,
            seed=self.seed,
        )

    @tf.autograph.experimental.do_not_convert
    def loss_value(
        self, labels: tf.Tensor, embeddings: tf.Tensor, features: tf.Tensor | None, step: tf.Tensor
    ) -> tf.Tensor:
        cosine, positive, labels = self.similarities(labels, embeddings)
        cosine = tf.clip_by_value(cosine, -1.0, 1.0)
        sine = tf.sqrt(tf.maximum(1.0 - tf.square(cosine), 1e-12))
        with_margin = cosine * math.cos(self.angular_margin) - sine * math.sin(self.angular_margin)
        logits = self.scale * tf.where(positive > 0, with_margin, cosine)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
