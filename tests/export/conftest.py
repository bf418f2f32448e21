"""An embedder that fails on an empty batch on every CPU, so the serving and inference tests see the guard work.

oneDNN's AVX-512 convolution rejects a batch of zero while the AVX2 one answers (0, d):
a shape check alone passes on one CPU and fails on another. This embedder wraps toy_cnn
behind a layer whose graph assertion fails on any empty batch, so a test of an empty
request passes only if the network is not run at all.
"""

import pytest
import tensorflow as tf

from tf_langdml._keras import keras
from tf_langdml.models import build_embedder

RAN_ON_EMPTY = "the network ran on an empty batch"


class RefusesEmptyBatches(keras.layers.Layer):
    """Identity that fails (a graph assertion, like oneDNN's AVX-512 kernel) when the batch has no rows."""

    def call(self, inputs):
        check = tf.debugging.assert_positive(tf.shape(inputs)[0], message=RAN_ON_EMPTY)
        with tf.control_dependencies([check]):
            return tf.identity(inputs)


@pytest.fixture(scope="session")
def guarded_embedder():
    """A function (size, embed_dim) -> toy_cnn (weights=None) behind :class:`RefusesEmptyBatches`."""

    def build(size, embed_dim):
        inner = build_embedder("toy_cnn", weights=None, embed_dim=embed_dim, input_shape=(size, size, 3))
        inputs = keras.Input((size, size, 3))
        return keras.Model(inputs, inner(RefusesEmptyBatches()(inputs)))

    return build
