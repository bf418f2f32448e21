"""intra, inter, intra_over_inter and rho_spectrum against a float64 numpy/scipy reference and by hand."""

import numpy as np
import pytest
from scipy.spatial import distance
from scipy.stats import entropy

from tf_langdml.evaluation import embedding_space_metrics

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


def reference(embeddings, labels):
    """The definitions of docs/metrics.md, pair by pair, in float64 (scipy's cosine distance and SVD)."""
    x = np.asarray(embeddings, np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    classes = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    per_class = []
    for members in classes:
        if members.size > 1:  # a class of one image has no pair: left out
            dists = distance.cdist(x[members], x[members], "cosine")
            per_class.append(dists.sum() / (members.size**2 - members.size))
    means = np.stack([x[members].mean(axis=0) for members in classes])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    mean_dists = distance.cdist(means, means, "cosine")
    intra = float(np.mean(per_class))
    inter = float(mean_dists.sum() / (len(classes) ** 2 - len(classes)))
    singular = np.linalg.svd(x, compute_uv=False)
    tail = singular[1:]
    rho = float(entropy(np.full(tail.size, 1.0 / tail.size), tail / tail.sum()))  # KL(uniform || p)
    return {"intra": intra, "inter": inter, "intra_over_inter": intra / inter, "rho_spectrum": rho}, singular


@pytest.fixture
def fixture():
    """60 float32 embeddings in 8 dimensions, 5 classes of 25, 17, 11, 6 and 1 images (shuffled), around class centres."""
    rng = np.random.default_rng(3)
    sizes = [25, 17, 11, 6, 1]
    labels = rng.permutation(np.repeat(np.arange(len(sizes)) * 7 + 2, sizes))  # labels need not be 0..C-1
    centres = rng.normal(size=(labels.max() + 1, 8))
    embeddings = (centres[labels] + 0.8 * rng.normal(size=(labels.size, 8))) * rng.uniform(0.5, 3.0, (labels.size, 1))
    return embeddings.astype(np.float32), labels


@pytest.mark.parametrize("block_rows", [4096, 7, 1])
def test_the_four_diagnostics_match_the_pairwise_reference(fixture, block_rows):
    embeddings, labels = fixture
    expected, singular = reference(embeddings, labels)
    found = embedding_space_metrics(embeddings, labels, block_rows=block_rows)
    count, dimension = embeddings.shape
    # Both sides compute in float64 from the same float32 numbers. intra and inter: each side sums at most
    # N^2 terms of size <= 2 built from D-term dot products; floating summation is off by at most
    # (terms) x eps64 x (bound on their sizes), and the per-class and per-pair divisions only shrink it.
    pair_tolerance = 4 * (count**2 + dimension) * EPS64
    assert found["intra"] == pytest.approx(expected["intra"], abs=pair_tolerance)
    assert found["inter"] == pytest.approx(expected["inter"], abs=pair_tolerance)
    # The ratio: relative errors add (inter is far from the 1e-8 floor here).
    ratio_tolerance = expected["intra_over_inter"] * 2 * pair_tolerance / min(expected["intra"], expected["inter"])
    assert found["intra_over_inter"] == pytest.approx(expected["intra_over_inter"], abs=ratio_tolerance)
    # rho: the Gram route misplaces a singular value s_i by about N·D·eps64·s_1^2 / s_i, the SVD by
    # N·D·eps64·s_1; rho = -log(n) - mean(log p_i) moves by at most 2·max(δs) / s_min.
    first, smallest = singular[0], singular[-1]
    moved = count * dimension * EPS64 * (first**2 / smallest + first)
    assert found["rho_spectrum"] == pytest.approx(expected["rho_spectrum"], abs=4 * moved / smallest)


def test_two_classes_at_known_angles_give_known_intra_and_inter():
    # Class a: two unit vectors at ±30° around 0°; class b: at ±30° around 90°. Each class's pair is
    # 60° apart: intra = 1 - cos 60° = 1/2. Their means point at 0° and 90°: inter = 1 - cos 90° = 1.
    def at(degrees):
        return [np.cos(np.radians(degrees)), np.sin(np.radians(degrees)), 0.0]

    embeddings = np.array([at(-30), at(30), at(60), at(120)], np.float32) * np.float32(2.5)  # any length
    found = embedding_space_metrics(embeddings, np.array(["a", "a", "b", "b"]))
    # The float32 inputs move each coordinate by <= eps32/2 relative, so each cosine by <= 2·eps32.
    assert found["intra"] == pytest.approx(0.5, abs=4 * EPS32)
    assert found["inter"] == pytest.approx(1.0, abs=4 * EPS32)
    assert found["intra_over_inter"] == pytest.approx(0.5, abs=8 * EPS32)


def test_a_class_of_one_image_is_left_out_of_intra_but_counts_in_inter():
    def at(degrees):
        return [np.cos(np.radians(degrees)), np.sin(np.radians(degrees))]

    pairs = np.array([at(-30), at(30), at(60), at(120)], np.float64)
    with_single = np.concatenate([pairs, [at(180)]])
    found = embedding_space_metrics(with_single, np.array([0, 0, 1, 1, 2]))
    # intra: only classes 0 and 1 have pairs, both 60° apart: 1/2, as without the single image.
    assert found["intra"] == pytest.approx(0.5, abs=4 * EPS64)
    # inter: means at 0°, 90°, 180°: distances 1, 2, 1 over the 3 pairs: 4/3.
    assert found["inter"] == pytest.approx(4 / 3, abs=8 * EPS64)


def test_an_orthonormal_basis_has_a_flat_spectrum():
    basis = np.linalg.qr(np.random.default_rng(0).normal(size=(16, 16)))[0].astype(np.float32)
    found = embedding_space_metrics(basis, np.arange(16) % 4)
    # Rounded to float32 each singular value is 1 within ~ sqrt(D)·eps32; rho moves by <= 2·max(δs)/s_min.
    assert found["rho_spectrum"] == pytest.approx(0.0, abs=4 * np.sqrt(16) * EPS32)
    # Twice the basis (32 rows): every singular value is sqrt(2), still flat.
    doubled = embedding_space_metrics(np.concatenate([np.eye(8), np.eye(8)]), np.arange(16) % 4)
    assert doubled["rho_spectrum"] == pytest.approx(0.0, abs=8 * EPS64)


def test_a_known_spectrum_gives_the_hand_derived_rho():
    # Rows e1 x4, e2 x2, e3: X^T X = diag(4, 2, 1), singular values 2, sqrt(2), 1. Dropping the first,
    # p = (sqrt(2), 1) / (sqrt(2) + 1) and KL(U || p) = 1/2 log(1/4 / (p1 p2)) = 1/2 log((sqrt(2) + 1)^2 / (4 sqrt(2))).
    embeddings = np.eye(3)[[0, 0, 0, 0, 1, 1, 2]]
    found = embedding_space_metrics(embeddings, np.array([0, 0, 1, 1, 2, 2, 2]))
    expected = 0.5 * np.log((np.sqrt(2) + 1) ** 2 / (4 * np.sqrt(2)))
    assert found["rho_spectrum"] == pytest.approx(expected, abs=16 * EPS64)


def test_undefined_diagnostics_are_left_out():
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(6, 4))
    one_class = embedding_space_metrics(embeddings, np.zeros(6))
    assert set(one_class) == {"intra", "rho_spectrum"}  # no pair of classes
    all_single = embedding_space_metrics(embeddings, np.arange(6))
    assert set(all_single) == {"inter", "rho_spectrum"}  # no pair of images of one class
    # Every image the same point: one direction, the spectrum after s_1 is all zero, KL(U || p) infinite.
    collapsed = embedding_space_metrics(np.ones((6, 4)), np.arange(6) % 2)
    assert "rho_spectrum" not in collapsed and collapsed["intra"] == pytest.approx(0.0, abs=16 * EPS64)
    # A single image: nothing is defined.
    assert embedding_space_metrics(embeddings[:1], [0]) == {}


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="6 embeddings but 5 labels"):
        embedding_space_metrics(np.ones((6, 4)), np.zeros(5))
    with pytest.raises(ValueError, match="NaN or Inf"):
        embedding_space_metrics(np.full((2, 2), np.nan), [0, 1])
    with pytest.raises(ValueError, match="block_rows must be >= 1; got 0"):
        embedding_space_metrics(np.ones((2, 2)), [0, 1], block_rows=0)
