"""Loss diagnostics: the gradient-norm ratio and the similarity means, against GradientTape and numpy by hand."""

import numpy as np
import pytest
import tensorflow as tf
from helpers import synthetic_problem, tiny_guided_model

from tf_langdml import keras
from tf_langdml.evaluation import LanguageGuidanceTensorBoard, language_table_statistics, loss_diagnostics
from tf_langdml.losses import build_dml_loss, language_matching_loss


def _model(table, weight=3.0, delay=0, shift=1.0, temperature=1.0):
    return tiny_guided_model(
        table,
        optimizer=keras.optimizers.SGD(0.01),
        language_weight=weight,
        language_delay=delay,
        language_shift=shift,
        language_temperature=temperature,
    )


@pytest.mark.parametrize("shift, temperature", [(1.0, 1.0), (0.0, 0.5)])
def test_gradient_ratio_equals_a_ratio_taken_by_hand(shift, temperature):
    images, labels = synthetic_problem(num_classes=4, per_class=3)
    table = np.random.default_rng(1).normal(size=(4, 2, 12)).astype("float32")
    model = _model(table, weight=3.0, shift=shift, temperature=temperature)
    values = loss_diagnostics(model, (images, labels))

    # By hand: the same batch, an independent DML loss object and the loss function on the raw table.
    embeddings = tf.constant(model(images, training=False).numpy())
    dml_loss = build_dml_loss("multisimilarity")
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(embeddings)
        dml = tf.reduce_mean(dml_loss(tf.reshape(labels, [-1, 1]), embeddings))
        language = 3.0 * language_matching_loss(embeddings, labels, table, shift=shift, temperature=temperature)
    dml_norm = np.linalg.norm(tape.gradient(dml, embeddings).numpy())
    language_norm = np.linalg.norm(tape.gradient(language, embeddings).numpy())
    assert values["dml_gradient_norm"] == pytest.approx(dml_norm, rel=1e-5)
    assert values["language_gradient_norm"] == pytest.approx(language_norm, rel=1e-5)
    assert values["gradient_norm_ratio"] == pytest.approx(language_norm / dml_norm, rel=1e-5)
    assert values["language_loss"] == pytest.approx(float(language) / 3.0, rel=1e-5)

    # Similarity means by a loop over pairs, in float64.
    unit = embeddings.numpy().astype(np.float64)
    rows = table.astype(np.float64) / np.linalg.norm(table, axis=-1, keepdims=True)
    same, other, language_other = [], [], []
    for i in range(len(labels)):
        for j in range(len(labels)):
            if i == j:
                continue
            similarity = unit[i] @ unit[j]
            if labels[i] == labels[j]:
                same.append(similarity)
            else:
                other.append(similarity)
                language_other.append(np.mean([rows[labels[i], k] @ rows[labels[j], k] for k in range(2)]))
    assert values["image_similarity_same_class"] == pytest.approx(np.mean(same), abs=1e-6)
    assert values["image_similarity_other_class"] == pytest.approx(np.mean(other), abs=1e-6)
    assert values["language_similarity_other_class"] == pytest.approx(np.mean(language_other), abs=1e-6)


def test_before_the_delay_the_language_gradient_is_zero_and_the_baseline_has_none():
    images, labels = synthetic_problem(num_classes=4, per_class=2)
    table = np.random.default_rng(1).normal(size=(4, 12)).astype("float32")
    delayed = loss_diagnostics(_model(table, delay=5), (images, labels))
    assert delayed["language_gradient_norm"] == 0 and delayed["gradient_norm_ratio"] == 0
    assert delayed["language_loss"] > 0 and delayed["dml_gradient_norm"] > 0
    baseline = loss_diagnostics(_model(None, weight=0.0), (images, labels))
    assert baseline["language_loss"] == 0 and baseline["gradient_norm_ratio"] == 0


def test_table_statistics_match_numpy():
    table = np.random.default_rng(2).normal(size=(7, 3, 5)).astype("float32")
    rows = table / np.linalg.norm(table, axis=-1, keepdims=True)
    similarities = np.einsum("ikd,jkd->ij", rows, rows) / 3
    off = similarities[~np.eye(7, dtype=bool)]
    stats = language_table_statistics(table)
    assert stats["table_similarity_mean"] == pytest.approx(off.mean(), abs=1e-6)
    assert stats["table_similarity_std"] == pytest.approx(off.std(), abs=1e-6)


def test_the_callback_logs_diagnostics_every_epoch_into_logs_and_tensorboard(tmp_path):
    images, labels = synthetic_problem(num_classes=4, per_class=2)
    table = np.random.default_rng(1).normal(size=(4, 12)).astype("float32")
    model = _model(table)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8).repeat()
    board = LanguageGuidanceTensorBoard(str(tmp_path), fixed_batch=(images, labels), every=2, diagnostics_every=1)
    history = model.fit(data, steps_per_epoch=1, epochs=3, callbacks=[board], verbose=0).history
    assert len(history["diagnostics/gradient_norm_ratio"]) == 3
    assert all(value > 0 for value in history["diagnostics/gradient_norm_ratio"])
    tags = set()
    for path in (tmp_path / "train").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    assert {
        "diagnostics/gradient_norm_ratio",
        "diagnostics/table_similarity_std",
        "similarity/image_vs_language",
    } <= tags
    with pytest.raises(ValueError, match="diagnostics_every"):
        LanguageGuidanceTensorBoard(str(tmp_path), diagnostics_every=0)
