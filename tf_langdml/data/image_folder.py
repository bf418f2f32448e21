"""Datasets in the paper's folder layout: root/<class>/<image files>."""

import os
import warnings
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tf_langdml.data.class_names import clean_class_name
from tf_langdml.data.preprocessing import (
    DEFAULT_BACKGROUND,
    DEFAULT_MAX_PIXELS,
    Background,
    decode_rgb,
    header_image_size,
    source_formats,
)
from tf_langdml.data.splits import Split, SplitDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


def unreadable_images(paths: Sequence[str], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[str]:
    """Paths among ``paths`` that :func:`~tf_langdml.data.decode_rgb` refuses.

    That is: corrupt or truncated data, files that are not JPEG / PNG / GIF / BMP
    images, and images whose header declares more than ``max_pixels`` pixels (those
    are refused from the header alone, never decoded).
    """
    if not paths:
        return []
    data = tf.data.Dataset.from_tensor_slices((list(paths), np.arange(len(paths))))
    data = data.map(lambda path, index: (tf.shape(decode_rgb(tf.io.read_file(path), max_pixels=max_pixels))[0], index),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    data = data.ignore_errors()
    readable = {int(index) for _, index in data.as_numpy_iterator()}
    return [path for index, path in enumerate(paths) if index not in readable]


def _declared_pixels(path):
    """Height x width from the file's header, or None when the header cannot be read."""
    try:
        height, width = header_image_size(tf.io.read_file(path)).numpy()
    except tf.errors.OpError:
        return None
    return int(height) * int(width)


def _split_from(class_folders, files_by_class, background, max_pixels):
    sources, labels = [], []
    for label, folder in enumerate(class_folders):
        sources += files_by_class[folder]
        labels += [label] * len(files_by_class[folder])
    return Split(
        sources=np.asarray(sources, dtype=object).astype(str),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=tuple(clean_class_name(folder) for folder in class_folders),
        raw_class_names=tuple(class_folders),
        from_files=True,
        background=background,
        max_pixels=max_pixels,
        formats=source_formats(sources),
    )


def load_image_folder(
    root: str | os.PathLike,
    test_classes: Sequence[str] | None = None,
    test_fraction: float = 0.5,
    background: Background = DEFAULT_BACKGROUND,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> SplitDataset:
    """Load ``root/<class>/<images>`` and split it by class.

    Every file is decoded once up front: files without an image extension, images
    TensorFlow cannot decode (corrupt, truncated), and images whose header declares
    more than ``max_pixels`` pixels (not decoded) are skipped with one warning that
    counts them by reason and lists the first few; they are also returned in
    ``skipped_files``. A class folder left with no readable image is an error.

    Args:
        root: folder with one sub-folder per class (hidden folders are ignored).
        test_classes: folder names of the test classes; default: the last
            ``round(C * test_fraction)`` of the sorted class folders (the paper
            splits CUB's 200 classes 1-100 / 101-200 this way).
        test_fraction: share of classes held out when ``test_classes`` is None.
        background: ``"white"``, ``"black"`` or (r, g, b): what transparent pixels
            are composited onto, by every pipeline over the splits.
        max_pixels: the largest image (height x width, from the header) that is decoded.

    Returns:
        :class:`SplitDataset` with labels 0..C-1 within each split.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Image folder {root!r} does not exist; expected root/<class>/<image files>.")
    class_folders = sorted(
        entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith(".")
    )
    if len(class_folders) < 2:
        raise ValueError(f"{root!r} has {len(class_folders)} class folder(s); a train/test split needs at least 2.")

    files_by_class, skipped = {}, []
    for folder in class_folders:
        names = sorted(os.listdir(os.path.join(root, folder)))
        paths = [os.path.join(root, folder, name) for name in names if not name.startswith(".")]
        files_by_class[folder] = [path for path in paths if os.path.isfile(path) and path.lower().endswith(IMAGE_EXTENSIONS)]
        skipped += [path for path in paths if os.path.isfile(path) and not path.lower().endswith(IMAGE_EXTENSIONS)]
    not_images = len(skipped)
    all_images = [path for folder in class_folders for path in files_by_class[folder]]
    unreadable = set(unreadable_images(all_images, max_pixels))
    too_large = [] if max_pixels is None else [
        path for path in sorted(unreadable) if (_declared_pixels(path) or 0) > max_pixels]
    skipped += sorted(unreadable)
    for folder in class_folders:
        files_by_class[folder] = [path for path in files_by_class[folder] if path not in unreadable]
        if not files_by_class[folder]:
            raise ValueError(
                f"Class folder {os.path.join(root, folder)!r} has no readable image "
                f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder."
            )
    if skipped:
        reasons = [f"{not_images} without an image extension ({', '.join(IMAGE_EXTENSIONS)})",
                   f"{len(unreadable) - len(too_large)} not decodable (corrupt, truncated or another format)",
                   f"{len(too_large)} above max_pixels={max_pixels} by their header, e.g. "
                   f"{[os.path.relpath(path, root) for path in too_large[:3]]}"]
        warnings.warn(
            f"Skipped {len(skipped)} file(s) under {root!r} that are not readable images: {'; '.join(reasons)}. "
            f"Skipped files, e.g. {[os.path.relpath(path, root) for path in skipped[:5]]}.",
            stacklevel=2,
        )

    if test_classes is None:
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction!r}.")
        num_test = min(len(class_folders) - 1, max(1, round(len(class_folders) * test_fraction)))
        test_folders = class_folders[-num_test:]
    else:
        test_folders = sorted(set(test_classes))
        unknown = sorted(set(test_folders) - set(class_folders))
        if unknown:
            raise ValueError(f"test_classes {unknown} are not class folders of {root!r}; known: {class_folders[:10]}...")
        if len(test_folders) == len(class_folders):
            raise ValueError("test_classes covers every class; leave at least one class for training.")
    train_folders = [folder for folder in class_folders if folder not in set(test_folders)]
    splits = [_split_from(folders, files_by_class, background, max_pixels) for folders in (train_folders, test_folders)]
    return SplitDataset(*splits, tuple(skipped))
