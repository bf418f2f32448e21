"""Forward passes for inference: a model's outputs batch by batch over a split, with progress.

Progress (``verbose=1``): a Keras progress bar when stdout is a terminal; otherwise
(piped, logged) a line on stderr each time another tenth of the images is done,
``embedded 1,280 / 12,800 images (10 %), 57 s elapsed``, so a log gets about ten lines
however large the split.
"""

from __future__ import annotations

import os
import sys
import time
import typing
import weakref
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from tf_langdml._keras import keras
from tf_langdml.data.splits import Split, make_eval_dataset
from tf_langdml.durations import format_duration

_TRACED = weakref.WeakKeyDictionary()  # model -> its traced forward pass


def inference_outputs(model: keras.Model, images: tf.Tensor | np.ndarray) -> tf.Tensor:
    """Outputs (logits of a classifier, embeddings of an embedder) of images in [0, 255], as float32.

    One traced graph per model, reused across calls. Not ``model.predict``, which
    replaces ``model.history`` when called from a callback during ``fit``. A batch of
    zero images answers zeros of shape (0, *output shape) without running the model
    (oneDNN's AVX-512 convolution rejects a batch of zero).
    """
    function = _TRACED.get(model)
    if function is None:

        def forward(batch):
            traced = {}

            def run():
                outputs = tf.cast(model(tf.cast(batch, tf.float32), training=False), tf.float32)
                traced["shape"] = [0 if size is None else size for size in outputs.shape[1:]]
                return outputs

            def nothing():
                # tf.cond traces ``run`` first, so the output shape is known here (subclassed models too)
                # without running the model; a size unknown until run time (None) is answered as 0.
                return tf.zeros([0, *traced["shape"]], tf.float32)

            return tf.cond(tf.shape(batch)[0] > 0, run, nothing)

        function = tf.function(forward, reduce_retracing=True)
        _TRACED[model] = function
    return function(images)


# The gallery pass's batch on a CPU (docs/benchmarks.md, "Gallery indexing"; benchmarks/gallery_index.py): the CPU
# time per image was lowest at about 2^18 input pixels per batch on 2 cores (EfficientNet-Lite0: batch 16-32 at 96,
# 4-8 at 224) and grew past it (the activations leave the caches), so the batch is sized in pixels per core.
PIXELS_PER_CORE = 2**17
# Peak memory one forward pass adds per input pixel: twice the largest measured (ResNet50 at 224: 255 bytes, 12.2 MiB
# per image; EfficientNet-Lite0: 123 at 224, 224 at 96); a batch may take at most 1 / MEMORY_SHARE of the free memory.
BYTES_PER_PIXEL = 512
MEMORY_SHARE = 4


def gallery_batch_size(image_size: int, items: int, cores: int, available_bytes: int) -> int:
    """Images per forward pass of a gallery on a CPU: ``PIXELS_PER_CORE`` input pixels per core, capped by memory
    and the gallery.

    ``min(cores x PIXELS_PER_CORE / image_size^2, available_bytes / MEMORY_SHARE /
    (BYTES_PER_PIXEL x image_size^2), items)``, rounded down, at least 1.
    """
    pixels = int(image_size) ** 2
    by_cores = max(1, int(cores)) * PIXELS_PER_CORE // pixels
    by_memory = int(available_bytes) // MEMORY_SHARE // (BYTES_PER_PIXEL * pixels)
    return max(1, min(by_cores, by_memory, int(items)))


def available_memory() -> int:
    """Bytes of free physical memory (``os.sysconf``: available pages x page size)."""
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def visible_gpus() -> list:
    """The GPUs TensorFlow sees (``tf.config.list_physical_devices("GPU")``)."""
    return tf.config.list_physical_devices("GPU")


def progress_line(done: int, total: int, seconds: float, action: str = "embedded") -> str:
    """``embedded 1,280 / 12,800 images (10 %), 57 s elapsed``: the piped progress line of an image pass."""
    percent = 100 * done // total if total else 100
    return f"{action} {done:,} / {total:,} images ({percent} %), {format_duration(seconds)} elapsed"


class ImageProgress:
    """Progress of a pass over ``total`` images: a Keras Progbar (in batches) on a terminal, else tenths on stderr.

    ``update(done)`` after each batch with the images done so far. ``terminal``: None
    asks ``sys.stdout.isatty()`` (where Keras draws its bar); ``stream``: where the
    piped lines go (stderr when None, looked up at each line); ``clock``: monotonic seconds.
    """

    def __init__(
        self,
        total: int,
        batch_size: int,
        action: str = "embedded",
        terminal: bool | None = None,
        stream: typing.TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.batch_size, self.action = int(total), int(batch_size), action
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self.stream, self.clock, self.started = stream, clock, clock()
        self.tenths_shown = 0
        self.bar = keras.utils.Progbar(-(-self.total // self.batch_size), unit_name="batch") if self.terminal else None

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(-(-done // self.batch_size))
            return
        tenths = 10 * done // self.total if self.total else 10
        if tenths > self.tenths_shown:  # one line per tenth crossed, however many batches that took
            self.tenths_shown = tenths
            print(
                f"tf_langdml: {progress_line(done, self.total, self.clock() - self.started, self.action)}",
                file=self.stream or sys.stderr,
                flush=True,
            )


def forward_batches(
    model: keras.Model,
    split: Split,
    batch_size: int = 64,
    image_size: int = 224,
    verbose: int = 1,
    action: str = "embedded",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (outputs, labels) as numpy for each eval-preprocessed batch of a split, in order.

    ``verbose``: 0 silent; 1 progress (:class:`ImageProgress`; ``action`` is its verb).
    """
    dataset = make_eval_dataset(split, batch_size, image_size=image_size)
    progress = ImageProgress(len(split.labels), batch_size, action) if verbose and len(split.labels) else None
    done = 0
    for images, labels in dataset:
        outputs, labels = inference_outputs(model, images).numpy(), labels.numpy()
        done += len(labels)
        yield outputs, labels
        if progress is not None:
            progress.update(done)


def embed_split(
    model: keras.Model, split: Split, batch_size: int = 64, image_size: int = 224, verbose: int = 1
) -> np.ndarray:
    """Embeddings (N, D) float32 of a :class:`~tf_langdml.data.Split` with eval preprocessing, in order.

    A split of no images gives (0, D) without running the model.
    """
    batches = [outputs for outputs, _ in forward_batches(model, split, batch_size, image_size, verbose)]
    if not batches:
        return inference_outputs(model, np.zeros((0, image_size, image_size, 3), np.float32)).numpy()
    return np.concatenate(batches)
