"""Zero images never reach the network: the chunked top-k, the inference pass and the split embedding.

The serving signatures' empty requests are in test_bad_requests.py (a fresh serving
process). The embedder (tests/export/conftest.py) fails on an empty batch on every CPU.
"""

import numpy as np
import pytest
import tensorflow as tf

from tf_langdml.data.splits import Split
from tf_langdml.inference import embed_split, inference_outputs
from tf_langdml.top_k import top_k_in_chunks

SIZE, DIM = 16, 8


def test_the_guard_layer_refuses_an_empty_batch_on_this_cpu(guarded_embedder):
    embedder = guarded_embedder(SIZE, DIM)
    with pytest.raises(tf.errors.InvalidArgumentError, match="the network ran on an empty batch"):
        embedder(tf.zeros([0, SIZE, SIZE, 3]), training=False)
    assert embedder(tf.zeros([1, SIZE, SIZE, 3]), training=False).shape == (1, DIM)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_top_k_in_chunks_answers_zero_queries(graph):
    search = tf.function(top_k_in_chunks) if graph else top_k_in_chunks
    scores, indices = search(tf.zeros([0, 4]), tf.eye(4), tf.constant(2))
    assert scores.shape == indices.shape == (0, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="got k = 5 for a gallery of 4 items"):
        search(tf.zeros([0, 4]), tf.eye(4), tf.constant(5))


def test_inference_outputs_answer_zero_images_without_the_network(guarded_embedder):
    embedder = guarded_embedder(SIZE, DIM)
    assert inference_outputs(embedder, np.zeros((0, SIZE, SIZE, 3), np.float32)).shape == (0, DIM)
    # The same traced function then runs a real batch (and an empty one again).
    assert inference_outputs(embedder, np.zeros((3, SIZE, SIZE, 3), np.float32)).shape == (3, DIM)
    assert inference_outputs(embedder, np.zeros((0, SIZE, SIZE, 3), np.float32)).shape == (0, DIM)


def test_embedding_an_empty_split_gives_zero_rows(guarded_embedder):
    split = Split(np.array([], dtype=object), np.zeros(0, np.int64), ("a",), ("a",), from_files=False)
    embeddings = embed_split(guarded_embedder(SIZE, DIM), split, batch_size=4, image_size=SIZE, verbose=0)
    assert embeddings.shape == (0, DIM) and embeddings.dtype == np.float32
