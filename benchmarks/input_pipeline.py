"""Images per second of the tf.data train pipeline against a plain Python loop, side by side.

A folder of JPEGs (about 500 x 375, like CUB's photos) is generated first. Both
sides decode, random-resized-crop to 224, flip and produce float32 arrays for the
same sampled indices; tf.data uses `make_train_dataset` (parallel map, prefetch),
the loop uses PIL + numpy, one image at a time. Then one ResNet50 training step at
batch 32 is timed, so the reader sees whether the input pipeline can starve training.

    .venv/bin/python benchmarks/input_pipeline.py [--images 2000] [--batches 30]
"""

import argparse
import math
import os
import tempfile
import time

import tf_langdml  # isort: skip
import numpy as np
import tensorflow as tf
from PIL import Image

from tf_langdml import keras
from tf_langdml.data import class_balanced_indices, load_image_folder, make_train_dataset


def write_folder(root, num_images, num_classes=50, seed=0):
    rng = np.random.default_rng(seed)
    for index in range(num_images):
        folder = os.path.join(root, f"{index % num_classes:03d}.class_{index % num_classes}")
        os.makedirs(folder, exist_ok=True)
        # Smooth structure plus noise compresses like a photo (about 30-60 kB).
        small = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)
        image = Image.fromarray(small).resize((500, 375), Image.BILINEAR)
        noisy = np.clip(np.asarray(image, np.int16) + rng.integers(-12, 13, (375, 500, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(os.path.join(folder, f"{index:05d}.jpg"), quality=90)


def plain_loop_image(path, rng, size=224):
    """Decode, random resized crop (scale 0.08-1, ratio 3/4-4/3), flip, float32 -- in PIL + numpy."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        crop_w, crop_h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left, top = rng.integers(0, width - crop_w + 1), rng.integers(0, height - crop_h + 1)
            break
    else:
        left, top, crop_w, crop_h = 0, 0, width, height
    crop = image.crop((left, top, left + crop_w, top + crop_h)).resize((size, size), Image.BILINEAR)
    array = np.asarray(crop, dtype=np.float32)
    return array[:, ::-1] if rng.uniform() < 0.5 else array


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=30, help="batches of 90 timed for tf.data")
    parser.add_argument("--loop-images", type=int, default=900, help="images timed for the plain loop")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        write_folder(root, args.images)
        print(f"generated {args.images} JPEGs of 500x375 in {time.perf_counter() - start:.0f} s")
        data = load_image_folder(root, test_fraction=0.1)
        split = data.train_split

        dataset = iter(make_train_dataset(split, batch_size=90, examples_per_class=2, seed=0))
        next(dataset)  # warm up
        start = time.perf_counter()
        for _ in range(args.batches):
            images, _ = next(dataset)
        tfdata_rate = args.batches * 90 / (time.perf_counter() - start)

        rng = np.random.default_rng(0)
        indices = np.concatenate([batch.numpy() for batch in class_balanced_indices(split.labels, 90, 2, seed=0).take(
            math.ceil(args.loop_images / 90))])[: args.loop_images]
        start = time.perf_counter()
        for index in indices:
            plain_loop_image(split.sources[index], rng)
        loop_rate = len(indices) / (time.perf_counter() - start)

        embedder = tf_langdml.build_embedder("resnet50", weights=None, embed_dim=128)
        model = tf_langdml.LanguageGuidedModel(embedder)
        model.compile(optimizer=keras.optimizers.Adam(1e-5))
        batch = tf.random.uniform((32, 224, 224, 3), 0, 255)
        labels = tf.repeat(tf.range(16), 2)
        model.train_on_batch(batch, labels)
        start = time.perf_counter()
        for _ in range(2):
            model.train_on_batch(batch, labels)
        train_rate = 2 * 32 / (time.perf_counter() - start)

    print(f"tf.data train pipeline : {tfdata_rate:8.1f} images/s  ({args.batches} batches of 90)")
    print(f"plain PIL + numpy loop : {loop_rate:8.1f} images/s  ({len(indices)} images)")
    print(f"ratio tf.data / loop   : {tfdata_rate / loop_rate:8.2f}  (target >= 2)")
    print(f"ResNet50 train step    : {train_rate:8.1f} images/s  (batch 32, 224 x 224) -> "
          f"{'input keeps up' if tfdata_rate > train_rate else 'input would starve training'}")


if __name__ == "__main__":
    main()
