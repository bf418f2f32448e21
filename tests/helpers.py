"""Test helpers shared by several test modules (importable as `helpers`)."""

import numpy as np

from tf_langdml import keras


def tiny_backbone(input_shape=(16, 16, 3)):
    """Two conv + BatchNorm blocks: a functional backbone that trains in milliseconds."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(8, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Conv2D(16, 3, strides=2, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
        ],
        name="tiny_backbone",
    )


def synthetic_problem(num_classes=6, per_class=4, size=16, seed=0):
    """Images = a random prototype per class + noise, values in [0, 255]."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0, 255, (num_classes, size, size, 3))
    labels = np.repeat(np.arange(num_classes), per_class)
    noise = rng.normal(0, 20, (labels.size, size, size, 3))
    images = np.clip(prototypes[labels] + noise, 0, 255).astype("float32")
    return images, labels.astype("int32")


def unit_rows(array):
    array = np.asarray(array, dtype=np.float64)
    return array / np.linalg.norm(array, axis=-1, keepdims=True)


def write_colour_folder(root, num_classes=8, per_class=4, size=16, noise=20, seed=0, class_name="class_{}"):
    """``root/<class_name.format(i)>/<j>.png``: per class, noisy copies (±``noise``) of one random colour; returns root.

    The image folder most tests train and evaluate on: classes are told apart by colour alone.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    for index in range(num_classes):
        colour = rng.integers(0, 256, 3)
        folder = root / class_name.format(index)
        folder.mkdir(parents=True)
        for image in range(per_class):
            pixels = np.clip(colour + rng.integers(-noise, noise + 1, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{image}.png")
    return root


# Run in a fresh interpreter (``python -c CLI_PROBE <argv>``): the CLI's exit status and whether it loaded TensorFlow.
CLI_PROBE = (
    "import sys\n"
    "from tf_langdml.cli import main\n"
    "try:\n"
    "    code = main(sys.argv[1:])\n"
    "except SystemExit as exit:\n"
    "    code = exit.code\n"
    "print('exit', code, 'tensorflow', 'tensorflow' in sys.modules)\n"
)


def h5_arrays(path):
    """Every dataset of an HDF5 file (a Keras ``.weights.h5``) as ``{name: array}``."""
    import h5py

    arrays = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset)
                          else None)
    return arrays
