"""PLG: ImageNet names, top-k aggregation, the pseudo-label table end to end, and training with it."""

import json

import numpy as np
import pytest
from helpers import tiny_guided_model, write_colour_folder

from tf_langdml import keras
from tf_langdml.data import load_image_folder, make_train_dataset
from tf_langdml.language import (
    IMAGENET_CLASS_NAMES,
    first_synonym,
    prime,
    pseudo_label_table,
    pseudo_labels,
    top_k_pseudo_labels,
)
from tf_langdml.models import classifier_fingerprint


def test_imagenet_class_names_ship_with_the_package():
    from tensorflow_datasets.datasets.siscore.labels import IMAGENET_LABELS_LIST

    assert len(IMAGENET_CLASS_NAMES) == 1000
    assert list(IMAGENET_CLASS_NAMES) == list(IMAGENET_LABELS_LIST)
    assert IMAGENET_CLASS_NAMES[967] == "espresso" and IMAGENET_CLASS_NAMES[285] == "Egyptian cat"
    assert first_synonym("tench, Tinca tinca") == "tench"
    assert first_synonym("espresso") == "espresso"


def reference_top_k(rows, k):
    """Loop reference: sort (value descending, index ascending)."""
    return np.array(
        [[index for _, index in sorted((-value, index) for index, value in enumerate(row))[:k]] for row in rows]
    )


@pytest.mark.parametrize("k", [1, 3, 1000])
def test_top_k_matches_a_reference_loop_with_ties(k):
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 4, (12, 1000)).astype(np.float32)  # many ties
    labels = np.repeat(np.arange(4), 3)
    np.testing.assert_array_equal(top_k_pseudo_labels(logits, k=k, level="sample"), reference_top_k(logits, k))
    means = np.stack([logits[labels == c].astype(np.float64).mean(0) for c in range(4)])
    np.testing.assert_array_equal(top_k_pseudo_labels(logits, labels, k=k, level="class"), reference_top_k(means, k))


def test_top_k_errors():
    logits = np.zeros((2, 1000))
    with pytest.raises(ValueError, match="1..1000"):
        top_k_pseudo_labels(logits, k=0, level="sample")
    with pytest.raises(ValueError, match="1..1000"):
        top_k_pseudo_labels(logits, k=1001, level="sample")
    with pytest.raises(ValueError, match="Unknown pseudo-label level"):
        top_k_pseudo_labels(logits, k=1, level="image")
    with pytest.raises(ValueError, match=r"Classes \[1\] have no images"):
        top_k_pseudo_labels(logits, labels=[0, 0], k=1, level="class", num_classes=2)


COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230), "grey": (128, 128, 128)}


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    """4 classes of 3 solid-colour PNGs with a little noise; all train classes."""
    root = write_colour_folder(
        tmp_path_factory.mktemp("colours"),
        per_class=3,
        size=(20, 24),
        noise=10,
        class_names=list(COLOURS),
        colours=list(COLOURS.values()),
    )
    return load_image_folder(root, test_classes=[]).train_split


def colour_classifier():
    """Mean RGB -> 1000 logits: red -> goldfish (1), green -> tree frog (31), blue -> jellyfish (107), grey -> 999 least."""
    images = keras.Input((32, 32, 3))
    mean = keras.layers.GlobalAveragePooling2D()(images)
    dense = keras.layers.Dense(1000)
    logits = dense(mean)
    weights = np.zeros((3, 1000), np.float32)
    weights[0, 1], weights[1, 31], weights[2, 107] = 1.0, 1.0, 1.0
    weights[:, 500] = 0.4  # second choice for every colour
    dense.set_weights([weights, np.zeros(1000, np.float32)])
    return keras.Model(images, logits, name="colour_classifier")


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """Precomputed random vectors for every primed ImageNet first synonym."""
    path = tmp_path_factory.mktemp("encoder") / "names.npz"
    texts = sorted(set(prime([first_synonym(name) for name in IMAGENET_CLASS_NAMES])))
    vectors = np.random.default_rng(1).normal(size=(len(texts), 6)).astype(np.float32)
    np.savez(path, texts=np.array(texts), embeddings=vectors)
    return f"precomputed:{path}"


def test_class_level_table_and_names(colour_folder, encoder_file, tmp_path, monkeypatch):
    classifier = colour_classifier()
    table, labels = pseudo_label_table(
        classifier,
        colour_folder,
        encoder_file,
        k=2,
        level="class",
        cache_dir=tmp_path,
        output_path=tmp_path / "pl.json",
        classifier_key=classifier_fingerprint(classifier),
    )
    assert table.shape == (4, 2, 6) and table.dtype == np.float32
    # float32 normalisation then norm of 6 terms: <= ~2 x (6/2 + 2) x 2^-24 = 6e-7.
    np.testing.assert_allclose(np.linalg.norm(table, axis=-1), 1.0, atol=1e-6)
    names = dict(zip(colour_folder.class_names, labels.names))
    assert names["red"][0] == "goldfish" and names["green"][0] == "tree frog" and names["blue"][0] == "jellyfish"
    assert all(row[1] == first_synonym(IMAGENET_CLASS_NAMES[500]) for key, row in names.items() if key != "grey")
    saved = json.loads((tmp_path / "pl.json").read_text())
    assert saved["level"] == "class" and saved["rows"][0]["pseudo_labels"] == labels.names[0]
    # The rows of the table are the embeddings of the chosen names.
    from tf_langdml.language import text_embeddings

    # The same float32 unit vectors, at most renormalised once more: a few ulps of entries <= 1.
    np.testing.assert_allclose(table[0], text_embeddings(labels.names[0], encoder_file, cache_dir=tmp_path), atol=1e-6)

    # A second call reads the cache: no classifier pass.
    def no_forward_pass(*args, **kwargs):
        raise AssertionError("the classifier ran again")

    monkeypatch.setattr(pseudo_labels, "_classifier_top_k_indices", no_forward_pass)
    again, _ = pseudo_label_table(
        classifier,
        colour_folder,
        encoder_file,
        k=2,
        level="class",
        cache_dir=tmp_path,
        verbose=False,
        classifier_key=classifier_fingerprint(classifier),
    )
    np.testing.assert_array_equal(again, table)


def test_sample_level_table_trains_through_fit(colour_folder, encoder_file, tmp_path):
    classifier = colour_classifier()
    table, labels = pseudo_label_table(
        classifier,
        colour_folder,
        encoder_file,
        k=3,
        level="sample",
        cache_dir=tmp_path,
        verbose=False,
        classifier_key=classifier_fingerprint(classifier),
    )
    assert table.shape == (12, 3, 6) and labels.indices.shape == (12, 3)
    assert labels.row_names[0] == colour_folder.class_names[colour_folder.labels[0]]
    model = tiny_guided_model(
        table, optimizer=keras.optimizers.SGD(0.01), model_arguments={"table_index": "sample_id"}, language_weight=1.0
    )
    train = make_train_dataset(
        colour_folder, batch_size=8, examples_per_class=2, seed=0, image_size=16, with_sample_ids=True
    )
    history = model.fit(train, steps_per_epoch=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["language_loss"][0])


def test_a_damaged_pseudo_label_cache_is_recomputed(colour_folder, encoder_file, tmp_path):
    classifier = colour_classifier()
    key = classifier_fingerprint(classifier)
    first, _ = pseudo_label_table(
        classifier, colour_folder, encoder_file, k=1, cache_dir=tmp_path, verbose=False, classifier_key=key
    )
    for path in (tmp_path / "pseudo_labels").glob("*.npz"):
        path.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="damaged pseudo-label cache"):
        again, _ = pseudo_label_table(
            classifier, colour_folder, encoder_file, k=1, cache_dir=tmp_path, verbose=False, classifier_key=key
        )
    np.testing.assert_array_equal(first, again)


def test_bad_arguments(colour_folder, encoder_file):
    with pytest.raises(ValueError, match="1..1000"):
        pseudo_label_table(colour_classifier(), colour_folder, encoder_file, k=1001, classifier_key="colour")
    with pytest.raises(ValueError, match="Unknown pseudo-label level"):
        pseudo_label_table(colour_classifier(), colour_folder, encoder_file, level="batch", classifier_key="colour")
