"""The language-matching loss of language-guided DML (docs/loss.md; the paper, Section 3).

The batch's image-similarity matrix is pulled, row by row with a KL divergence,
towards the similarity matrix of the language embeddings of the same samples.
"""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf

from tf_langdml._keras import keras
from tf_langdml._validation import tensor_check
from tf_langdml.errors import ArgumentError
from tf_langdml.language.language_table import LanguageTable, mean_cosine_similarities

DIRECTIONS = ("image_to_language", "language_to_image")


def validate_direction(direction: str) -> str:
    """Return ``direction`` if it is one of ``DIRECTIONS``; otherwise raise ValueError."""
    if direction not in DIRECTIONS:
        raise ArgumentError(
            f"Unknown direction {direction!r} for the language-matching loss; expected one "
            f"of {list(DIRECTIONS)} ('image_to_language' is the paper's equation).",
            argument="direction",
        )
    return direction


def validate_shift_and_temperature(shift: float, temperature: float) -> None:
    """Raise ValueError unless ``shift`` is finite and ``temperature`` is positive."""
    if not math.isfinite(float(shift)):
        raise ArgumentError(f"shift must be a finite number, got {shift!r}; the paper uses 1.0.", argument="shift")
    if not float(temperature) > 0 or not math.isfinite(float(temperature)):
        raise ArgumentError(
            f"temperature must be a positive number, got {temperature!r}; the paper uses 1.0.", argument="temperature"
        )


def as_language_table(language_table: Any) -> tf.Tensor:
    """Return a raw (unprepared) table as a float32 (C, K, D) tensor; a (C, D) table gets K = 1.

    Raises:
        ValueError: the table is not 2-D or 3-D.
    """
    table = tf.cast(tf.convert_to_tensor(language_table), tf.float32)
    rank = table.shape.rank
    if rank == 2:
        return table[:, tf.newaxis, :]
    if rank != 3:
        raise ValueError(
            f"language_table must be (C, D) for expert labels or (C, K, D) for top-k "
            f"pseudo-labels; got shape {table.shape}."
        )
    return table


def normalize_language_table(language_table: Any) -> tf.Tensor:
    """Return a raw table as float32 (C, K, D) with L2-normalised rows (in TensorFlow, at each call).

    A :class:`~tf_langdml.language.LanguageTable` is already normalised: use its rows.

    Raises:
        ValueError: the table is not 2-D or 3-D, or (eagerly) holds NaN or Inf; in a
            ``tf.function`` the NaN check fails the step instead.
    """
    table = as_language_table(language_table)
    checks = tensor_check(
        tf.reduce_all(tf.math.is_finite(table)),
        "language_table contains NaN or Inf values; recompute the language embeddings "
        "(a corrupt cache or a failed text encoder is the usual cause).",
    )
    with tf.control_dependencies(checks):
        return tf.math.l2_normalize(table, axis=-1)


def _as_index_vector(values: Any, what: str) -> tf.Tensor:
    values = tf.convert_to_tensor(values)
    if not values.dtype.is_integer:
        raise ValueError(f"{what} must be integers, got dtype {values.dtype.name}.")
    rank = values.shape.rank
    if rank == 2 and values.shape[1] == 1:
        values = tf.reshape(values, [-1])
    elif rank is not None and rank != 1:
        raise ValueError(f"{what} must have shape (B,) or (B, 1); got {values.shape}.")
    return tf.cast(values, tf.int32)


@tf.autograph.experimental.do_not_convert
def language_matching_loss(
    embeddings: Any,
    labels: Any,
    language_table: LanguageTable | Any,
    shift: float = 1.0,
    temperature: float = 1.0,
    direction: str = "image_to_language",
    table_indices: Any | None = None,
) -> tf.Tensor:
    """Language-matching loss L_match, step by step as in docs/loss.md (the paper, Section 3).

    Args:
        embeddings: (B, d) L2-normalised image embeddings, so that
            ``embeddings @ embeddings.T`` are cosine similarities. Cast to float32.
        labels: (B,) or (B, 1) integer class labels; equal labels are positives.
        language_table: a :class:`~tf_langdml.language.LanguageTable` (validated and
            normalised when it was built; used as it is, as the model does), or a raw
            (C, D) or (C, K, D) array or tensor whose rows need not be normalised: the
            batch's rows are then checked for NaN/Inf and normalised in this call. No
            gradient reaches the table.
        shift: γ, added to the language similarities; positives are set to 1 + γ.
        temperature: T of both softmaxes; the loss is scaled by T².
        direction: ``"image_to_language"`` = KL(P‖Q), the paper's equation;
            ``"language_to_image"`` = KL(Q‖P).
        table_indices: (B,) rows of the table to use for each sample; defaults to
            ``labels``. Sample-level pseudo-labels pass example ids here.

    Returns:
        Scalar float32 tensor: (T² / B) Σ_i KL(row i).
    """
    validate_direction(direction)
    validate_shift_and_temperature(shift, temperature)
    embeddings = tf.cast(tf.convert_to_tensor(embeddings), tf.float32)
    if embeddings.shape.rank != 2:
        raise ValueError(f"embeddings must be 2-D (batch, embedding_dim); got shape {embeddings.shape}.")
    labels = _as_index_vector(labels, "labels")
    rows = labels if table_indices is None else _as_index_vector(table_indices, "table_indices")
    prepared = isinstance(language_table, LanguageTable)
    table = None if prepared else tf.stop_gradient(as_language_table(language_table))

    static_lengths = {embeddings.shape[0], labels.shape[0], rows.shape[0]} - {None}
    if len(static_lengths) > 1:
        raise ValueError(
            f"labels, table indices and embeddings must have the same length (got shapes "
            f"{labels.shape}, {rows.shape} and {embeddings.shape})."
        )
    batch_size = tf.shape(embeddings)[0]
    num_rows = language_table.num_rows if prepared else tf.shape(table)[0]
    checks = tensor_check(
        tf.logical_and(tf.equal(tf.shape(labels)[0], batch_size), tf.equal(tf.shape(rows)[0], batch_size)),
        f"labels, table indices and embeddings must have the same length (got shapes "
        f"{labels.shape}, {rows.shape} and {embeddings.shape}).",
    )
    with tf.control_dependencies(checks):
        checks = tensor_check(
            tf.logical_and(tf.reduce_all(rows >= 0), tf.reduce_all(rows < num_rows)),
            "a label (or table index) is outside the language table: every index must be in "
            "[0, C) where C is the table's first dimension. Check that the labels of this "
            "split are numbered 0..C-1 and that the table was built for the same classes.",
        )
    with tf.control_dependencies(checks):
        image_sims = tf.matmul(embeddings, embeddings, transpose_b=True)
        if prepared:  # unit rows already: S_lang of the batch, nothing re-checked or re-normalised
            language_sims = language_table.similarities(rows, check_indices=False)
        else:  # a raw table: only the batch's rows are checked and normalised, once, here
            language_sims = mean_cosine_similarities(normalize_language_table(tf.gather(table, rows)))

    same_label = tf.equal(labels[:, tf.newaxis], labels[tf.newaxis, :])
    positive_value = tf.constant(1.0 + float(shift), tf.float32)
    image_logits = tf.where(same_label, positive_value, image_sims) / temperature
    language_logits = tf.where(same_label, positive_value, language_sims + float(shift)) / temperature
    log_p = tf.nn.log_softmax(image_logits, axis=1)
    log_q = tf.nn.log_softmax(tf.stop_gradient(language_logits), axis=1)
    if direction == "image_to_language":
        divergence = tf.reduce_sum(tf.exp(log_p) * (log_p - log_q))
    else:
        divergence = tf.reduce_sum(tf.exp(log_q) * (log_q - log_p))
    return float(temperature) ** 2 * divergence / tf.cast(batch_size, tf.float32)


@keras.utils.register_keras_serializable(package="tf_langdml")
class LanguageMatchingLoss:
    """Serializable wrapper of :func:`language_matching_loss`.

    Called as ``loss(embeddings, labels, language_table, table_indices=None)``; the
    table is an argument, not state, so the config stays small and JSON-friendly.
    """

    def __init__(
        self,
        shift: float = 1.0,
        temperature: float = 1.0,
        direction: str = "image_to_language",
        name: str = "language_matching_loss",
    ) -> None:
        validate_direction(direction)
        validate_shift_and_temperature(shift, temperature)
        self.shift = float(shift)
        self.temperature = float(temperature)
        self.direction = direction
        self.name = name

    def __call__(
        self, embeddings: Any, labels: Any, language_table: LanguageTable | Any, table_indices: Any | None = None
    ) -> tf.Tensor:
        with tf.name_scope(self.name):
            return language_matching_loss(
                embeddings,
                labels,
                language_table,
                shift=self.shift,
                temperature=self.temperature,
                direction=self.direction,
                table_indices=table_indices,
            )

    def get_config(self) -> dict[str, Any]:
        return {"shift": self.shift, "temperature": self.temperature, "direction": self.direction, "name": self.name}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LanguageMatchingLoss:
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"LanguageMatchingLoss({args})"
