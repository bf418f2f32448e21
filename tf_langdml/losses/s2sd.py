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

import tensorflow as tf

from tf_langdml._keras import keras
from tf_langdml.losses.base import BatchLoss, check_positive, dml_loss_value

FEATURE_POOLINGS = ("avg+max", "avg", "max")


def similarity_distillation(student, teacher, temperature=1.0):
    """KLd(A, B) of S2SD for similarity matrices ``student`` = A, ``teacher`` = B (held constant); float32 scalar."""
    temperature = float(temperature)
    teacher = tf.stop_gradient(tf.cast(teacher, tf.float32)) / temperature
    student = tf.cast(student, tf.float32) / temperature
    teacher_log = tf.nn.log_softmax(teacher, axis=1)
    student_log = tf.nn.log_softmax(student, axis=1)
    rows = tf.cast(tf.shape(student)[0], tf.float32)
    return temperature ** 2 / rows * tf.reduce_sum(tf.exp(teacher_log) * (teacher_log - student_log))


def _gram(x):
    return tf.matmul(x, x, transpose_b=True)


class S2SDLoss(BatchLoss):
    """S2SD around a target DML loss; see the module docstring.

    Args:
        target: the DML loss of the base embedding and every head (a name of
            ``DML_LOSSES`` other than ``s2sd``; the paper: multi-similarity).
        target_arguments: that loss's arguments.
        dims: the heads' sizes t_i.
        distill_weight: w (the paper's published runs: 0).
        temperature: T.
        feature_weight: w_feat, the weight of the feature distillation (0: off).
        feature_delay: optimizer steps before the feature distillation switches on.
        feature_pooling: how f is pooled from the feature maps (``"avg+max"``: the paper's ``pool_aggr``).
        seed: for the heads' initial weights and the target losses' miners.
    """

    needs_features = True

    def __init__(self, target="multisimilarity", target_arguments=None, dims=(1024, 1536, 2048), distill_weight=0.0,
                 temperature=1.0, feature_weight=0.0, feature_delay=0, feature_pooling="avg+max", seed=0):
        super().__init__(name="s2sd_loss")
        from tf_langdml.losses.dml import build_dml_loss

        if str(target).lower() == "s2sd":
            raise ValueError("S2SD's target loss cannot be 's2sd' itself; use e.g. target='multisimilarity'.")
        dims = [int(dim) for dim in (dims if isinstance(dims, (list, tuple)) else [dims])]
        if not dims or any(dim <= 0 for dim in dims):
            raise ValueError(f"dims must be a non-empty list of positive head sizes (default [1024, 1536, 2048]); got {dims!r}.")
        if feature_pooling not in FEATURE_POOLINGS:
            raise ValueError(f"Unknown feature_pooling {feature_pooling!r}; expected one of {list(FEATURE_POOLINGS)}.")
        if int(feature_delay) != feature_delay or feature_delay < 0:
            raise ValueError(f"feature_delay must be a whole number of steps >= 0, got {feature_delay!r}.")
        self.target = str(target).lower()
        self.target_arguments = dict(target_arguments or {})
        self.dims = dims
        self.distill_weight = check_positive("distill_weight", distill_weight, allow_zero=True)
        self.temperature = check_positive("temperature", temperature)
        self.feature_weight = check_positive("feature_weight", feature_weight, allow_zero=True)
        self.feature_delay = int(feature_delay)
        self.feature_pooling = feature_pooling
        self.seed = int(seed)
        self._arguments = dict(target=self.target, target_arguments=dict(self.target_arguments), dims=list(dims),
                               distill_weight=self.distill_weight, temperature=self.temperature,
                               feature_weight=self.feature_weight, feature_delay=self.feature_delay,
                               feature_pooling=feature_pooling, seed=self.seed)

        def target_loss(index):
            arguments = dict(self.target_arguments)
            from tf_langdml.losses.dml import dml_loss_arguments

            if "seed" in dml_loss_arguments(self.target) and "seed" not in arguments:
                arguments["seed"] = self.seed + index
            return build_dml_loss(self.target, **arguments)

        self.base_loss = target_loss(0)
        self.head_losses = [target_loss(index + 1) for index in range(len(dims))]
        self.heads = [
            keras.Sequential([
                keras.layers.Dense(dim, activation="relu", dtype="float32", name=f"head_{dim}_hidden",
                                   kernel_initializer=keras.initializers.GlorotUniform(seed=self.seed + 2 * index)),
                keras.layers.Dense(dim, dtype="float32", name=f"head_{dim}_out",
                                   kernel_initializer=keras.initializers.GlorotUniform(seed=self.seed + 2 * index + 1)),
            ], name=f"s2sd_head_{dim}")
            for index, dim in enumerate(dims)
        ]

    def setup(self, num_classes, embed_dim, feature_dim=None):
        if feature_dim is None:
            raise ValueError("S2SD needs the backbone's feature size (feature_dim); LanguageGuidedModel.compile passes it.")
        self.feature_dim = int(feature_dim)
        super().setup(num_classes, embed_dim, feature_dim)

    def create_variables(self):
        for head in self.heads:
            head.build((None, self.feature_dim))
        for loss, dim in zip([self.base_loss, *self.head_losses], [self.embed_dim, *self.dims]):
            if isinstance(loss, BatchLoss):
                loss.setup(self.num_classes, dim)

    @property
    def needs_classes(self):  # noqa: D401  (a target with class vectors needs the class count)
        return any(getattr(loss, "needs_classes", False) for loss in [self.base_loss, *self.head_losses])

    def learning_rate_groups(self):
        groups = []
        for loss in [self.base_loss, *self.head_losses]:
            if isinstance(loss, BatchLoss):
                groups += loss.learning_rate_groups()
        return groups

    def pool_features(self, feature_maps):
        feature_maps = tf.cast(feature_maps, tf.float32)
        average = tf.reduce_mean(feature_maps, axis=[1, 2])
        if self.feature_pooling == "avg":
            return average
        maximum = tf.reduce_max(feature_maps, axis=[1, 2])
        return maximum if self.feature_pooling == "max" else average + maximum

    def head_embeddings(self, features):
        """The heads' L2-normalised embeddings of pooled features (a list, one (B, t_i) tensor per head)."""
        return [tf.math.l2_normalize(head(features), axis=-1, epsilon=1e-12) for head in self.heads]

    def loss_value(self, labels, embeddings, features, step):
        if features is None:
            raise ValueError("S2SD needs the backbone's pooled features: loss(labels, embeddings, features=...).")
        base_similarities = _gram(embeddings)
        targets = self.head_embeddings(features)
        target_dml = tf.add_n([dml_loss_value(loss, labels, target, step=step)
                               for loss, target in zip(self.head_losses, targets)]) / len(targets)
        loss = 0.5 * (dml_loss_value(self.base_loss, labels, embeddings, step=step) + target_dml)
        if self.distill_weight:
            distillation = tf.add_n([similarity_distillation(base_similarities, _gram(target), self.temperature)
                                     for target in targets]) / len(targets)
            loss += self.distill_weight * distillation
        if self.feature_weight:
            normalized = tf.stop_gradient(tf.math.l2_normalize(features, axis=-1, epsilon=1e-12))
            gate = tf.cast(step >= self.feature_delay, tf.float32)
            loss += gate * self.feature_weight * similarity_distillation(base_similarities, _gram(normalized),
                                                                         self.temperature)
        return loss
