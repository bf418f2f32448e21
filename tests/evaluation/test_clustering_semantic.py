"""Clustering metrics and the semantic consistency of retrieval mistakes, against hand-computed values."""

import numpy as np
import pytest

from tf_langdml.evaluation import (
    clustering_metrics,
    group_recall_at_1,
    make_level_recall_at_1,
    nearest_classes,
    pairwise_f1,
    semantic_consistency,
)
from tf_langdml.language import prime


def test_pairwise_f1_hand_computed():
    # Same-class pairs (0,1), (2,3); same-cluster pairs (0,1), (0,2), (1,2); together (0,1):
    # precision 1/3, recall 1/2, F1 = 2 * (1/6) / (5/6) = 0.4.
    # float64 arithmetic on pair counts: rel=1e-12.
    assert pairwise_f1([0, 0, 1, 1], [5, 5, 5, 7]) == pytest.approx(0.4, rel=1e-12)
    assert pairwise_f1([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0, rel=1e-12)
    assert pairwise_f1([0, 1, 2], [0, 0, 0]) == 0.0  # no pair shares a class


def test_clustering_metrics_on_separated_and_mixed_data():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    centres = np.eye(4, 8) * 10
    separated = centres[labels] + rng.normal(size=(40, 8)) * 0.1
    result = clustering_metrics(separated, labels)
    # A perfect partition: scikit-learn's float64 NMI and the F1 of counts are 1 to ~1e-15.
    assert result["nmi"] == pytest.approx(1.0, rel=1e-12) and result["f1"] == pytest.approx(1.0, rel=1e-12)
    noise = clustering_metrics(rng.normal(size=(40, 8)), labels)
    assert noise["nmi"] < 0.5 and noise["f1"] < 0.6
    assert clustering_metrics(separated, labels, seed=0) == result  # seeded


@pytest.fixture
def four_classes(tmp_path):
    """Class names with language vectors: sparrow~finch close, truck~car close, birds far from vehicles."""
    names = ["sparrow", "finch", "truck", "car"]
    language = np.array([[1.0, 0.1, 0.0], [0.9, 0.3, 0.0], [0.0, 0.1, 1.0], [0.1, 0.0, 0.9]], np.float32)
    path = tmp_path / "names.npz"
    np.savez(path, texts=np.array(prime(names)), embeddings=language)
    unit = language / np.linalg.norm(language, axis=1, keepdims=True)
    return names, f"precomputed:{path}", unit @ unit.T


def test_nearest_classes_excludes_itself():
    similarity = np.array([[1.0, 0.5, 0.5], [0.5, 1.0, 0.2], [0.5, 0.2, 1.0]])
    np.testing.assert_array_equal(nearest_classes(similarity, 2), [[1, 2], [0, 2], [0, 1]])


def test_semantic_consistency_hand_computed(four_classes, tmp_path):
    names, encoder, language = four_classes
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    # Nearest neighbours given directly: query 0 -> a finch (mistake, close), query 4 -> a sparrow
    # (mistake, far), every other query finds its own class.
    neighbors = np.array([2, 0, 3, 2, 0, 4, 7, 6])
    result = semantic_consistency(None, labels, names, encoder, cache_dir=tmp_path, nearest=1, neighbors=neighbors)
    assert result["nn_mistakes"] == 2
    # Cosines of 3-d float32 unit rows, normalised and multiplied in float32 on both sides: a few ulps
    # (<= ~5 x 2^-24 = 3e-7) each.
    assert result["mistake_language_similarity"] == pytest.approx((language[0, 1] + language[2, 0]) / 2, abs=1e-6)
    # Nearest class in language: sparrow -> finch (hit), truck -> car (sparrow is not it: miss).
    assert result["mistakes_in_1_nearest_classes"] == pytest.approx(0.5, rel=1e-12)  # float64 counts
    assert result["chance_in_1_nearest_classes"] == pytest.approx(1 / 3, rel=1e-12)
    off = language[~np.eye(4, dtype=bool)]
    assert result["chance_language_similarity"] == pytest.approx(off.mean(), abs=1e-6)  # a mean of such cosines


def test_semantic_consistency_from_embeddings(four_classes, tmp_path):
    names, encoder, _ = four_classes
    labels = np.array([0, 0, 1, 1])
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [0.99, 0.1], [0.1, 0.99]], np.float32)  # 0->2, 1->3, 2->0, 3->1
    result = semantic_consistency(embeddings, labels, names[:2], encoder, cache_dir=tmp_path)
    # Only one other class exists, so it is among the "5 nearest" (the key keeps the requested number).
    assert result["nn_mistakes"] == 4 and result["mistakes_in_5_nearest_classes"] == pytest.approx(1.0, rel=1e-12)


def test_make_level_recall_at_1():
    names = ["bmw m3 coupe 2012", "bmw x5 suv 2007", "audi tt rs coupe 2012"]
    labels = np.array([0, 1, 2, 2])
    neighbors = np.array([1, 0, 0, 2])  # bmw->bmw (make hit), bmw->bmw, audi->bmw (miss), audi->audi
    assert make_level_recall_at_1(None, labels, names, neighbors=neighbors) == pytest.approx(
        3 / 4, rel=1e-12
    )  # float64
    # Groups x, y, y: x->y miss, y->x miss, y->x miss, y->y hit.
    assert group_recall_at_1(None, labels, ["x", "y", "y"], neighbors=neighbors) == pytest.approx(1 / 4, rel=1e-12)
