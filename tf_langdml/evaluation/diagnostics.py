"""A look inside the training loss: how hard the language term pulls against the DML loss.

:func:`loss_diagnostics` takes one batch through the model (inference mode) and
returns, all as Python floats:

- ``gradient_norm_ratio``: ‖∇_E (ω_eff · L_match)‖ / ‖∇_E L_DML‖, the gradients with
  respect to the batch's embeddings E (one forward pass, two backward passes that stop
  at E, so no backbone backward pass). ω_eff is ω once the delay has passed, else 0.
  Above 1 the language term moves the embeddings more than the DML loss does.
- ``dml_gradient_norm``, ``language_gradient_norm``: the two norms.
- ``dml_loss``, ``language_loss``: the two losses on this batch (L_match without ω).
- ``image_similarity_same_class``, ``image_similarity_other_class``: mean cosine
  similarity of the batch's embeddings over pairs i != j of the same class / of
  different classes.
- ``language_similarity_other_class``: mean S_lang over the pairs of different
  classes (what L_match pulls ``image_similarity_other_class`` towards, before the
  shift γ and the softmax).

:func:`language_table_statistics` summarises a whole table: the mean and standard
deviation of S_lang over pairs of different rows. A small spread means the softmax of
the language side is nearly flat at T = 1 (the paper's γ = 1, T = 1 were set for
CLIP's text similarities).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_langdml.language.language_table import LanguageTable

DIAGNOSTICS = (
    "gradient_norm_ratio",
    "dml_gradient_norm",
    "language_gradient_norm",
    "dml_loss",
    "language_loss",
    "image_similarity_same_class",
    "image_similarity_other_class",
    "language_similarity_other_class",
)


def _pair_means(similarities, labels):
    same = tf.equal(labels[:, None], labels[None, :])
    off_diagonal = tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool))

    def mean(mask):
        mask = tf.cast(mask, tf.float32)
        return tf.math.divide_no_nan(tf.reduce_sum(similarities * mask), tf.reduce_sum(mask))

    return mean(tf.logical_and(same, off_diagonal)), mean(tf.logical_not(same))


def loss_diagnostics(model, batch) -> dict[str, float]:
    """The diagnostics above for ``batch`` = (images, labels[, sample_ids]) under a compiled LanguageGuidedModel.

    Without a language table (the baseline) the language entries are 0 and the ratio is 0.
    """
    if model.dml_loss is None:
        raise RuntimeError("loss_diagnostics needs a compiled LanguageGuidedModel (call compile() first).")
    images, labels, sample_ids = model._unpack(tuple(batch))
    labels = tf.cast(labels, tf.int64)
    sample_ids = None if sample_ids is None else tf.cast(sample_ids, tf.int64)
    embeddings, features = model.forward(images, training=False)  # features: for S2SD, else None
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(embeddings)
        dml, language, weight = model.loss_terms(embeddings, labels, sample_ids, training=False, features=features)
        weighted = None if language is None else weight * language
    dml_norm = tf.norm(tape.gradient(dml, embeddings))
    if language is None:
        language = language_norm = language_other = tf.zeros([], tf.float32)
    else:
        language_norm = tf.norm(tape.gradient(weighted, embeddings))
        _, language_other = _pair_means(model.language_table.similarities(model.table_rows(labels, sample_ids)), labels)
    del tape
    image_similarities = tf.matmul(embeddings, embeddings, transpose_b=True)
    same, other = _pair_means(image_similarities, labels)
    values = {
        "gradient_norm_ratio": tf.math.divide_no_nan(language_norm, dml_norm),
        "dml_gradient_norm": dml_norm,
        "language_gradient_norm": language_norm,
        "dml_loss": dml,
        "language_loss": language,
        "image_similarity_same_class": same,
        "image_similarity_other_class": other,
        "language_similarity_other_class": language_other,
    }
    return {name: float(value.numpy()) for name, value in values.items()}


def language_table_statistics(
    table: LanguageTable | np.ndarray, max_rows: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Mean and standard deviation of S_lang over pairs of different rows (of up to ``max_rows`` sampled rows)."""
    table = LanguageTable.coerce(table)
    rows = np.arange(table.num_rows)
    if len(rows) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))
    if len(rows) < 2:
        return {"table_similarity_mean": float("nan"), "table_similarity_std": float("nan")}
    similarities = table.similarities(rows).numpy().astype(np.float64)
    off_diagonal = similarities[~np.eye(len(rows), dtype=bool)]
    return {"table_similarity_mean": float(off_diagonal.mean()), "table_similarity_std": float(off_diagonal.std())}
