"""Retrieval metrics of the DML literature, exact and chunked (never an N x N matrix in memory).

Leave-one-out retrieval: every embedding queries all the others (cosine similarity).
For a query q with P = (class size - 1) positives, every metric depends only on the
ranks of its positives in q's neighbour list, r_1 < r_2 < ... < r_P:

- ``recall@k``: 1 if r_1 <= k. A query without positives is a miss.
- ``map@r``: (1/R) sum_{i: r_i <= R} i / r_i with R = P (precision at each relevant hit
  within the first R). Queries without positives are left out.
- ``map@1000``: (1/class size) sum_{i: r_i <= 1000} i / r_i, as the paper's code
  defines it (divided by the class size). A query without positives scores 0.

The rank of a positive is its position among positives (by similarity) plus the number
of negatives whose similarity is at least its own. So instead of sorting 1000
neighbours per query, :func:`positive_ranks` computes, block by block, only the
negatives at or above the weakest positive of each query and counts them against each
positive's similarity. This is exact. Ties between a positive and a negative count
against the query (the negative ranks first), so an embedder that maps everything to
one point scores 0, not 1.

Query / gallery retrieval (the In-Shop and re-identification protocol), with
``gallery_embeddings`` and ``gallery_labels`` given: every query is ranked against the
gallery only, and nothing is removed from the gallery (a query that is also a gallery
item finds itself). A query's positives are the gallery items with its label, P of them;
ranks and the tie rule are as above, and:

- ``recall@k``: 1 if r_1 <= k; a query whose class has no gallery item (P = 0) is a miss.
- ``map@r``: as above with R = P; queries with P = 0 are left out.
- ``map@1000``: (1/P) sum_{i: r_i <= 1000} i / r_i, divided by the number of relevant
  gallery items P. (Leave-one-out divides by the class size P + 1, which counts the
  query itself; here the query is not among the items to retrieve unless it is a gallery
  item too, in which case P already counts it.) A query with P = 0 scores 0.

:func:`split_retrieval_metrics` picks the protocol from a split: leave-one-out, or
query / gallery when the split carries a gallery mask (``Split.gallery``).

:func:`nearest_neighbors` is the plain chunked exact kNN (matmul + top-k; ties go to
the lower index), used for the 1-nearest-neighbour analyses.
"""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tf_langdml.errors import ArgumentError

DEFAULT_KS = (1, 2, 4, 8)
_BLOCK_ELEMENTS = 32 * 1024 * 1024  # block^2 x P_max: bounds the memory of one block's candidate test


def normalized_embeddings(embeddings: np.ndarray) -> np.ndarray:
    """(N, D) float32 unit rows; a clear error for an empty, non-2-D or non-finite array."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty (N, D) array; got shape {embeddings.shape}.")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError("embeddings contain NaN or Inf.")
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


def _labels(labels, count):
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != count:
        raise ValueError(f"{count} embeddings but {labels.shape[0]} labels.")
    _, labels = np.unique(labels, return_inverse=True)  # any hashable labels -> 0..C-1
    return labels.astype(np.int64)


def _positive_index(labels):
    """(N, P_max) indices of each item's positives (same label, not itself), -1 padded; and P per item."""
    order = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    max_positives = max(int(sizes.max()) - 1, 1)
    index = np.full((labels.size, max_positives), -1, np.int64)
    for label in np.flatnonzero(sizes > 1):
        members = order[starts[label] : starts[label] + sizes[label]]
        for position, member in enumerate(members):
            index[member, : sizes[label] - 1] = np.delete(members, position)
    return index, sizes[labels] - 1


@tf.function(reduce_retracing=True)
def _count_negatives(similarities, row_labels, column_labels, thresholds):
    """(rows, P): per row and positive threshold, negatives (other label) in the block with similarity >= it.

    ``thresholds`` are each row's positive similarities sorted ascending, padded with +inf;
    only similarities at or above a row's weakest positive are looked at.
    """
    candidates = (similarities >= thresholds[:, :1]) & (row_labels[:, None] != column_labels[None, :])
    where = tf.where(candidates)
    rows = where[:, 0]
    values = tf.gather_nd(similarities, where)
    at_or_above = tf.cast(values[:, None] >= tf.gather(thresholds, rows), tf.int32)
    return tf.math.unsorted_segment_sum(at_or_above, rows, tf.shape(similarities)[0])


@tf.function(reduce_retracing=True)
def _block_counts(rows, columns, row_labels, column_labels, row_thresholds, column_thresholds, symmetric):
    """Counts for the rows of block (i, j) and, when ``symmetric`` (i != j), for the rows of block (j, i)."""
    similarities = tf.matmul(rows, columns, transpose_b=True)
    row_counts = _count_negatives(similarities, row_labels, column_labels, row_thresholds)
    if symmetric:
        column_counts = _count_negatives(tf.transpose(similarities), column_labels, row_labels, column_thresholds)
    else:
        column_counts = tf.zeros_like(column_thresholds, tf.int32)
    return row_counts, column_counts


def positive_ranks(
    embeddings: np.ndarray, labels: np.ndarray, block_elements: int = _BLOCK_ELEMENTS
) -> tuple[np.ndarray, np.ndarray]:
    """Ranks (1-based, ascending, 0-padded) of each query's positives among all other items; and P per query.

    The similarity matrix is symmetric, so each off-diagonal block is computed once
    and counted for both its rows and its columns.

    Returns:
        (ranks, num_positives): ranks (N, P_max) int64, entry i of row q is the rank of
        q's i-th most similar positive (0 beyond ``num_positives[q]``).
    """
    embeddings = normalized_embeddings(embeddings)
    labels = _labels(labels, embeddings.shape[0])
    positive_index, num_positives = _positive_index(labels)
    count, max_positives = positive_index.shape
    thresholds = np.full((count, max_positives), np.inf, np.float32)
    for start in range(0, count, 4096):  # in chunks: (4096, P_max, D) at a time
        index = positive_index[start : start + 4096]
        similarities = np.einsum("nd,npd->np", embeddings[start : start + 4096], embeddings[np.maximum(index, 0)])
        thresholds[start : start + 4096] = np.sort(np.where(index >= 0, similarities, np.inf), axis=1)
    # Square blocks; the candidate test holds at most block^2 x P_max values.
    block = int(min(count, max(64, np.sqrt(block_elements / max_positives))))
    starts = list(range(0, count, block))
    embedding_tensor, label_tensor, threshold_tensor = (
        tf.constant(embeddings),
        tf.constant(labels),
        tf.constant(thresholds),
    )
    counts = np.zeros((count, max_positives), np.int64)
    for first, row_start in enumerate(starts):
        row_slice = slice(row_start, min(row_start + block, count))
        for column_start in starts[first:]:
            column_slice = slice(column_start, min(column_start + block, count))
            row_counts, column_counts = _block_counts(
                embedding_tensor[row_slice],
                embedding_tensor[column_slice],
                label_tensor[row_slice],
                label_tensor[column_slice],
                threshold_tensor[row_slice],
                threshold_tensor[column_slice],
                tf.constant(column_start != row_start),
            )
            counts[row_slice] += row_counts.numpy()
            if column_start != row_start:
                counts[column_slice] += column_counts.numpy()
    # A query's i-th most similar positive (1-based) sits in ascending column P_q - i.
    ranks = np.zeros((count, max_positives), np.int64)
    for row in np.flatnonzero(num_positives):
        positives = int(num_positives[row])
        descending = np.arange(1, positives + 1)
        ranks[row, :positives] = descending + counts[row, positives - descending]
    return ranks, num_positives


def metrics_from_ranks(
    ranks: np.ndarray,
    num_positives: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    map_cutoff: int = 1000,
    map_denominator: np.ndarray | None = None,
) -> dict[str, float]:
    """recall@k, map@r and map@<cutoff> from :func:`positive_ranks` (or :func:`gallery_positive_ranks`) output.

    ``map_denominator``: what each query's map@<cutoff> sum is divided by; default
    ``num_positives + 1``, the class size of leave-one-out retrieval (the paper's code).
    The query / gallery protocol passes ``num_positives``; a 0 there (no positive) scores 0.
    """
    ranks = np.asarray(ranks, np.float64)
    num_positives = np.asarray(num_positives)
    hit_number = np.arange(1, ranks.shape[1] + 1)[None, :]
    valid = hit_number <= num_positives[:, None]
    first = np.where(num_positives > 0, ranks[:, 0], np.inf)
    results = {f"recall@{k}": float(np.mean(first <= k)) for k in ks}
    precision = np.where(valid, hit_number / np.where(valid, ranks, 1.0), 0.0)
    within_r = valid & (ranks <= num_positives[:, None])
    has_positives = num_positives > 0
    map_r = np.sum(np.where(within_r, precision, 0.0), axis=1)[has_positives] / num_positives[has_positives]
    results["map@r"] = float(np.mean(map_r)) if map_r.size else 0.0
    within_cutoff = valid & (ranks <= map_cutoff)
    denominator = num_positives + 1 if map_denominator is None else np.maximum(np.asarray(map_denominator), 1)
    results[f"map@{map_cutoff}"] = float(np.mean(np.sum(np.where(within_cutoff, precision, 0.0), axis=1) / denominator))
    return results


def _gallery_labels(query_labels, query_count, gallery_labels, gallery_count):
    """Query and gallery labels numbered 0..C-1 through one np.unique: equal values, equal numbers."""
    query_labels = np.asarray(query_labels).reshape(-1)
    gallery_labels = np.asarray(gallery_labels).reshape(-1)
    if query_labels.shape[0] != query_count:
        raise ValueError(f"{query_count} query embeddings but {query_labels.shape[0]} query labels.")
    if gallery_labels.shape[0] != gallery_count:
        raise ValueError(f"{gallery_count} gallery embeddings but {gallery_labels.shape[0]} gallery labels.")
    numeric = [labels.dtype.kind in "biuf" for labels in (query_labels, gallery_labels)]
    if numeric[0] != numeric[1] and "O" not in (query_labels.dtype.kind, gallery_labels.dtype.kind):
        raise ValueError(
            f"query labels ({query_labels.dtype}) and gallery labels ({gallery_labels.dtype}) must be "
            "of one kind (both numbers or both strings): they are compared as values."
        )
    _, labels = np.unique(np.concatenate([query_labels, gallery_labels]), return_inverse=True)
    labels = labels.reshape(-1).astype(np.int64)
    return labels[:query_count], labels[query_count:]


def gallery_positive_ranks(
    query_embeddings: np.ndarray,
    query_labels: np.ndarray,
    gallery_embeddings: np.ndarray,
    gallery_labels: np.ndarray,
    block_elements: int = _BLOCK_ELEMENTS,
) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of each query's positives in the gallery (query / gallery protocol); and P per query.

    Positives of a query are the gallery items with its label (labels compared as
    values); no gallery item is left out, even one that is the query itself. The
    (Q, G) similarities are processed in blocks of at most about ``block_elements / P_max``
    entries; the ranks are exact, with the tie rule of :func:`positive_ranks`.

    Returns:
        (ranks, num_positives) as :func:`positive_ranks`: ranks (Q, P_max) int64, 1-based,
        ascending, 0-padded; num_positives (Q,) the query's class count in the gallery.
    """
    queries = normalized_embeddings(query_embeddings)
    gallery = normalized_embeddings(gallery_embeddings)
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"query embeddings have dimension {queries.shape[1]} but gallery embeddings {gallery.shape[1]}."
        )
    query_count, gallery_count = queries.shape[0], gallery.shape[0]
    query_labels, gallery_labels = _gallery_labels(query_labels, query_count, gallery_labels, gallery_count)
    num_classes = int(max(query_labels.max(), gallery_labels.max())) + 1
    sizes = np.bincount(gallery_labels, minlength=num_classes)
    num_positives = sizes[query_labels]
    max_positives = max(int(num_positives.max()), 1)
    members = np.argsort(gallery_labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # Each query's positive similarities, ascending, +inf padded (in chunks of queries: (chunk, P_max, D)).
    thresholds = np.full((query_count, max_positives), np.inf, np.float32)
    chunk = max(1, min(4096, block_elements // max_positives))
    slots = np.arange(max_positives)[None, :]
    for start in range(0, query_count, chunk):
        labels = query_labels[start : start + chunk]
        valid = slots < sizes[labels][:, None]
        index = members[np.minimum(starts[labels][:, None] + slots, gallery_count - 1)]
        similarities = np.einsum("nd,npd->np", queries[start : start + chunk], gallery[index])
        thresholds[start : start + chunk] = np.sort(np.where(valid, similarities, np.inf), axis=1)
    # Blocks of queries x gallery items; the candidate test holds at most about block_elements values.
    block = int(max(64, np.sqrt(block_elements / max_positives)))
    query_block, gallery_block = min(query_count, block), min(gallery_count, block)
    gallery_tensor, gallery_label_tensor = tf.constant(gallery), tf.constant(gallery_labels)
    counts = np.zeros((query_count, max_positives), np.int64)
    for row_start in range(0, query_count, query_block):
        rows = slice(row_start, min(row_start + query_block, query_count))
        if not num_positives[rows].any():
            continue  # no query of the block has a positive: nothing to count
        row_tensor = tf.constant(queries[rows])
        row_labels, row_thresholds = tf.constant(query_labels[rows]), tf.constant(thresholds[rows])
        for column_start in range(0, gallery_count, gallery_block):
            columns = slice(column_start, min(column_start + gallery_block, gallery_count))
            counts[rows] += _query_gallery_counts(
                row_tensor, gallery_tensor[columns], row_labels, gallery_label_tensor[columns], row_thresholds
            ).numpy()
    # A query's i-th most similar positive (1-based) sits in ascending column P_q - i.
    ranks = np.zeros((query_count, max_positives), np.int64)
    for row in np.flatnonzero(num_positives):
        positives = int(num_positives[row])
        descending = np.arange(1, positives + 1)
        ranks[row, :positives] = descending + counts[row, positives - descending]
    return ranks, num_positives.astype(np.int64)


@tf.function(reduce_retracing=True)
def _query_gallery_counts(queries, gallery, query_labels, gallery_labels, thresholds):
    return _count_negatives(tf.matmul(queries, gallery, transpose_b=True), query_labels, gallery_labels, thresholds)


def retrieval_metrics(
    query_embeddings: np.ndarray,
    query_labels: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    block_elements: int = _BLOCK_ELEMENTS,
    *,
    gallery_embeddings: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
) -> dict[str, float]:
    """``recall@k`` for each k, ``map@r`` and ``map@1000`` of cosine retrieval (see module doc).

    Without a gallery: leave-one-out, every embedding queries all the others. With
    ``gallery_embeddings`` and ``gallery_labels`` (keyword-only, so that the positional
    ``retrieval_metrics(embeddings, labels, ks)`` keeps its meaning): the query / gallery
    protocol, each query against the whole gallery, P = its class's count in the gallery.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ArgumentError(f"ks must be positive integers; got {ks}.", argument="ks")
    if (gallery_embeddings is None) != (gallery_labels is None):
        missing = "gallery_labels" if gallery_labels is None else "gallery_embeddings"
        raise ValueError(f"A gallery needs both gallery_embeddings and gallery_labels; {missing} is missing.")
    if gallery_embeddings is None:
        ranks, num_positives = positive_ranks(query_embeddings, query_labels, block_elements)
        return metrics_from_ranks(ranks, num_positives, ks)
    ranks, num_positives = gallery_positive_ranks(
        query_embeddings, query_labels, gallery_embeddings, gallery_labels, block_elements
    )
    return metrics_from_ranks(ranks, num_positives, ks, map_denominator=num_positives)


def split_retrieval_metrics(
    embeddings: np.ndarray, split, ks: Sequence[int] = DEFAULT_KS, block_elements: int = _BLOCK_ELEMENTS
) -> dict[str, float]:
    """:func:`retrieval_metrics` of a split's embeddings (N, D), in split order, by the split's protocol.

    ``split.gallery`` None (or without a True): leave-one-out over all N items. Else an
    (N,) bool mask: the gallery rows are the gallery and the other rows the queries (query /
    gallery protocol); a split of only gallery images is an error.
    """
    labels = np.asarray(split.labels)
    gallery = getattr(split, "gallery", None)
    if gallery is None or not np.any(gallery):
        return retrieval_metrics(embeddings, labels, ks, block_elements)
    gallery = np.asarray(gallery, dtype=bool).reshape(-1)
    embeddings = np.asarray(embeddings)
    if gallery.shape[0] != labels.shape[0] or embeddings.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{embeddings.shape[0]} embeddings, {labels.shape[0]} labels and a gallery mask of "
            f"{gallery.shape[0]}: they must be equal."
        )
    if gallery.all():
        raise ValueError(
            f"All {gallery.size} images of the split are gallery images: the query / gallery protocol "
            "needs query images (the ones not marked as gallery)."
        )
    return retrieval_metrics(
        embeddings[~gallery],
        labels[~gallery],
        ks,
        block_elements,
        gallery_embeddings=embeddings[gallery],
        gallery_labels=labels[gallery],
    )


@tf.function(reduce_retracing=True)
def _top_k_block(queries, gallery, k):
    return tf.math.top_k(tf.matmul(queries, gallery, transpose_b=True), k)


def nearest_neighbors(
    embeddings: np.ndarray, k: int = 1, chunk_size: int = 1024, exclude_self: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine kNN in chunks of queries: (indices (N, k), similarities (N, k)); ties -> lower index.

    With ``exclude_self`` each item is left out of its own list (leave-one-out).
    """
    embeddings = normalized_embeddings(embeddings)
    count = embeddings.shape[0]
    limit = count - 1 if exclude_self else count
    if not 1 <= k <= limit:
        raise ValueError(f"k must be in 1..{limit} for {count} embeddings; got {k}.")
    gallery = tf.constant(embeddings)
    indices = np.zeros((count, k), np.int64)
    similarities = np.zeros((count, k), np.float32)
    for start in range(0, count, chunk_size):
        stop = min(start + chunk_size, count)
        values, found = _top_k_block(gallery[start:stop], gallery, min(k + int(exclude_self), count))
        values, found = values.numpy(), found.numpy()
        if exclude_self:
            keep = found != np.arange(start, stop)[:, None]
            keep[keep.sum(axis=1) > k, -1] = False  # self was not among the k + 1: drop the last
            found = found[keep].reshape(stop - start, k)
            values = values[keep].reshape(stop - start, k)
        indices[start:stop], similarities[start:stop] = found, values
    return indices, similarities
