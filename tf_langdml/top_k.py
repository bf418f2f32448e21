"""Exact top-k inner products of queries against a gallery, scanned in chunks (the search signatures' kernel).

Plain TensorFlow ops only, so a SavedModel that calls it runs on stock TF Serving
(:mod:`tf_langdml.export` builds its ``search`` signatures on it).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

DEFAULT_CHUNK_ELEMENTS = 4 * 1024 * 1024  # scores held per gallery chunk by the search signatures (16 MB float32)


def top_k_in_chunks(
    queries: tf.Tensor | np.ndarray,
    gallery: tf.Tensor | tf.Variable | np.ndarray,
    k: int | tf.Tensor,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Exact top-``k`` inner products of ``queries`` (B, D) against ``gallery`` (N, D): (scores, indices) (B, k).

    The gallery is scanned in chunks of rows sized so that one chunk's score matrix
    holds about ``chunk_elements`` values (at least 1024 rows); after each chunk the
    running top-k and the chunk's own top-k are merged. Nothing larger than one
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
    chunk = tf.maximum(tf.cast(chunk_elements, tf.int32) // tf.maximum(batch, 1), 1024)
    num_chunks = (count + chunk - 1) // chunk

    def scan(index, values, indices):
        start = index * chunk
        rows = gallery[start : start + chunk]
        chunk_values, chunk_indices = tf.math.top_k(
            tf.matmul(queries, rows, transpose_b=True), tf.minimum(k, tf.shape(rows)[0])
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
