"""Tuple losses on mined triplets: margin, triplet, contrastive, N-pair (the paper's code's formulas).

d(a, b) is the Euclidean distance of L2-normalised embeddings. Each batch element is an
anchor; the miner (:mod:`~tf_langdml.losses.miners`, argument ``miner``) picks its positive
p and negative n. Anchors without a positive or a negative are left out, except the
``rho_distance`` miner's triplets (a, a, p), drawn with probability ``rho``, which need only
a positive (the loss then pushes p away from a as if it were a negative). Sums below run
over the kept anchors.

``margin`` (Wu et al. 2017)
    ℓ⁺ = relu(d(a, p) − β_y + m), ℓ⁻ = relu(β_y − d(a, n) + m);
    L = Σ (ℓ⁺ + ℓ⁻) / #{non-zero ℓ⁺ and ℓ⁻} (Σ (ℓ⁺ + ℓ⁻) if none is non-zero) + ν Σ β_y.
    β_y is the anchor's class's learned boundary, initialised at 1.2 and trained at its own
    learning rate (5e-4); with ``beta_constant`` it is the fixed number ``beta`` for every
    class (the paper's code's flag of that name; then there is nothing to train).
``triplet``
    L = mean relu(d(a, p)² − d(a, n)² + m) (squared distances, as the paper's code).
``contrastive``
    L = mean relu(d(a, p) − m⁺) + mean relu(m⁻ − d(a, n)), m⁺ = 0, m⁻ = 1 (with
    ``miner="semihard"`` its window is 0.2 wide, the paper's code's miner margin).
``npair`` (Sohn 2016)
    For each anchor with a positive p and N its other-class batch elements:
    ℓ = log(1 + Σ_{n∈N} exp(a·n − a·p)); L = mean ℓ + λ · mean_i ‖e_i‖ (λ = 0.005,
    the paper's code's embedding-norm penalty; constant on normalised embeddings).
"""

from __future__ import annotations

import tensorflow as tf

from tf_langdml._keras import keras
from tf_langdml.errors import ArgumentError
from tf_langdml.losses.base import BatchLoss, LearningRateGroup, check_positive, mining_seed, pair_distance
from tf_langdml.losses.miners import MINERS, check_rho, mine_triplets


class MinedTupleLoss(BatchLoss):
    """Shared part of the losses on mined triplets: the miner and its seed."""

    def __init__(
        self,
        miner: str,
        seed: int,
        margin: float,
        lower_cutoff: float = 0.5,
        upper_cutoff: float | None = None,
        rho: float = 0.2,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if miner not in MINERS:
            raise ArgumentError(f"Unknown miner {miner!r}; expected one of {list(MINERS)}.", argument="miner")
        self.miner = miner
        self.seed = int(seed)
        self.margin = float(margin)
        self.lower_cutoff = check_positive("lower_cutoff", lower_cutoff, allow_zero=True)
        self.upper_cutoff = None if upper_cutoff is None else check_positive("upper_cutoff", upper_cutoff)
        self.rho = check_rho(rho)

    @tf.autograph.experimental.do_not_convert
    def mine(
        self, labels: tf.Tensor, embeddings: tf.Tensor, step: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """(anchors, positives, negatives, valid as float32) of this step's triplets."""
        anchors, positives, negatives, valid = mine_triplets(
            embeddings,
            labels,
            self.miner,
            seed=mining_seed(self.seed, step),
            margin=self.margin,
            lower_cutoff=self.lower_cutoff,
            upper_cutoff=self.upper_cutoff,
            dim=self.embed_dim,
            rho=self.rho,
        )
        return anchors, positives, negatives, tf.cast(valid, tf.float32)


def _masked_mean(values: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    return tf.math.divide_no_nan(tf.reduce_sum(values * weights), tf.reduce_sum(weights))


class MarginLoss(MinedTupleLoss):
    """Margin loss with a learned boundary β (Wu et al. 2017); see the module docstring."""

    def __init__(
        self,
        margin: float = 0.2,
        beta: float = 1.2,
        beta_constant: bool = False,
        beta_learning_rate: float = 5e-4,
        nu: float = 0.0,
        miner: str = "distance",
        lower_cutoff: float = 0.5,
        upper_cutoff: float | None = None,
        rho: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__(
            miner,
            seed,
            check_positive("margin", margin, allow_zero=True),
            lower_cutoff,
            upper_cutoff,
            rho,
            name="margin_loss",
        )
        self.beta_init = float(beta)
        self.beta_constant = bool(beta_constant)
        self.beta_learning_rate = check_positive("beta_learning_rate", beta_learning_rate, allow_zero=True)
        self.nu = check_positive("nu", nu, allow_zero=True)
        self._arguments = dict(
            margin=self.margin,
            beta=self.beta_init,
            beta_constant=self.beta_constant,
            beta_learning_rate=self.beta_learning_rate,
            nu=self.nu,
            miner=miner,
            lower_cutoff=self.lower_cutoff,
            upper_cutoff=self.upper_cutoff,
            rho=self.rho,
            seed=self.seed,
        )

    @property
    def needs_classes(self) -> bool:
        return not self.beta_constant

    def create_variables(self) -> None:
        self.beta = None
        if not self.beta_constant:
            self.beta = self.add_weight(
                name="beta",
                shape=(self.num_classes,),
                dtype=tf.float32,
                initializer=keras.initializers.Constant(self.beta_init),
                trainable=True,
            )

    def learning_rate_groups(self) -> list[LearningRateGroup]:
        return [] if self.beta is None else [LearningRateGroup((self.beta,), learning_rate=self.beta_learning_rate)]

    @tf.autograph.experimental.do_not_convert
    def loss_value(
        self, labels: tf.Tensor, embeddings: tf.Tensor, features: tf.Tensor | None, step: tf.Tensor
    ) -> tf.Tensor:
        anchors, positives, negatives, valid = self.mine(labels, embeddings, step)
        beta = self.beta_init * tf.ones_like(valid) if self.beta is None else tf.gather(self.beta, labels)
        positive_loss = tf.nn.relu(pair_distance(embeddings, anchors, positives) - beta + self.margin) * valid
        negative_loss = tf.nn.relu(beta - pair_distance(embeddings, anchors, negatives) + self.margin) * valid
        active = tf.reduce_sum(tf.cast(positive_loss > 0, tf.float32) + tf.cast(negative_loss > 0, tf.float32))
        total = tf.reduce_sum(positive_loss + negative_loss)
        loss = tf.where(active > 0, total / tf.maximum(active, 1.0), total)
        if self.nu:
            loss += self.nu * tf.reduce_sum(beta * valid)
        return loss


class TripletLoss(MinedTupleLoss):
    """Triplet loss on squared distances with a batch miner (default semihard); see the module docstring."""

    def __init__(
        self,
        margin: float = 0.2,
        miner: str = "semihard",
        lower_cutoff: float = 0.5,
        upper_cutoff: float | None = None,
        rho: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__(
            miner,
            seed,
            check_positive("margin", margin, allow_zero=True),
            lower_cutoff,
            upper_cutoff,
            rho,
            name="triplet_loss",
        )
        self._arguments = dict(
            margin=self.margin,
            miner=miner,
            lower_cutoff=self.lower_cutoff,
            upper_cutoff=self.upper_cutoff,
            rho=self.rho,
            seed=self.seed,
        )

    @tf.autograph.experimental.do_not_convert
    def loss_value(
        self, labels: tf.Tensor, embeddings: tf.Tensor, features: tf.Tensor | None, step: tf.Tensor
    ) -> tf.Tensor:
        anchors, positives, negatives, valid = self.mine(labels, embeddings, step)
        positive = pair_distance(embeddings, anchors, positives, squared=True)
        negative = pair_distance(embeddings, anchors, negatives, squared=True)
        return _masked_mean(tf.nn.relu(positive - negative + self.margin), valid)


class ContrastiveLoss(MinedTupleLoss):
    """Contrastive loss on mined pairs (default miner: distance); see the module docstring."""

    def __init__(
        self,
        positive_margin: float = 0.0,
        negative_margin: float = 1.0,
        miner: str = "distance",
        lower_cutoff: float = 0.5,
        upper_cutoff: float | None = None,
        rho: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__(miner, seed, 0.2, lower_cutoff, upper_cutoff, rho, name="contrastive_loss")
        self.positive_margin = check_positive("positive_margin", positive_margin, allow_zero=True)
        self.negative_margin = check_positive("negative_margin", negative_margin, allow_zero=True)
        self._arguments = dict(
            positive_margin=self.positive_margin,
            negative_margin=self.negative_margin,
            miner=miner,
            lower_cutoff=self.lower_cutoff,
            upper_cutoff=self.upper_cutoff,
            rho=self.rho,
            seed=self.seed,
        )

    @tf.autograph.experimental.do_not_convert
    def loss_value(
        self, labels: tf.Tensor, embeddings: tf.Tensor, features: tf.Tensor | None, step: tf.Tensor
    ) -> tf.Tensor:
        anchors, positives, negatives, valid = self.mine(labels, embeddings, step)
        positive = tf.nn.relu(pair_distance(embeddings, anchors, positives) - self.positive_margin)
        negative = tf.nn.relu(self.negative_margin - pair_distance(embeddings, anchors, negatives))
        return _masked_mean(positive, valid) + _masked_mean(negative, valid)


class NPairLoss(BatchLoss):
    """N-pair loss (Sohn 2016) with the paper's code's embedding-norm penalty; see the module docstring."""

    def __init__(self, l2_weight: float = 0.005, seed: int = 0) -> None:
        super().__init__(name="npair_loss")
        self.l2_weight = check_positive("l2_weight", l2_weight, allow_zero=True)
        self.seed = int(seed)
        self._arguments = dict(l2_weight=self.l2_weight, seed=self.seed)

    @tf.autograph.experimental.do_not_convert
    def loss_value(
        self, labels: tf.Tensor, embeddings: tf.Tensor, features: tf.Tensor | None, step: tf.Tensor
    ) -> tf.Tensor:
        _, positives, _, _ = mine_triplets(embeddings, labels, "random", seed=mining_seed(self.seed, step))
        negative_mask = tf.not_equal(labels[:, None], labels[None, :])
        # Anchors with a positive (the paper's code keeps them even without a negative: ℓ = log 1 = 0).
        valid = tf.reduce_sum(1.0 - tf.cast(negative_mask, tf.float32), axis=1) > 1
        products = tf.matmul(embeddings, embeddings, transpose_b=True)
        positive_products = tf.gather(products, positives, axis=1, batch_dims=1)
        exponents = tf.where(negative_mask, products - positive_products[:, None], -1e9)
        # log(1 + Σ exp(x)) as the logsumexp of [0, x...]
        with_one = tf.concat([tf.zeros_like(exponents[:, :1]), exponents], axis=1)
        per_anchor = tf.reduce_logsumexp(with_one, axis=1)
        loss = _masked_mean(per_anchor, tf.cast(valid, tf.float32))
        if self.l2_weight:
            loss += self.l2_weight * tf.reduce_mean(tf.norm(embeddings, axis=1))
        return loss
