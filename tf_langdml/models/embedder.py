"""The image embedder: backbone -> global pool -> Dense(embed_dim) -> L2 normalise."""

from __future__ import annotations

import os
from collections.abc import Sequence

from tf_langdml._keras import keras
from tf_langdml.errors import ArgumentError
from tf_langdml.models.backbones import build_backbone, freeze_batchnorm_statistics, resolve_weights
from tf_langdml.models.layers import NORMALIZATION_MODES, ImageNormalization, L2Normalize

POOLINGS = ("avg", "max", "avg+max")
POOL_LAYERS = ("avg_pool", "max_pool")  # the names _pool gives its global pooling layers


def _pool(feature_maps, pooling):
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(feature_maps)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")(feature_maps)
    # "avg+max" is the sum of both, as the paper's code does for its "double pool" backbones.
    average = keras.layers.GlobalAveragePooling2D(name="avg_pool")(feature_maps)
    maximum = keras.layers.GlobalMaxPooling2D(name="max_pool")(feature_maps)
    return keras.layers.Add(name="avg_plus_max_pool")([average, maximum])


def build_embedder(
    backbone: str | keras.Model = "resnet50",
    weights: str | os.PathLike | None = "imagenet",
    embed_dim: int = 128,
    pooling: str = "avg",
    freeze_bn_statistics: bool = True,
    input_shape: Sequence[int] = (224, 224, 3),
    normalization: str | None = None,
    name: str = "embedder",
) -> keras.Model:
    """Build the DML embedder of docs/models.md (the paper's protocol: docs/protocol.md, "Model").

    Args:
        backbone: a registered name (``"resnet50"``) or a functional / Sequential
            ``keras.Model`` mapping normalised images to feature maps (B, h, w, c).
        weights: for a named backbone, ``"imagenet"`` (cached in ~/.keras/models or
            downloaded), ``None`` (random) or the path of a local weights file.
        embed_dim: size of the embedding (the paper uses 128 and 512).
        pooling: ``"avg"``, ``"max"`` or ``"avg+max"`` (their sum).
        freeze_bn_statistics: BatchNorm moving statistics never change while γ/β train.
        input_shape: (height, width, 3) of the images fed to the embedder.
        normalization: input normalisation mode; defaults to what the named
            backbone's weights expect (``"caffe"`` for ResNet50) and to ``"none"``
            for a model passed in.
        name: name of the returned model.

    Returns:
        A functional ``keras.Model`` mapping float RGB images with values in [0, 255]
        to L2-normalised float32 embeddings of shape (B, embed_dim).
    """
    if pooling not in POOLINGS:
        raise ArgumentError(f"Unknown pooling {pooling!r}; expected one of {list(POOLINGS)}.", argument="pooling")
    if int(embed_dim) <= 0:
        raise ArgumentError(
            f"embed_dim must be a positive integer, got {embed_dim!r} (the paper uses 128 or 512).",
            argument="embed_dim",
        )
    input_shape = tuple(int(size) for size in input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ArgumentError(
            f"input_shape must be (height, width, 3) for RGB images, got {input_shape}.", argument="input_shape"
        )

    if isinstance(backbone, keras.Model):
        if weights == "imagenet":
            raise ArgumentError(
                "weights='imagenet' applies to named backbones only; for a model you pass in, "
                "use weights=None (keep its weights) or the path of a local weights file.",
                argument="weights",
            )
        if weights is not None:
            backbone.load_weights(resolve_weights(backbone.name, weights))
        expected = tuple(getattr(backbone, "input_shape", (None,))[1:])
        if all(size is not None for size in expected) and expected != input_shape:
            raise ArgumentError(
                f"The backbone model takes inputs of shape {expected}, but input_shape={input_shape}; "
                f"pass input_shape={expected}.",
                argument="input_shape",
            )
        feature_extractor, default_normalization = backbone, "none"
    else:
        feature_extractor, default_normalization = build_backbone(backbone, weights, input_shape)
    normalization = default_normalization if normalization is None else normalization
    if normalization not in NORMALIZATION_MODES:
        raise ArgumentError(
            f"Unknown normalization {normalization!r}; expected one of {list(NORMALIZATION_MODES)}.",
            argument="normalization",
        )
    if freeze_bn_statistics:
        feature_extractor = freeze_batchnorm_statistics(feature_extractor)

    images = keras.Input(shape=input_shape, name="images")
    normalized = ImageNormalization(normalization, name="normalization")(images)
    feature_maps = feature_extractor(normalized)
    if len(feature_maps.shape) != 4:
        raise ArgumentError(
            f"The backbone must output feature maps (batch, height, width, channels); got shape "
            f"{feature_maps.shape}. Build it without its classification head.",
            argument="backbone",
        )
    pooled = _pool(feature_maps, pooling)
    projected = keras.layers.Dense(int(embed_dim), name="projection")(pooled)
    embeddings = L2Normalize(name="l2_normalize")(projected)
    return keras.Model(images, embeddings, name=name)


def embedder_with_feature_maps(embedder: keras.Model) -> keras.Model:
    """A functional model over ``embedder``'s own layers: images -> (embeddings, backbone feature maps).

    The feature maps are the input of its global pooling layer (:data:`POOL_LAYERS`), so
    one forward pass gives both (what S2SD reads).
    """
    for name in POOL_LAYERS:
        try:
            pool = embedder.get_layer(name)
        except ValueError:
            continue
        feature_maps = pool.input
        if len(feature_maps.shape) == 4:
            return keras.Model(embedder.inputs, [embedder.outputs[0], feature_maps], name=f"{embedder.name}_features")
    raise ArgumentError(
        f"The DML loss reads the backbone's feature maps, but the embedder {embedder.name!r} has no global pooling "
        f"layer named {' or '.join(POOL_LAYERS)} (build it with tf_langdml.models.build_embedder).",
        argument="embedder",
    )
