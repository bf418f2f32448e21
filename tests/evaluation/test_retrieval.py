"""Retrieval metrics: hand-computed tiny cases, a brute-force reference on clustered data, the chunked kNN."""

import dataclasses

import numpy as np
import pytest

from tf_langdml.evaluation import metrics_from_ranks, nearest_neighbors, positive_ranks, retrieval_metrics


def angles(*degrees):
    """Unit vectors in the plane at the given angles: cosine similarity = cos(angle difference)."""
    radians = np.deg2rad(np.asarray(degrees, np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def test_hand_computed_case():
    # Items at 0, 10, 20, 100, 110 degrees; labels a a b b a.
    # Query 0 (a): neighbours 1 (a), 2 (b), 3 (b), 4 (a) -> positives at ranks 1, 4.
    # Query 1 (a): 0 (a) and 2 (b) tie at 10 degrees -> pessimistic: 2, 0; then 3 (b), 4 (a):
    #   positives at ranks 2, 4.   [90 deg from 4 vs 80 deg from 3: 3 first]
    # Query 2 (b): 1 (a, 10), 0 (a, 20), 3 (b, 80), 4 (a, 90) -> positive at rank 3.
    # Query 3 (b): 4 (a, 10), 2 (b, 80), 1 (a, 90), 0 (a, 100) -> positive at rank 2.
    # Query 4 (a): 3 (b, 10), 2 (b, 90), 1 (a, 100), 0 (a, 110) -> positives at ranks 3, 4.
    embeddings = angles(0, 10, 20, 100, 110)
    labels = np.array([0, 0, 1, 1, 0])
    ranks, positives = positive_ranks(embeddings, labels)
    np.testing.assert_array_equal(positives, [2, 2, 1, 1, 2])
    np.testing.assert_array_equal(ranks, [[1, 4], [2, 4], [3, 0], [2, 0], [3, 4]])
    metrics = retrieval_metrics(embeddings, labels, ks=(1, 2, 4, 8))
    # The metrics are float64 arithmetic on integer ranks, as are the expected values: rel=1e-12.
    # (The tie of query 1 holds in float32 too: its exact sims differ by 8e-10, far below half an ulp,
    # and every FMA / non-FMA order rounds both to the same float32.)
    assert metrics["recall@1"] == pytest.approx(1 / 5, rel=1e-12)
    assert metrics["recall@2"] == pytest.approx(3 / 5, rel=1e-12)
    assert metrics["recall@4"] == pytest.approx(1.0, rel=1e-12)  # k > gallery
    assert metrics["recall@8"] == pytest.approx(1.0, rel=1e-12)
    # map@r: R = 2, 2, 1, 1, 2: q0 (1/1)/2, q1 (1/2)/2, q2 0, q3 0, q4 0.
    assert metrics["map@r"] == pytest.approx((0.5 + 0.25) / 5, rel=1e-12)
    # map@1000, divided by the class size (3, 3, 2, 2, 3):
    # q0 (1 + 2/4)/3, q1 (1/2 + 2/4)/3, q2 (1/3)/2, q3 (1/2)/2, q4 (1/3 + 2/4)/3.
    expected = (1.5 / 3 + 1.0 / 3 + (1 / 3) / 2 + 0.5 / 2 + (1 / 3 + 0.5) / 3) / 5
    assert metrics["map@1000"] == pytest.approx(expected, rel=1e-12)


def test_singleton_classes_are_misses_and_left_out_of_map_r():
    embeddings = angles(0, 5, 90)
    labels = np.array(["cat", "cat", "dog"])  # any label values
    metrics = retrieval_metrics(embeddings, labels, ks=(1,))
    # float64 on both sides (metrics from integer ranks): rel=1e-12.
    assert metrics["recall@1"] == pytest.approx(2 / 3, rel=1e-12)  # the dog has no other member: a miss
    assert metrics["map@r"] == pytest.approx(1.0, rel=1e-12)  # only the two cats count
    assert metrics["map@1000"] == pytest.approx((0.5 + 0.5 + 0.0) / 3, rel=1e-12)  # 1 hit / class size 2; dog 0


def test_a_collapsed_embedder_scores_nothing():
    embeddings = np.ones((6, 4), np.float32)  # every similarity ties
    labels = np.array([0, 0, 1, 1, 2, 2])
    metrics = retrieval_metrics(embeddings, labels, ks=(1,))
    assert metrics["recall@1"] == 0.0  # ties go against the query


def brute_force(embeddings, labels, ks):
    embeddings = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = embeddings.astype(np.float64) @ embeddings.T.astype(np.float64)
    count = len(labels)
    recall = {k: 0.0 for k in ks}
    map_r, map_1000 = [], []
    for query in range(count):
        others = [item for item in range(count) if item != query]
        order = sorted(others, key=lambda item: (-similarity[query, item], labels[item] == labels[query]))
        relevant = np.array([labels[item] == labels[query] for item in order])
        positives = int(relevant.sum())
        for k in ks:
            recall[k] += relevant[:k].any() / count
        precision = np.cumsum(relevant) / np.arange(1, count)
        if positives:
            map_r.append(np.sum(precision[:positives] * relevant[:positives]) / positives)
        map_1000.append(np.sum(precision[:1000] * relevant[:1000]) / (positives + 1))
    return {**{f"recall@{k}": recall[k] for k in ks}, "map@r": np.mean(map_r), "map@1000": np.mean(map_1000)}


@pytest.mark.parametrize("block_elements", [200, 5000, 32 * 1024 * 1024])
def test_against_brute_force_on_clustered_data(block_elements):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 30, 240)
    centres = rng.normal(size=(30, 6))
    embeddings = (centres[labels] + 0.8 * rng.normal(size=(240, 6))).astype(np.float32)
    metrics = retrieval_metrics(embeddings, labels, ks=(1, 2, 4, 8, 16), block_elements=block_elements)
    expected = brute_force(embeddings, labels, (1, 2, 4, 8, 16))
    # Metrics from ranks: float64 on both sides (1e-12). The ranks themselves come from float32 sims
    # here and float64 sims there; the closest positive / negative pair of any query is 1.5e-6 apart,
    # ~24 x 2^-24, beyond the <= ~6 x 2^-24 error of a 6-term float32 dot product.
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name


def test_map_1000_cuts_at_1000():
    # One class of 3 items far apart from each other, among 1100 distractors nearer to the query.
    rng = np.random.default_rng(0)
    distractors = rng.normal(size=(1100, 3)) * 0.01 + np.array([1.0, 0.0, 0.0])
    embeddings = np.concatenate([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], distractors]).astype(np.float32)
    labels = np.concatenate([[0, 0, 0], np.arange(1, 1101)])
    ranks, positives = positive_ranks(embeddings, labels)
    assert 1000 < ranks[0, 0] < ranks[0, 1]  # both of query 0's positives sit behind the distractors
    assert metrics_from_ranks(ranks[:1], positives[:1])["map@1000"] == 0.0
    # Had the first one been at rank 1000 exactly, it would count: 1 / 1000 / class size 3.
    assert metrics_from_ranks([[1000, 1500]], [2])["map@1000"] == pytest.approx(1 / 1000 / 3, rel=1e-12)  # float64


def test_bad_inputs():
    with pytest.raises(ValueError, match="3 embeddings but 2 labels"):
        retrieval_metrics(np.ones((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[np.nan, 1.0], [1.0, 0.0]]), [0, 0])
    with pytest.raises(ValueError, match="positive integers"):
        retrieval_metrics(np.eye(3), [0, 0, 1], ks=(0,))


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_chunked_knn_equals_brute_force(chunk_size):
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(150, 5)).astype(np.float32)
    indices, similarities = nearest_neighbors(embeddings, k=6, chunk_size=chunk_size)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    full = unit @ unit.T
    np.fill_diagonal(full, -np.inf)
    expected = np.argsort(-full, axis=1, kind="stable")[:, :6]
    # Exact indices from two float32 paths (TF matmul + top_k vs numpy): safe because neighbouring
    # sims in each top 7 are >= 1.3e-4 apart, ~2000 ulps.
    np.testing.assert_array_equal(indices, expected)
    # Cosines of 5-d unit vectors, float32 on both sides: <= ~5 x 2^-24 = 3e-7 per path.
    np.testing.assert_allclose(similarities, np.take_along_axis(full, expected, axis=1), atol=1e-6)


def test_knn_ties_go_to_the_lower_index_and_self_is_left_out():
    embeddings = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    indices, _ = nearest_neighbors(embeddings, k=2)
    np.testing.assert_array_equal(indices[:3], [[1, 2], [0, 2], [0, 1]])
    with pytest.raises(ValueError, match="k must be in 1..3"):
        nearest_neighbors(embeddings, k=4)


# -- query / gallery protocol ---------------------------------------------------------------------


def test_gallery_hand_computed_case():
    from tf_langdml.evaluation import gallery_positive_ranks

    # Gallery at 0, 10, 20, 90, 180 degrees with labels a b a b a; queries at 0 (a), 20 (b), 45 (c).
    # Query 0 (a), identical to gallery item 0, which is NOT removed: 0 (a, 0 deg), 10 (b), 20 (a), 90 (b),
    #   180 (a) -> P = 3, positives at ranks 1, 3, 5.
    # Query 1 (b), identical to gallery item 2 (a): 20 (a, 0 deg), 10 (b, 10), 0 (a, 20), 90 (b, 70), 180 (a)
    #   -> P = 2, positives at ranks 2, 4.
    # Query 2 (c): no gallery item of class c -> P = 0.
    # recall@1 = (1 + 0 + 0) / 3; recall@2 = (1 + 1 + 0) / 3 (query 2 is a miss, still counted).
    # map@r (R = P, query 2 left out): q0 (1/1 + 2/3) / 3 = 5/9; q1 (1/2) / 2 = 1/4 -> (5/9 + 1/4) / 2 = 29/72.
    # map@1000, divided by P (not P + 1): q0 (1 + 2/3 + 3/5) / 3 = 34/45; q1 (1/2 + 2/4) / 2 = 1/2; q2 0.
    gallery = angles(0, 10, 20, 90, 180)
    gallery_labels = np.array(["a", "b", "a", "b", "a"])
    queries = angles(0, 20, 45)
    query_labels = np.array(["a", "b", "c"])
    ranks, positives = gallery_positive_ranks(queries, query_labels, gallery, gallery_labels)
    np.testing.assert_array_equal(positives, [3, 2, 0])
    np.testing.assert_array_equal(ranks, [[1, 3, 5], [2, 4, 0], [0, 0, 0]])
    metrics = retrieval_metrics(
        queries, query_labels, ks=(1, 2), gallery_embeddings=gallery, gallery_labels=gallery_labels
    )
    # float64 arithmetic on integer ranks on both sides: rel=1e-12.
    assert metrics["recall@1"] == pytest.approx(1 / 3, rel=1e-12)
    assert metrics["recall@2"] == pytest.approx(2 / 3, rel=1e-12)
    assert metrics["map@r"] == pytest.approx(29 / 72, rel=1e-12)
    assert metrics["map@1000"] == pytest.approx((34 / 45 + 1 / 2 + 0) / 3, rel=1e-12)


def gallery_brute_force(queries, query_labels, gallery, gallery_labels, ks):
    """Full sort of the gallery per query; ties: the negative first."""
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    similarity = queries.astype(np.float64) @ gallery.T.astype(np.float64)
    count = len(query_labels)
    recall = {k: 0.0 for k in ks}
    map_r, map_1000 = [], []
    for query in range(count):
        order = sorted(
            range(len(gallery_labels)),
            key=lambda item: (-similarity[query, item], gallery_labels[item] == query_labels[query]),
        )
        relevant = np.array([gallery_labels[item] == query_labels[query] for item in order])
        positives = int(relevant.sum())
        for k in ks:
            recall[k] += relevant[:k].any() / count
        precision = np.cumsum(relevant) / np.arange(1, len(order) + 1)
        if positives:
            map_r.append(np.sum(precision[:positives] * relevant[:positives]) / positives)
        map_1000.append(np.sum(precision[:1000] * relevant[:1000]) / positives if positives else 0.0)
    return {**{f"recall@{k}": recall[k] for k in ks}, "map@r": np.mean(map_r), "map@1000": np.mean(map_1000)}


@pytest.mark.parametrize("block_elements", [200, 5000, 32 * 1024 * 1024])
def test_gallery_against_brute_force_with_ties_and_queries_in_the_gallery(block_elements):
    rng = np.random.default_rng(5)
    # Unit vectors with entries in {0, +-0.5, +-1}: every cosine is a multiple of 1/4, exact in float32 in any
    # summation order, so there are many exact ties between positives and negatives.
    axes = np.concatenate([np.eye(4), -np.eye(4)])
    halves = 0.5 * np.array(np.meshgrid(*[[-1, 1]] * 4)).reshape(4, -1).T
    points = np.concatenate([axes, halves]).astype(np.float32)
    gallery_labels = rng.integers(0, 6, 70)
    gallery = points[rng.integers(0, len(points), 70)]
    in_gallery = rng.choice(70, 15, replace=False)  # queries that are gallery items too
    queries = np.concatenate([points[rng.integers(0, len(points), 25)], gallery[in_gallery]])
    query_labels = np.concatenate([rng.integers(0, 8, 25), gallery_labels[in_gallery]])  # 6, 7: not in the gallery
    assert {6, 7} & set(query_labels.tolist())
    metrics = retrieval_metrics(
        queries,
        query_labels,
        ks=(1, 2, 4, 8, 16),
        block_elements=block_elements,
        gallery_embeddings=gallery,
        gallery_labels=gallery_labels,
    )
    expected = gallery_brute_force(queries, query_labels, gallery, gallery_labels, (1, 2, 4, 8, 16))
    # Exact similarities on both sides, metrics float64 on integer ranks: 1e-12.
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name


def test_gallery_against_brute_force_on_clustered_data_chunked_or_not():
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(25, 6))
    gallery_labels = rng.integers(0, 20, 300)  # classes 20..24 only among the queries
    gallery = (centres[gallery_labels] + 0.8 * rng.normal(size=(300, 6))).astype(np.float32)
    query_labels = np.concatenate([rng.integers(0, 25, 90), gallery_labels[:30]])
    queries = np.concatenate(
        [(centres[query_labels[:90]] + 0.8 * rng.normal(size=(90, 6))).astype(np.float32), gallery[:30]]
    )
    results = [
        retrieval_metrics(
            queries,
            query_labels,
            ks=(1, 4, 16),
            block_elements=block_elements,
            gallery_embeddings=gallery,
            gallery_labels=gallery_labels,
        )
        for block_elements in (100, 3000, 32 * 1024 * 1024)
    ]
    assert results[0] == results[1] == results[2]  # the same integer ranks whatever the blocks
    expected = gallery_brute_force(queries, query_labels, gallery, gallery_labels, (1, 4, 16))
    # Ranks from float32 sims here and float64 there: no positive / negative pair of a query is within
    # float32 error of a tie in this draw (the ranks agree); the metrics are float64 on both sides.
    for name, value in expected.items():
        assert results[0][name] == pytest.approx(value, rel=1e-12, abs=1e-12), name


def test_gallery_queries_of_missing_classes_are_misses_left_out_of_map_r():
    gallery, gallery_labels = angles(0, 5, 90), np.array([1, 1, 2])
    metrics = retrieval_metrics(
        angles(1, 180), np.array([1, 3]), ks=(1,), gallery_embeddings=gallery, gallery_labels=gallery_labels
    )
    assert metrics["recall@1"] == 0.5 and metrics["map@r"] == 1.0 and metrics["map@1000"] == 0.5
    none_found = retrieval_metrics(
        angles(1), np.array([3]), ks=(1,), gallery_embeddings=gallery, gallery_labels=gallery_labels
    )
    assert none_found == {"recall@1": 0.0, "map@r": 0.0, "map@1000": 0.0}


def test_gallery_bad_inputs():
    queries, gallery = np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="gallery_labels is missing"):
        retrieval_metrics(queries, [0, 1, 2], gallery_embeddings=gallery)
    with pytest.raises(ValueError, match="gallery_embeddings is missing"):
        retrieval_metrics(queries, [0, 1, 2], gallery_labels=[0, 1, 2])
    with pytest.raises(ValueError, match="query embeddings have dimension 3 but gallery embeddings 2"):
        retrieval_metrics(queries, [0, 1, 2], gallery_embeddings=np.eye(2), gallery_labels=[0, 1])
    with pytest.raises(ValueError, match="3 gallery embeddings but 2 gallery labels"):
        retrieval_metrics(queries, [0, 1, 2], gallery_embeddings=gallery, gallery_labels=[0, 1])
    with pytest.raises(ValueError, match="3 query embeddings but 1 query labels"):
        retrieval_metrics(queries, [0], gallery_embeddings=gallery, gallery_labels=[0, 1, 2])
    with pytest.raises(ValueError, match="one kind"):
        retrieval_metrics(queries, ["a", "b", "c"], gallery_embeddings=gallery, gallery_labels=[0, 1, 2])
    with pytest.raises(ValueError, match="non-empty"):
        retrieval_metrics(queries, [0, 1, 2], gallery_embeddings=np.zeros((0, 3)), gallery_labels=[])


def test_split_retrieval_metrics_follows_the_split_s_gallery_mask():
    from tf_langdml.data.splits import Split
    from tf_langdml.evaluation import split_retrieval_metrics

    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(4), 5)
    embeddings = rng.normal(size=(20, 3)).astype(np.float32)
    split = Split(np.array([f"{i}.jpg" for i in range(20)]), labels, tuple("abcd"), tuple("abcd"))
    assert split_retrieval_metrics(embeddings, split, ks=(1, 2)) == retrieval_metrics(embeddings, labels, (1, 2))
    gallery = np.arange(20) % 5 >= 2
    marked = dataclasses.replace(split, gallery=gallery)
    assert split_retrieval_metrics(embeddings, marked, (1, 2)) == retrieval_metrics(
        embeddings[~gallery],
        labels[~gallery],
        (1, 2),
        gallery_embeddings=embeddings[gallery],
        gallery_labels=labels[gallery],
    )
    # The mask follows subset and select_classes; a mask without gallery items is leave-one-out (None).
    np.testing.assert_array_equal(marked.subset(np.arange(3, 12)).gallery, gallery[3:12])
    np.testing.assert_array_equal(marked.select_classes([2, 0]).gallery, np.concatenate([gallery[10:15], gallery[:5]]))
    assert marked.subset(np.array([0, 1, 5])).gallery is None
    with pytest.raises(ValueError, match="are gallery images"):
        split_retrieval_metrics(embeddings[gallery], marked.subset(np.flatnonzero(gallery)))
    with pytest.raises(ValueError, match="bool mask"):
        dataclasses.replace(split, gallery=np.ones(19, bool))
