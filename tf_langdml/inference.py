"""Forward passes for inference: a model's outputs batch by batch over a split, with a progress bar."""

from __future__ import annotations

import typing
import weakref
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from tf_langdml._keras import keras

if typing.TYPE_CHECKING:
    from tf_langdml.data.splits import Split

_TRACED = weakref.WeakKeyDictionary()  # model -> its traced forward pass


def inference_outputs(model: keras.Model, images: tf.Tensor | np.ndarray) -> tf.Tensor:
    """Outputs (logits of a classifier, embeddings of an embedder) of images in [0, 255], as float32.

    One traced graph per model, reused across calls. Not ``model.predict``, which
    replaces ``model.history`` when called from a callback during ``fit``. A batch of
    zero images answers zeros of shape (0, *output shape) without running the model
    (oneDNN's AVX-512 convolution rejects a batch of zero).
    """
    function = _TRACED.get(model)
    if function is None:

        def forward(batch):
            traced = {}

            def run():
                outputs = tf.cast(model(tf.cast(batch, tf.float32), training=False), tf.float32)
                traced["shape"] = [0 if size is None else size for size in outputs.shape[1:]]
                return outputs

            def nothing():
                # tf.cond traces ``run`` first, so the output shape is known here (subclassed models too)
                # without running the model; a size unknown until run time (None) is answered as 0.
                return tf.zeros([0, *traced["shape"]], tf.float32)

            return tf.cond(tf.shape(batch)[0] > 0, run, nothing)

        function = tf.function(forward, reduce_retracing=True)
        _TRACED[model] = function
    return function(images)


def forward_batches(
    model: keras.Model, split: Split, batch_size: int = 64, image_size: int = 224, verbose: int = 1
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (outputs, labels) as numpy for each eval-preprocessed batch of a split, in order."""
    from tf_langdml.data.splits import make_eval_dataset

    dataset = make_eval_dataset(split, batch_size, image_size=image_size)
    progress = keras.utils.Progbar(-(-len(split.labels) // batch_size), unit_name="batch") if verbose else None
    for step, (images, labels) in enumerate(dataset):
        yield inference_outputs(model, images).numpy(), labels.numpy()
        if progress is not None:
            progress.update(step + 1)


def embed_split(model: keras.Model, split: Split, batch_size: int = 64, image_size: int = 224, verbose: int = 1) -> np.ndarray:
    """Embeddings (N, D) float32 of a :class:`~tf_langdml.data.Split` with eval preprocessing, in order.

    A split of no images gives (0, D) without running the model.
    """
    batches = [outputs for outputs, _ in forward_batches(model, split, batch_size, image_size, verbose)]
    if not batches:
        return inference_outputs(model, np.zeros((0, image_size, image_size, 3), np.float32)).numpy()
    return np.concatenate(batches)
