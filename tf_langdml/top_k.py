"""Exact top-k inner products of queries against a gallery, scanned in chunks (the search signatures' kernel).

Plain TensorFlow ops only, so a SavedModel that calls it runs on stock TF Serving
(:mod:`tf_langdml.export` builds its ``search`` signatures on it).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

DEFAULT_CHUNK_ELEMENTS = 4 * 1024 * 1024  # scores held per gallery chunk by the search signatures (16 MB float32)
GROUP_ROWS = 64  # gallery rows per group whose best score is compared first (docs/benchmarks.md, "Gallery search")
# Group selection while k groups hold at most 1/GROUPED_SELECTION_FACTOR of a chunk's rows; else a plain top_k.
GROUPED_SELECTION_FACTOR = 4


def top_k_in_chunks(
    queries: tf.Tensor | np.ndarray,
    gallery: tf.Tensor | tf.Variable | np.ndarray,
    k: int | tf.Tensor,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Exact top-``k`` inner products of ``queries`` (B, D) against ``gallery`` (N, D): (scores, indices) (B, k).

    The gallery is scanned in chunks of rows sized so that one chunk's score matrix
    holds about ``chunk_elements`` values (at least 1024 rows); after each chunk the
    running top-k and the chunk's own top-k are merged. A chunk's top-k is read
    through the best score of each group of :data:`GROUP_ROWS` rows (one ``reduce_max``
    pass, then a selection among the ``k`` best groups' rows only) while those groups
    are a small part of the chunk, else by one ``top_k`` over the chunk's scores: the
    same values and rows either way. Nothing larger than one
    chunk's (B, chunk) scores exists at a time (the loop runs its iterations one after
    another). Equal scores rank the lower gallery index first, as one stable
    descending sort of all N scores would. ``k`` must be in 1..N (a graph assertion
    names both otherwise). Zero queries answer (0, k) without a matmul or a loop. Plain
    TensorFlow ops only (stock TF Serving runs it).
    """
    queries = tf.convert_to_tensor(queries, tf.float32)
    k = tf.cast(k, tf.int32)
    count = tf.shape(gallery)[0]
    check = tf.debugging.Assert(
        (k >= 1) & (k <= count),
        [
            tf.strings.format(
                "k must be between 1 and the number of gallery items; got k = {} for a gallery of {} items.", (k, count)
            )
        ],
    )
    with tf.control_dependencies([check]):
        batch = tf.shape(queries)[0]
    return tf.cond(
        batch > 0,
        lambda: _scan_in_chunks(queries, gallery, k, chunk_elements),
        lambda: (tf.zeros([0, k], tf.float32), tf.zeros([0, k], tf.int32)),
    )


def _scan_in_chunks(queries, gallery, k, chunk_elements):
    """:func:`top_k_in_chunks` for a batch of at least one query, ``k`` already checked."""
    count = tf.shape(gallery)[0]
    batch = tf.shape(queries)[0]
    chunk = chunk_rows(batch, chunk_elements)
    num_chunks = (count + chunk - 1) // chunk
    # Few candidates against the chunk: select through the group maxima; else one top_k over the chunk's scores.
    by_groups = k * GROUP_ROWS * GROUPED_SELECTION_FACTOR <= chunk

    def scan(index, values, indices):
        start = index * chunk
        rows = gallery[start : start + chunk]
        scores = tf.matmul(queries, rows, transpose_b=True)
        chunk_k = tf.minimum(k, tf.shape(rows)[0])
        chunk_values, chunk_indices = tf.cond(
            by_groups,
            lambda: _top_k_by_groups(scores, chunk_k),
            lambda: tuple(tf.math.top_k(scores, chunk_k)),
        )
        # Earlier chunks first: top_k puts the lower position first among equal values.
        values = tf.concat([values, chunk_values], axis=1)
        indices = tf.concat([indices, chunk_indices + start], axis=1)
        values, kept = tf.math.top_k(values, tf.minimum(k, tf.shape(values)[1]))
        return index + 1, values, tf.gather(indices, kept, batch_dims=1)

    _, values, indices = tf.while_loop(
        lambda index, values, indices: index < num_chunks,
        scan,
        (tf.constant(0), tf.zeros([batch, 0], tf.float32), tf.zeros([batch, 0], tf.int32)),
        shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None]), tf.TensorShape([None, None])),
        parallel_iterations=1,
    )
    return values, indices


def chunk_rows(batch: int | tf.Tensor, chunk_elements: int | tf.Tensor) -> tf.Tensor:
    """Gallery rows per chunk for ``batch`` queries: about ``chunk_elements`` scores, at least 1024 rows, and a
    whole number of :data:`GROUP_ROWS` groups (so only the last chunk can end in a partial group)."""
    groups = tf.cast(chunk_elements, tf.int32) // tf.maximum(tf.cast(batch, tf.int32), 1) // GROUP_ROWS
    return tf.maximum(groups, 1024 // GROUP_ROWS) * GROUP_ROWS


def _top_k_by_groups(scores, k):
    """``tf.math.top_k(scores, k)`` (the same values and positions, ties included) read through group maxima.

    The columns are cut into groups of :data:`GROUP_ROWS`. Order the entries by
    (score descending, position ascending), as ``top_k`` does: then every entry of the
    top ``k`` lies in one of the ``k`` groups whose best entries rank highest (were it
    in another group, that group's best would rank at or above it, and below ``k``
    better bests of other groups: ``k`` entries ranked above it). Those groups, taken
    in column order, hold the top ``k`` in their original relative order, so one
    ``top_k`` over them breaks ties as one over all columns would. Costs one pass of
    ``reduce_max`` over the scores instead of a selection over every column.
    """
    batch, columns = tf.shape(scores)[0], tf.shape(scores)[1]
    padding = (-columns) % GROUP_ROWS
    # -inf after the last column: a partial group's padding never outranks a real score.
    scores = tf.cond(
        padding > 0,
        lambda: tf.pad(scores, [[0, 0], [0, padding]], constant_values=-np.inf),
        lambda: scores,
    )
    groups = tf.reshape(scores, [batch, -1, GROUP_ROWS])
    # top_k ranks equal maxima by group position, the same order as the maxima's own columns.
    _, best_groups = tf.math.top_k(tf.reduce_max(groups, axis=2), tf.minimum(k, tf.shape(groups)[1]))
    best_groups = tf.sort(best_groups, axis=1)
    candidates = tf.reshape(tf.gather(groups, best_groups, batch_dims=1), [batch, -1])
    values, positions = tf.math.top_k(candidates, k)
    columns_found = tf.gather(best_groups, positions // GROUP_ROWS, batch_dims=1) * GROUP_ROWS
    return values, columns_found + positions % GROUP_ROWS
