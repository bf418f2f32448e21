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

:func:`nearest_neighbors` is the plain chunked exact kNN (matmul + top-k; ties go to
the lower index), used for the 1-nearest-neighbour analyses.
"""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

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
    embedding_tensor, label_tensor, threshold_tensor = tf.constant(embeddings), tf.constant(labels), tf.constant(thresholds)
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
    ranks: np.ndarray, num_positives: np.ndarray, ks: Sequence[int] = DEFAULT_KS, map_cutoff: int = 1000
) -> dict[str, float]:
    """recall@k, map@r and map@<cutoff> from :func:`positive_ranks` output."""
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
    results[f"map@{map_cutoff}"] = float(np.mean(np.sum(np.where(within_cutoff, precision, 0.0), axis=1) / (num_positives + 1)))
    return results


def retrieval_metrics(
    embeddings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = DEFAULT_KS, block_elements: int = _BLOCK_ELEMENTS
) -> dict[str, float]:
    """``recall@k`` for each k, ``map@r`` and ``map@1000`` of leave-one-out cosine retrieval (see module doc)."""
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers; got {ks}.")
    ranks, num_positives = positive_ranks(embeddings, labels, block_elements)
    return metrics_from_ranks(ranks, num_positives, ks)


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
