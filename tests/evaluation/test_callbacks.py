"""RetrievalEvaluation and LanguageGuidanceTensorBoard during model.fit; event files read back."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from helpers import tiny_guided_model

from tf_langdml import keras
from tf_langdml.data import make_train_dataset
from tf_langdml.evaluation import (
    EMBEDDING_SPACE_METRICS,
    LanguageGuidanceTensorBoard,
    RetrievalEvaluation,
    embed_split,
    embedding_space_metrics,
    retrieval_metrics,
    similarity_heatmap,
)


def read_events(folder):
    events = {}
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                events.setdefault(value.tag, []).append((event.step, value))
    return events


def test_fit_with_evaluation_checkpoint_and_tensorboard(colour_data, tmp_path):
    train_split, test_split = colour_data.train_split, colour_data.test_split
    table = np.random.default_rng(1).normal(size=(4, 1, 5)).astype(np.float32)
    model = tiny_guided_model(table, optimizer=keras.optimizers.SGD(0.05), language_weight=1.0)
    train = make_train_dataset(train_split, batch_size=8, examples_per_class=2, seed=0, image_size=16)
    fixed_batch = next(iter(train))
    log_dir = tmp_path / "logs"
    evaluation = RetrievalEvaluation(test_split, every=1, batch_size=16, image_size=16, log_dir=str(log_dir), verbose=0)
    board = LanguageGuidanceTensorBoard(
        str(log_dir), fixed_batch=fixed_batch, every=2, projector_split=test_split, projector_size=10, image_size=16
    )
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "best.weights.h5"),
        monitor="val_recall@1",
        mode="max",
        save_best_only=True,
        save_weights_only=True,
    )
    history = model.fit(train, steps_per_epoch=3, epochs=2, verbose=0, callbacks=[evaluation, board, checkpoint])

    # Metrics reach logs, History and the checkpoint's monitor.
    assert {"val_recall@1", "val_recall@8", "val_map@r", "val_map@1000"} <= set(history.history)
    # The last evaluation ran on the final weights: recomputing from this model's own test embeddings
    # (same preprocessing, same traced forward pass) gives the very same numbers.
    embeddings = embed_split(model, test_split, 16, 16, verbose=0)
    recomputed = retrieval_metrics(embeddings, test_split.labels)
    recomputed.update(embedding_space_metrics(embeddings, test_split.labels))
    assert set(EMBEDDING_SPACE_METRICS) <= set(recomputed)  # 4 test classes of 4 images: all four defined
    assert evaluation.results[-1] == (2, recomputed)
    scalars = read_events(str(log_dir / "validation"))
    for name in EMBEDDING_SPACE_METRICS:  # in the logs (History) and in TensorBoard, at both evaluations
        assert history.history[f"val_{name}"][-1] == recomputed[name], name
        assert [step for step, _ in scalars[name]] == [1, 2], name
    for name in ("recall@1", "recall@8", "map@r", "map@1000"):
        assert history.history[f"val_{name}"][-1] == recomputed[name], name
    # 16 test images: recall@1 counts queries, so it is a multiple of 1/16.
    assert recomputed["recall@1"] * 16 == round(recomputed["recall@1"] * 16)
    assert (tmp_path / "best.weights.h5").exists()

    train_events = read_events(log_dir / "train")
    assert {"loss", "dml_loss", "language_loss", "learning_rate"} <= set(train_events)
    assert [step for step, _ in train_events["loss"]] == [1, 2, 3, 4, 5, 6]
    per_step = [tf.make_ndarray(value.tensor) for _, value in train_events["loss"]]
    # The per-step values average to the epoch's running mean that Keras reports. The callback's
    # k m_k - (k-1) m_(k-1) telescopes (float64) to 3 m_3; what is left is float32 rounding of 3
    # positive values and of their float32 mean: <= ~6 x 2^-24 = 3.6e-7 relative.
    assert np.mean(per_step[3:]) == pytest.approx(history.history["loss"][1], rel=1e-6)
    # 0.05 stored as float32: off by <= 2^-24 relative.
    assert tf.make_ndarray(train_events["learning_rate"][0][1].tensor) == pytest.approx(0.05, rel=1e-7)

    # One heat-map image at epoch 2: the matplotlib figure (two 8 x 8 panels and a colour bar), 1300 x 640 px.
    images = train_events["similarity/image_vs_language"]
    assert [step for step, _ in images] == [2]
    encoded = tf.make_ndarray(images[0][1].tensor)
    picture = tf.io.decode_png(encoded[2]).numpy()
    assert picture.shape == (640, 1300, 3)

    validation = read_events(log_dir / "validation")
    assert [step for step, _ in validation["recall@1"]] == [1, 2]

    # Projector: checkpoint, metadata with class names, config.
    assert (log_dir / "projector_config.pbtxt").read_text().count("metadata.tsv") == 1
    metadata = (log_dir / "metadata.tsv").read_text().splitlines()
    assert metadata[0] == "class\tlabel" and len(metadata) == 11
    assert metadata[1].split("\t")[0] in test_split.class_names
    reader = tf.train.load_checkpoint(str(log_dir / "projector" / "embedding.ckpt"))
    assert reader.get_tensor("embedding/.ATTRIBUTES/VARIABLE_VALUE").shape == (10, 8)


def test_heatmap_uses_a_fixed_colour_scale():
    image = similarity_heatmap(np.array([[-1.0, 0.0], [1.0, 0.5]]), scale=1)
    assert image.shape == (2, 2, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[0, 0], [33, 102, 172])  # -1: blue
    np.testing.assert_array_equal(image[0, 1], [247, 247, 247])  # 0: white
    np.testing.assert_array_equal(image[1, 0], [178, 24, 43])  # +1: red
    # Same value, same colour, whatever else is in the matrix.
    np.testing.assert_array_equal(similarity_heatmap(np.array([[0.5]]), scale=1)[0, 0], image[1, 1])


def test_every_must_be_positive(colour_data):
    with pytest.raises(ValueError, match="every must be >= 1"):
        RetrievalEvaluation(colour_data.test_split, every=0)
