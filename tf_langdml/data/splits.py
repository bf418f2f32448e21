"""Class-disjoint splits held as image sources with labels 0..C-1, and their pipelines."""

import dataclasses
import fractions
import functools
import typing

import numpy as np
import tensorflow as tf

from tf_langdml.data.preprocessing import (
    DEFAULT_BACKGROUND,
    DEFAULT_MAX_PIXELS,
    decode_rgb,
    eval_preprocess,
    parse_background,
    train_image_from_bytes,
)
from tf_langdml.data.sampler import class_balanced_indices
from tf_langdml.errors import ArgumentError


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: encoded images or image file paths, labels 0..C-1, class names by label.

    Attributes:
        sources: (N,) file paths (``from_files``) or encoded image bytes.
        labels: (N,) int64 labels numbered 0..C-1 within this split.
        class_names: cleaned names, index = label ("black footed albatross").
        raw_class_names: the dataset's own labels, index = label ("001.Black_footed_Albatross").
        from_files: whether ``sources`` are paths to read.
        background: (r, g, b) that transparent pixels are composited onto, in every
            pipeline that decodes this split (training, evaluation, pseudo-labels).
        max_pixels: images whose header declares more pixels are not decoded (None: no limit).
        formats: the image formats among ``sources`` (see
            :func:`~tf_langdml.data.preprocessing.source_formats`), so the pipelines
            decode with only those branches; None: any format.
        gallery: (N,) bool, True for the gallery images of the query / gallery retrieval
            protocol (the other images are the queries; see
            :func:`~tf_langdml.evaluation.split_retrieval_metrics`); None, the default,
            for leave-one-out retrieval over all images. A mask without any True becomes
            None. Training ignores it: it uses every image of its split.
    """

    sources: np.ndarray
    labels: np.ndarray
    class_names: tuple
    raw_class_names: tuple
    from_files: bool = True
    background: tuple = DEFAULT_BACKGROUND
    max_pixels: typing.Optional[int] = DEFAULT_MAX_PIXELS
    formats: typing.Optional[tuple] = None
    gallery: typing.Optional[np.ndarray] = None

    def __post_init__(self):
        object.__setattr__(self, "background", parse_background(self.background))
        if self.max_pixels is not None and (
            isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 1
        ):
            raise ArgumentError(
                f"max_pixels must be a positive integer or None (no limit); got {self.max_pixels!r}.",
                argument="max_pixels",
            )
        if len(self.sources) != len(self.labels):
            raise ValueError(f"{len(self.sources)} images but {len(self.labels)} labels.")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(
                f"labels must be 0..{len(self.class_names) - 1}; got {self.labels.min()}..{self.labels.max()}."
            )
        if self.gallery is not None:
            gallery = np.asarray(self.gallery)
            if gallery.dtype != bool or gallery.shape != (len(self.labels),):
                raise ValueError(
                    f"gallery must be a ({len(self.labels)},) bool mask or None; got {gallery.dtype} {gallery.shape}."
                )
            object.__setattr__(self, "gallery", gallery if gallery.any() else None)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def encoded(self, sources: tf.Tensor) -> tf.Tensor:
        """Map a tensor of sources to encoded image bytes."""
        return tf.io.read_file(sources) if self.from_files else sources

    def decode(self, encoded: tf.Tensor) -> tf.Tensor:
        """Encoded image bytes -> uint8 RGB, as every pipeline over this split decodes them."""
        return decode_rgb(encoded, self.background, self.max_pixels, self.formats)

    def subset(self, indices: np.ndarray | slice) -> "Split":
        """The images at ``indices`` (same classes, labels and decoding)."""
        gallery = None if self.gallery is None else self.gallery[indices]
        return dataclasses.replace(self, sources=self.sources[indices], labels=self.labels[indices], gallery=gallery)

    def select_classes(self, class_indices: np.ndarray) -> "Split":
        """The images of the classes ``class_indices`` (labels of this split), relabelled 0..K-1 in that order."""
        class_indices = np.asarray(class_indices, dtype=np.int64).reshape(-1)
        new_label = np.full(self.num_classes, -1, np.int64)
        new_label[class_indices] = np.arange(len(class_indices))
        keep = new_label[self.labels] >= 0
        return dataclasses.replace(
            self,
            sources=self.sources[keep],
            labels=new_label[self.labels[keep]],
            gallery=None if self.gallery is None else self.gallery[keep],
            class_names=tuple(self.class_names[index] for index in class_indices),
            raw_class_names=tuple(self.raw_class_names[index] for index in class_indices),
        )

    def dataset(self) -> tf.data.Dataset:
        """``tf.data`` of (encoded image bytes, label, sample id), in order."""
        ids = np.arange(len(self.labels), dtype=np.int64)
        data = tf.data.Dataset.from_tensor_slices((self.sources, self.labels.astype(np.int64), ids))
        return data.map(
            tf.autograph.experimental.do_not_convert(
                lambda source, label, sample_id: (self.encoded(source), label, sample_id)
            )
        )


@dataclasses.dataclass(frozen=True)
class SplitDataset:
    """A dataset with class-disjoint train and test splits (see :class:`Split`).

    ``validation_split``: training classes held out for model selection
    (:func:`hold_out_validation`); None when there are none. ``test_split`` is None
    when a run must not read it (model selection on validation classes).
    """

    train_split: Split
    test_split: typing.Optional[Split]
    skipped_files: tuple = ()
    validation_split: typing.Optional[Split] = None

    @property
    def train(self) -> tf.data.Dataset:
        return self.train_split.dataset()

    @property
    def test(self) -> tf.data.Dataset:
        return self.test_split.dataset()

    @property
    def train_class_names(self) -> list[str]:
        return list(self.train_split.class_names)

    @property
    def test_class_names(self) -> list[str]:
        return list(self.test_split.class_names)


def validation_classes(num_classes: int, fraction: float) -> np.ndarray:
    """The labels (of ``num_classes`` training classes, in split order) held out for validation.

    Every ``1 / fraction``-th class, evenly spread: class ``c`` is held out when
    ``floor((c + 1) * fraction) > floor(c * fraction)`` (exact decimal arithmetic), so
    ``floor(num_classes * fraction)`` classes in all and none of the choice is random.
    Split order is the dataset's class order (sorted folder names; the demo set's
    classes come in sub-group order, so every sub-group of more than a few classes
    keeps some of them).
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ValueError(f"validation_fraction must be a number in [0, 1); got {fraction!r}.")
    exact = fractions.Fraction(str(float(fraction)))
    chosen = [c for c in range(num_classes) if int((c + 1) * exact) > int(c * exact)]
    return np.asarray(chosen, dtype=np.int64)


def hold_out_validation(dataset: SplitDataset, fraction: float) -> SplitDataset:
    """``dataset`` with ``validation_classes(C, fraction)`` of its training classes moved to ``validation_split``.

    Class-disjoint from what is left for training and from the test split (which is
    untouched); labels are renumbered 0..C-1 within each split. ``fraction == 0``
    returns ``dataset`` unchanged.
    """
    if fraction == 0:
        return dataset
    train = dataset.train_split
    held_out = validation_classes(train.num_classes, fraction)
    if len(held_out) < 2 or train.num_classes - len(held_out) < 2:
        raise ValueError(
            f"validation_fraction={fraction} of {train.num_classes} training classes leaves "
            f"{len(held_out)} validation and {train.num_classes - len(held_out)} training classes; both need at "
            f"least 2: choose a fraction between {2 / train.num_classes:.3g} and "
            f"{1 - 2 / train.num_classes:.3g}."
            if train.num_classes >= 4
            else f"validation_fraction={fraction}: {train.num_classes} training classes are too few to hold some out."
        )
    kept = np.setdiff1d(np.arange(train.num_classes), held_out)
    return dataclasses.replace(
        dataset, train_split=train.select_classes(kept), validation_split=train.select_classes(held_out)
    )


def make_train_dataset(
    split: Split,
    batch_size: int,
    examples_per_class: int = 2,
    seed: int = 0,
    image_size: int = 224,
    with_sample_ids: bool = False,
    start_batch: int = 0,
    antialias: bool = True,
) -> tf.data.Dataset:
    """Infinite class-balanced training batches of (images, labels[, sample_ids]).

    Each batch holds ``batch_size / examples_per_class`` classes x ``examples_per_class``
    images (see :func:`~tf_langdml.data.class_balanced_indices`), decoded and augmented
    with random resized crop + horizontal flip in parallel. Batch ``b`` depends only on
    ``(seed, b)``; pass ``start_batch`` to resume. Images are float32 RGB in [0, 255].
    ``antialias``: see :func:`~tf_langdml.data.resize_bilinear` (True: the paper's resize).
    """
    sources = tf.constant(split.sources)
    labels = tf.constant(split.labels.astype(np.int64))
    indices = class_balanced_indices(split.labels, batch_size, examples_per_class, seed=seed, start_batch=start_batch)

    train_image = _traced_once(_train_image_function, split, int(image_size), bool(antialias))

    def load(position, index):
        image_seed = tf.stack([tf.constant(int(seed), tf.int64), position])
        image = train_image(split.encoded(tf.gather(sources, index)), image_seed)
        if with_sample_ids:
            return image, tf.gather(labels, index), index
        return image, tf.gather(labels, index)

    data = indices.unbatch().enumerate(start=int(start_batch) * int(batch_size))
    data = data.map(
        tf.autograph.experimental.do_not_convert(load), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    data = data.batch(int(batch_size), drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return data.with_options(_one_thread_per_image())


# The decoder's graph (every format, the GIF block walk) takes about 0.4 s to trace. A pipeline calls one of the
# traced functions below, made once per decoding and preprocessing settings, instead of tracing the decoder into
# each new dataset (a run builds a training pipeline per epoch block and an evaluation pipeline per evaluation).
def _traced_once(make, split, *settings):
    key = (split.background, split.max_pixels, split.formats, *settings)
    try:
        hash(key)
    except TypeError:  # a background given as a list: trace it for this pipeline only
        return make.__wrapped__(*key)
    return make(*key)


@functools.lru_cache(maxsize=32)
def _train_image_function(background, max_pixels, formats, image_size, antialias):
    @tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([2], tf.int64)], autograph=False)
    def train_image(encoded, seed):
        return train_image_from_bytes(
            encoded,
            image_size,
            seed=seed,
            antialias=antialias,
            background=background,
            max_pixels=max_pixels,
            formats=formats,
        )

    return train_image


@functools.lru_cache(maxsize=32)
def _eval_image_function(background, max_pixels, formats, resize, image_size, antialias):
    @tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
    def eval_image(encoded):
        return eval_preprocess(decode_rgb(encoded, background, max_pixels, formats), resize, image_size, antialias)

    return eval_image


def _one_thread_per_image():
    # Images are processed in parallel by the map; letting each image's ops also
    # spread over the cores makes them fight for the same few cores.
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1
    return options


def make_eval_dataset(
    split: Split,
    batch_size: int,
    image_size: int = 224,
    resize: int | None = None,
    with_sample_ids: bool = False,
    antialias: bool = True,
) -> tf.data.Dataset:
    """Batches of (images, labels[, sample_ids]) over the whole split, in order, with eval preprocessing.

    ``resize`` is the shorter side before the centre crop (default 256 for 224, in proportion otherwise).
    """

    eval_image = _traced_once(_eval_image_function, split, resize, int(image_size), bool(antialias))

    def load(encoded, label, sample_id):
        image = eval_image(encoded)
        return (image, label, sample_id) if with_sample_ids else (image, label)

    data = split.dataset().map(
        tf.autograph.experimental.do_not_convert(load), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return data.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE).with_options(_one_thread_per_image())
