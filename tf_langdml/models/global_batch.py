"""The global batch under tf.distribute: every replica computes the losses of all replicas' examples."""

from __future__ import annotations

import tensorflow as tf


def num_replicas() -> int:
    """The number of replicas in sync in the current replica context (1 outside tf.distribute)."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def gather_global_batch(
    embeddings: tf.Tensor, labels: tf.Tensor, sample_ids: tf.Tensor | None, features: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None, tf.Tensor | None]:
    """Under tf.distribute: every replica's embeddings, labels, sample ids and features, in replica order.

    The losses are then those of the global batch, whatever the number of replicas
    (docs/loss.md); ``all_gather`` passes gradients back to each replica's own slice.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return embeddings, labels, sample_ids, features
    embeddings = context.all_gather(embeddings, axis=0)
    labels = context.all_gather(labels, axis=0)
    if sample_ids is not None:
        sample_ids = context.all_gather(tf.reshape(sample_ids, [-1]), axis=0)
    if features is not None:
        features = context.all_gather(features, axis=0)
    return embeddings, labels, sample_ids, features
