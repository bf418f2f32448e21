"""The language-matching loss of language-guided DML (DESIGN.md §3; paper §3.2, Eq. 3).

The batch's image-similarity matrix is pulled, row by row with a KL divergence,
towards the similarity matrix of the language embeddings of the same samples.
"""

import math

import tensorflow as tf

from tf_langdml._keras import keras
from tf_langdml._validation import tensor_check

DIRECTIONS = ("image_to_language", "language_to_image")


def validate_direction(direction):
    """Return ``direction`` if it is one of ``DIRECTIONS``; otherwise raise ValueError."""
    if direction not in DIRECTIONS:
        raise ValueError(
            f"Unknown direction {direction!r} for the language-matching loss; expected one "
            f"of {list(DIRECTIONS)} ('image_to_language' is the paper's equation)."
        )
    return direction


def validate_shift_and_temperature(shift, temperature):
    """Raise ValueError unless ``shift`` is finite and ``temperature`` is positive."""
    if not math.isfinite(float(shift)):
        raise ValueError(f"shift must be a finite number, got {shift!r}; the paper uses 1.0.")
    if not float(temperature) > 0 or not math.isfinite(float(temperature)):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}; the paper uses 1.0.")


def as_language_table(language_table):
    """Return the table as float32 (C, K, D); a (C, D) table gets K = 1.

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


def normalize_language_table(language_table):
    """Return the table as float32 (C, K, D) with L2-normalised rows.

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


def _as_index_vector(values, what):
    values = tf.convert_to_tensor(values)
    if not values.dtype.is_integer:
        raise ValueError(f"{what} must be integers, got dtype {values.dtype.name}.")
    rank = values.shape.rank
    if rank == 2 and values.shape[1] == 1:
        values = tf.reshape(values, [-1])
    elif rank is not None and rank != 1:
        raise ValueError(f"{what} must have shape (B,) or (B, 1); got {values.shape}.")
    return tf.cast(values, tf.int32)


def language_matching_loss(
    embeddings,
    labels,
    language_table,
    shift=1.0,
    temperature=1.0,
    direction="image_to_language",
    table_indices=None,
):
    """Language-matching loss L_match of DESIGN.md §3 (paper Eq. 3).

    Args:
        embeddings: (B, d) L2-normalised image embeddings, so that
            ``embeddings @ embeddings.T`` are cosine similarities. Cast to float32.
        labels: (B,) or (B, 1) integer class labels; equal labels are positives.
        language_table: (C, D) or (C, K, D) language embeddings; rows need not be
            normalised. No gradient reaches it.
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
        raise ValueError(
            f"embeddings must be 2-D (batch, embedding_dim); got shape {embeddings.shape}."
        )
    labels = _as_index_vector(labels, "labels")
    rows = labels if table_indices is None else _as_index_vector(table_indices, "table_indices")
    table = tf.stop_gradient(as_language_table(language_table))

    static_lengths = {embeddings.shape[0], labels.shape[0], rows.shape[0]} - {None}
    if len(static_lengths) > 1:
        raise ValueError(
            f"labels, table indices and embeddings must have the same length (got shapes "
            f"{labels.shape}, {rows.shape} and {embeddings.shape})."
        )
    batch_size = tf.shape(embeddings)[0]
    num_rows = tf.shape(table)[0]
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
        # Only the batch's rows are checked and normalised: a sample-level table can
        # hold millions of rows, and normalising them all every step is wasted work.
        batch_table = normalize_language_table(tf.gather(table, rows))  # (B, K, D)
    num_names = tf.cast(tf.shape(table)[1], tf.float32)
    language_sims = tf.einsum("ikd,jkd->ij", batch_table, batch_table) / num_names

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

    def __init__(self, shift=1.0, temperature=1.0, direction="image_to_language", name="language_matching_loss"):
        validate_direction(direction)
        validate_shift_and_temperature(shift, temperature)
        self.shift = float(shift)
        self.temperature = float(temperature)
        self.direction = direction
        self.name = name

    def __call__(self, embeddings, labels, language_table, table_indices=None):
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

    def get_config(self):
        return {"shift": self.shift, "temperature": self.temperature, "direction": self.direction, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"LanguageMatchingLoss({args})"
