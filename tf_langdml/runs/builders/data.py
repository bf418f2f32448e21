"""The ``data`` section: the dataset, its evaluation split, the training batches and their checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tf_langdml.data import (
    Split,
    SplitDataset,
    class_balanced_indices,
    hold_out_validation,
    load_demo,
    load_image_folder,
    load_tfds_dataset,
    make_train_dataset,
)
from tf_langdml.data.tfds_datasets import TFDS_DATASETS
from tf_langdml.runs.builders.config_errors import config_keys
from tf_langdml.runs.schema import DataConfig, EvaluationConfig

# {library argument: config key} of the data loaders.
_DECODING_ARGUMENTS = {"background": "data.background", "max_pixels": "data.max_pixels"}
_FOLDER_ARGUMENTS = {
    **_DECODING_ARGUMENTS,
    "root": "data.data_dir",
    "test_classes": "data.test_classes",
    "test_fraction": "data.test_fraction",
    "gallery_list": "data.gallery_list",
}
_TFDS_ARGUMENTS = {
    **_DECODING_ARGUMENTS,
    "name": "data.dataset",
    "data_dir": "data.data_dir",
    "manual_dir": "data.manual_dir",
}


def dataset(data: DataConfig, evaluation_split: str = "test") -> SplitDataset:
    """The :class:`~tf_langdml.data.SplitDataset` the ``data`` section names.

    With ``data.validation_fraction`` > 0 that part of the training classes is held out
    as ``validation_split`` (:func:`~tf_langdml.data.hold_out_validation`). With
    ``evaluation_split="validation"`` (model selection) the returned dataset has no
    test split (``test_split`` is None), so nothing downstream can read it.
    """
    splits = _load_dataset(data)
    with config_keys("data.validation_fraction"):
        splits = hold_out_validation(splits, data.validation_fraction)
    if evaluation_split == "validation":
        splits = dataclasses.replace(splits, test_split=None)
    return splits


def _load_dataset(data: DataConfig) -> SplitDataset:
    decoding = {"background": data.background, "max_pixels": data.max_pixels}
    if data.dataset == "demo":
        with config_keys("data.dataset", arguments=_DECODING_ARGUMENTS):
            return load_demo(**decoding)
    if data.dataset == "folder":
        with config_keys("data.data_dir", arguments=_FOLDER_ARGUMENTS):
            return load_image_folder(
                data.data_dir,
                test_classes=data.test_classes,
                test_fraction=data.test_fraction,
                gallery_list=data.gallery_list,
                **decoding,
            )
    with config_keys(
        "data.dataset", arguments=_TFDS_ARGUMENTS, suggest=(data.dataset, ["demo", "folder", *TFDS_DATASETS])
    ):
        return load_tfds_dataset(data.dataset, data_dir=data.data_dir, manual_dir=data.manual_dir, **decoding)


def evaluation_split(evaluation: EvaluationConfig, splits: SplitDataset) -> Split | None:
    """The split that ``evaluation.split`` names: the test classes, or the validation classes (model selection)."""
    return splits.validation_split if evaluation.split == "validation" else splits.test_split


def train_batches(
    data: DataConfig, split: Split, seed: int, start_batch: int = 0, with_sample_ids: bool = False
) -> tf.data.Dataset:
    """Class-balanced training batches of ``split`` (the sampler checks the batch against the split)."""
    with config_keys("data.batch_size", "data.examples_per_class"):
        return make_train_dataset(
            split,
            data.batch_size,
            data.examples_per_class,
            seed=seed,
            image_size=data.image_size,
            with_sample_ids=with_sample_ids,
            start_batch=start_batch,
            antialias=data.antialias,
        )


def check_data(data: DataConfig) -> None:
    """The dataset name and the batch composition (the sampler's rules), without reading data."""
    if data.dataset not in ("demo", "folder", *TFDS_DATASETS):
        _load_dataset(data)  # load_tfds_dataset refuses an unknown name before reading anything
    classes = max(1, data.batch_size // data.examples_per_class)
    with config_keys("data.batch_size", "data.examples_per_class"):
        class_balanced_indices(np.arange(classes), data.batch_size, data.examples_per_class)
