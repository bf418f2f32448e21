"""Small serializable layers the embedder is made of."""

from typing import Any

import tensorflow as tf

from tf_langdml._keras import keras

# Per-channel ImageNet means in BGR order, as keras.applications' caffe mode uses.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

NORMALIZATION_MODES = ("caffe", "efficientnet_lite", "tf", "none")


@keras.utils.register_keras_serializable(package="tf_langdml")
class ImageNormalization(keras.layers.Layer):
    """Map RGB images with values in [0, 255] to what a backbone's weights expect.

    Modes:
        ``caffe``: RGB -> BGR, minus the ImageNet mean (keras.applications ResNet50).
        ``efficientnet_lite``: (x - 127) / 128.
        ``tf``: x / 127.5 - 1.
        ``none``: unchanged.
    """

    def __init__(self, mode: str = "caffe", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in NORMALIZATION_MODES:
            raise ValueError(f"Unknown normalization mode {mode!r}; expected one of {list(NORMALIZATION_MODES)}.")
        self.mode = mode

    def call(self, images: tf.Tensor) -> tf.Tensor:
        images = tf.cast(images, self.compute_dtype)
        if self.mode == "caffe":
            return images[..., ::-1] - tf.constant(_CAFFE_BGR_MEAN, dtype=self.compute_dtype)
        if self.mode == "efficientnet_lite":
            return (images - 127.0) / 128.0
        if self.mode == "tf":
            return images / 127.5 - 1.0
        return images

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


@keras.utils.register_keras_serializable(package="tf_langdml")
class L2Normalize(keras.layers.Layer):
    """L2-normalise the last axis, computed in float32 (also under mixed precision)."""

    def __init__(self, epsilon: float = 1e-12, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return tf.math.l2_normalize(tf.cast(inputs, tf.float32), axis=-1, epsilon=self.epsilon)

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.utils.register_keras_serializable(package="tf_langdml")
class FrozenStatisticsBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization that always normalises with its moving statistics.

    The moving mean and variance never change, whatever ``training`` says, while
    γ and β stay trainable: the paper's "frozen BatchNorm" (docs/protocol.md, "Model").
    """

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        return super().call(inputs, training=False)
