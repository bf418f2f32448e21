"""The paper's datasets (CUB-200-2011, Cars196, SOP) from TensorFlow Datasets, re-split by class (docs/protocol.md)."""

import dataclasses
import os

import numpy as np

from tf_langdml.data.class_names import clean_class_name
from tf_langdml.data.preprocessing import DEFAULT_BACKGROUND, DEFAULT_MAX_PIXELS, Background, source_formats
from tf_langdml.data.splits import Split, SplitDataset
from tf_langdml.errors import ArgumentError


@dataclasses.dataclass(frozen=True)
class TfdsDatasetSpec:
    """Where a dataset lives in TFDS and how its classes split.

    Classes ``[0, num_train_classes)`` train and the rest test, after TFDS's own
    per-image train and test splits are merged (CUB, Cars196) -- or, for SOP, exactly
    Ebay_train / Ebay_test, whose product ids are already disjoint ranges.
    """

    tfds_name: str
    num_classes: int
    num_train_classes: int
    label_key: str
    name_key: str  # per-example feature naming the class, or "" to use the ClassLabel names
    download_note: str


TFDS_DATASETS = {
    "cub200": TfdsDatasetSpec(
        "caltech_birds2011",
        200,
        100,
        "label",
        "label_name",
        "CUB_200_2011.tgz and segmentations.tgz from https://www.vision.caltech.edu/datasets/cub_200_2011/",
    ),
    "cars196": TfdsDatasetSpec(
        "cars196",
        196,
        98,
        "label",
        "",
        "the Stanford Cars images and devkit (cars_train.tgz, cars_test.tgz, car_devkit.tgz, cars_test_annos_withlabels.mat)",
    ),
    "sop": TfdsDatasetSpec(
        "stanford_online_products",
        22634,
        11318,
        "class_id",
        "super_class_id",
        "Stanford_Online_Products.zip from https://cvgl.stanford.edu/projects/lifted_struct/",
    ),
}


def _not_prepared_error(spec, builder, error):
    data_dir = getattr(builder, "data_dir", None) or "~/tensorflow_datasets"
    root = os.path.dirname(os.path.dirname(str(data_dir)))
    return FileNotFoundError(
        f"TFDS dataset {spec.tfds_name!r} is not prepared in {data_dir} ({error}). This package never "
        f"downloads it by itself. Either build it where there is internet "
        f"(`tfds build {spec.tfds_name} --data_dir DIR`) and pass data_dir=DIR, or download "
        f"{spec.download_note} into a folder, pass it as manual_dir=... (TFDS also looks in "
        f"{os.path.join(root, 'downloads', 'manual')}) together with data_dir."
    )


def _read_examples(builder, spec):
    """Encoded images, labels and per-example names of both TFDS splits, merged."""
    import tensorflow_datasets as tfds

    features = builder.info.features
    decoders = {key: tfds.decode.SkipDecoding() for key in ("image", "segmentation_mask") if key in features}
    images, labels, names = [], [], []
    for split in ("train", "test"):
        data = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
        for example in data.as_numpy_iterator():
            images.append(example["image"])
            labels.append(int(example[spec.label_key]))
            names.append(example[spec.name_key] if spec.name_key else None)
    return images, np.asarray(labels, dtype=np.int64), names


def _class_names(spec, builder, labels, names):
    if spec.name_key == "":
        return list(builder.info.features[spec.label_key].names)
    by_class = {}
    for label, name in zip(labels.tolist(), names):
        by_class.setdefault(label, name)
    if spec.name_key == "super_class_id":
        super_names = builder.info.features["super_class_id"].names
        # SOP has no per-product names: each product is called by its super-class.
        return [
            super_names[int(by_class[c])].replace("_", " ") if c in by_class else "" for c in range(spec.num_classes)
        ]
    return [
        by_class[c].decode() if isinstance(by_class.get(c), bytes) else by_class.get(c, "")
        for c in range(spec.num_classes)
    ]


def load_tfds_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    background: Background = DEFAULT_BACKGROUND,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> SplitDataset:
    """Load CUB-200-2011 (``cub200``), Cars196 (``cars196``) or SOP (``sop``) split by class.

    Both TFDS splits are read once (images stay encoded, in memory) and re-split:
    CUB classes 1-100 / 101-200, Cars196 1-98 / 99-196, SOP Ebay_train / Ebay_test.
    Labels are renumbered 0..C-1 within each split. Class names: CUB's from the
    TFDS ``label_name`` feature (its image folder names), Cars196's from TFDS (make,
    model, year), SOP's are the super-class of each product ("coffee maker"), since
    SOP has no product names.

    Args:
        name: ``"cub200"``, ``"cars196"`` or ``"sop"``.
        data_dir: TFDS data directory (default ``~/tensorflow_datasets``).
        manual_dir: folder with the downloaded archives, to build the TFDS data offline.
        background, max_pixels: how the splits' images are decoded (see :class:`~tf_langdml.data.Split`).

    Returns:
        :class:`~tf_langdml.data.SplitDataset`.

    Raises:
        FileNotFoundError: the dataset is not prepared; the message says what to do.
    """
    if name not in TFDS_DATASETS:
        raise ArgumentError(
            f"Unknown TFDS dataset {name!r}; known: {sorted(TFDS_DATASETS)}. For other data use load_image_folder.",
            argument="name",
        )
    spec = TFDS_DATASETS[name]
    import tensorflow_datasets as tfds

    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    if manual_dir is not None:
        if not os.path.isdir(manual_dir):
            raise FileNotFoundError(f"manual_dir {manual_dir!r} does not exist; it should hold {spec.download_note}.")
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    try:
        images, labels, names = _read_examples(builder, spec)
    except AssertionError as error:  # TFDS's "could not find data in ..."
        raise _not_prepared_error(spec, builder, error) from error

    raw_names = _class_names(spec, builder, labels, names)
    splits = []
    for first, last in ((0, spec.num_train_classes), (spec.num_train_classes, spec.num_classes)):
        keep = (labels >= first) & (labels < last)
        class_names = tuple(raw_names[first:last])
        missing = [first + index for index, class_name in enumerate(class_names) if not class_name]
        if missing:
            raise ValueError(
                f"{spec.tfds_name}: {len(missing)} class(es) have no images to name them "
                f"(e.g. label {missing[0]}); the TFDS data is incomplete -- rebuild it."
            )
        sources = [images[index] for index in np.flatnonzero(keep)]
        splits.append(
            Split(
                sources=np.asarray(sources, dtype=object),
                labels=labels[keep] - first,
                class_names=tuple(clean_class_name(class_name) for class_name in class_names),
                raw_class_names=class_names,
                from_files=False,
                background=background,
                max_pixels=max_pixels,
                formats=source_formats(sources, from_files=False),
            )
        )
    return SplitDataset(splits[0], splits[1])
