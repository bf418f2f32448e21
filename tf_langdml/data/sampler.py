"""Class-balanced batches: k classes x m images each, as a pure function of the step."""

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

_INT64_MAX = np.iinfo(np.int64).max


def class_balanced_indices(
    labels: np.ndarray | Sequence[int],
    batch_size: int,
    examples_per_class: int = 2,
    seed: int = 0,
    start_batch: int = 0,
) -> tf.data.Dataset:
    """An infinite dataset of index batches with ``batch_size / examples_per_class`` classes each.

    Classes are dealt out from a fresh seeded permutation every pass of
    ``ceil(C / k)`` batches (the last batch of a pass is topped up from the start of
    the same permutation), so every class appears at least once per pass and the
    classes of one batch are distinct. Within a class, ``examples_per_class``
    distinct images are drawn at random; a class with fewer images than that is
    drawn with replacement. Batch ``b`` depends only on ``(seed, b)``, so a run
    resumed at step ``b`` sees exactly the batches an unbroken run would
    (``start_batch=b``).

    Args:
        labels: (N,) integer labels of the dataset the indices point into.
        batch_size: images per batch; a multiple of ``examples_per_class``.
        examples_per_class: m, images per class in a batch (the paper: 2).
        seed: integer seed.
        start_batch: index of the first batch to produce.

    Returns:
        ``tf.data.Dataset`` of int64 vectors of length ``batch_size``, grouped by
        class: positions ``[i*m, (i+1)*m)`` hold one class.

    Raises:
        ValueError: ``batch_size`` not divisible by ``examples_per_class``, or more
            classes per batch than the dataset has.
    """
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        raise ValueError("class_balanced_indices got no labels; the split is empty.")
    batch_size, examples_per_class = int(batch_size), int(examples_per_class)
    if examples_per_class < 1 or batch_size < 1 or batch_size % examples_per_class:
        raise ValueError(
            f"batch_size={batch_size} must be a positive multiple of examples_per_class="
            f"{examples_per_class} (for example {max(1, batch_size // max(1, examples_per_class)) * max(1, examples_per_class)})."
        )
    classes_per_batch = batch_size // examples_per_class
    _, class_of_sample, counts = np.unique(labels, return_inverse=True, return_counts=True)
    num_classes = counts.size
    if classes_per_batch > num_classes:
        raise ValueError(
            f"batch_size={batch_size} with examples_per_class={examples_per_class} needs "
            f"{classes_per_batch} distinct classes per batch, but the data has {num_classes}. "
            f"Use a batch_size of at most {num_classes * examples_per_class}, or more images per class."
        )
    samples_by_class = tf.constant(np.argsort(class_of_sample, kind="stable").astype(np.int64))
    class_starts = tf.constant(np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64))
    class_counts = tf.constant(counts.astype(np.int64))
    max_count = int(counts.max())
    batches_per_pass = math.ceil(num_classes / classes_per_batch)
    base_seed = tf.constant([int(seed), 0], dtype=tf.int64)
    class_stream = tf.random.experimental.stateless_fold_in(base_seed, 1)
    image_stream = tf.random.experimental.stateless_fold_in(base_seed, 2)

    def batch_indices(batch):
        pass_index = batch // batches_per_pass
        position_in_pass = batch % batches_per_pass
        class_seed = tf.random.experimental.stateless_fold_in(class_stream, pass_index)
        permutation = tf.argsort(tf.random.stateless_uniform([num_classes], seed=class_seed))
        slots = (position_in_pass * classes_per_batch + tf.range(classes_per_batch, dtype=tf.int64)) % num_classes
        classes = tf.gather(permutation, slots)
        counts_here = tf.gather(class_counts, classes)

        image_seed = tf.random.experimental.stateless_fold_in(image_stream, batch)
        keys = tf.random.stateless_uniform([classes_per_batch, max_count], seed=image_seed)
        valid = tf.range(max_count, dtype=tf.int64)[tf.newaxis, :] < counts_here[:, tf.newaxis]
        keys = tf.where(valid, keys, 2.0)  # padding sorts last
        _, distinct = tf.math.top_k(-keys, k=min(examples_per_class, max_count))
        distinct = tf.cast(distinct, tf.int64)
        if examples_per_class > max_count:
            distinct = tf.pad(distinct, [[0, 0], [0, examples_per_class - max_count]])
        replacement_seed = tf.random.experimental.stateless_fold_in(image_seed, 1)
        uniform = tf.random.stateless_uniform([classes_per_batch, examples_per_class], seed=replacement_seed)
        with_replacement = tf.cast(tf.floor(uniform * tf.cast(counts_here[:, tf.newaxis], tf.float32)), tf.int64)
        with_replacement = tf.minimum(with_replacement, counts_here[:, tf.newaxis] - 1)
        positions = tf.where(counts_here[:, tf.newaxis] >= examples_per_class, distinct, with_replacement)
        indices = tf.gather(samples_by_class, tf.gather(class_starts, classes)[:, tf.newaxis] + positions)
        return tf.reshape(indices, [batch_size])

    return tf.data.Dataset.range(int(start_batch), _INT64_MAX).map(
        tf.autograph.experimental.do_not_convert(batch_indices)
    )
