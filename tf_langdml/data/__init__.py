"""Data: class names, the class-balanced sampler and image preprocessing."""

from tf_langdml._keras import keras  # noqa: F401  (binds tf.keras to tf-keras first)
from tf_langdml.data.class_names import clean_class_name
from tf_langdml.data.emoji_demo import demo_classes, load_demo
from tf_langdml.data.image_folder import load_image_folder, unreadable_images
from tf_langdml.data.preprocessing import (
    decode_rgb,
    eval_preprocess,
    random_resized_crop,
    resize_bilinear,
    train_image_from_bytes,
    train_preprocess,
)
from tf_langdml.data.sampler import class_balanced_indices
from tf_langdml.data.splits import (
    Split,
    SplitDataset,
    hold_out_validation,
    make_eval_dataset,
    make_train_dataset,
    validation_classes,
)
from tf_langdml.data.tfds_datasets import TFDS_DATASETS, load_tfds_dataset

__all__ = [
    "demo_classes",
    "load_demo",
    "TFDS_DATASETS",
    "load_tfds_dataset",
    "Split",
    "SplitDataset",
    "hold_out_validation",
    "validation_classes",
    "load_image_folder",
    "make_eval_dataset",
    "make_train_dataset",
    "unreadable_images",
    "class_balanced_indices",
    "clean_class_name",
    "decode_rgb",
    "eval_preprocess",
    "resize_bilinear",
    "random_resized_crop",
    "train_image_from_bytes",
    "train_preprocess",
]
