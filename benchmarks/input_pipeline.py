"""Images per second of the tf.data train pipeline against a plain Python loop, side by side.

A folder of JPEGs (about 500 x 375, like CUB's photos) is generated first. Both
sides decode, random-resized-crop to 224, flip and produce float32 arrays for the
same sampled indices; tf.data uses `make_train_dataset` (parallel map, prefetch),
the loop uses PIL + numpy, one image at a time. Then one ResNet50 training step at
batch 32 is timed, so the reader sees whether the input pipeline can starve training.
Both resize settings are measured: antialiased (the default, as the paper's
torchvision/PIL pipeline) and ``antialias=False`` (TensorFlow's default resize),
each against a loop doing the same.

Decoding alone is compared too: ``decode_rgb`` (header size check, alpha composited onto
the background, 16-bit PNG rounded) against TensorFlow's bare
``tf.io.decode_image(channels=3)`` (what ``decode_rgb`` was before: alpha dropped), on
the RGB JPEGs and on RGBA PNGs of the same size, in alternating rounds.

    .venv/bin/python benchmarks/input_pipeline.py [--images 2000] [--batches 30]
"""

import argparse
import gc
import math
import os
import tempfile
import time

import tf_langdml  # isort: skip
import numpy as np
import tensorflow as tf
from PIL import Image

from tf_langdml import keras
from tf_langdml.data import class_balanced_indices, decode_rgb, load_image_folder, make_train_dataset


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


def plain_loop_image(path, rng, size=224, antialias=True):
    """Decode, random resized crop (scale 0.08-1, ratio 3/4-4/3), flip, float32 -- in PIL + numpy.

    PIL's bilinear ``resize`` is antialiased (as torchvision's RandomResizedCrop); its
    ``transform`` with an extent box samples bilinearly without antialiasing.
    """
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
    box = (left, top, left + crop_w, top + crop_h)
    if antialias:
        crop = image.crop(box).resize((size, size), Image.BILINEAR)
    else:
        crop = image.transform((size, size), Image.EXTENT, box, Image.BILINEAR)
    array = np.asarray(crop, dtype=np.float32)
    return array[:, ::-1] if rng.uniform() < 0.5 else array


def compare(split, args, antialias):
    """Alternating timed rounds of tf.data and the loop; returns rates and CPU times per image."""
    rng = np.random.default_rng(0)
    loop_images = args.loop_images // args.rounds
    indices = np.concatenate(
        [
            batch.numpy()
            for batch in class_balanced_indices(split.labels, 90, 2, seed=0).take(math.ceil(args.loop_images / 90))
        ]
    )
    result = {"tfdata": [], "loop": [], "tfdata_cpu": [], "loop_cpu": []}
    # Alternating rounds, so a slow spell of the machine hits both sides alike. Each
    # tf.data round gets a fresh iterator (one warm-up batch, untimed) that is dropped
    # before the loop runs, so no batch is prefetched while the loop is timed.
    per_round = args.batches // args.rounds
    for round_index in range(args.rounds):
        dataset = iter(
            make_train_dataset(split, 90, 2, seed=0, start_batch=round_index * (per_round + 1), antialias=antialias)
        )
        next(dataset)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(per_round):
            next(dataset)
        result["tfdata"].append(per_round * 90 / (time.perf_counter() - start))
        result["tfdata_cpu"].append((time.process_time() - cpu) / (per_round * 90) * 1e3)
        del dataset
        gc.collect()

        start, cpu = time.perf_counter(), time.process_time()
        for index in indices[round_index * loop_images : (round_index + 1) * loop_images]:
            plain_loop_image(split.sources[index], rng, antialias=antialias)
        result["loop"].append(loop_images / (time.perf_counter() - start))
        result["loop_cpu"].append((time.process_time() - cpu) / loop_images * 1e3)
    return result


def write_rgba_pngs(root, paths):
    """RGBA PNG copies of the JPEGs, with a transparent border (a cut-out on a transparent background)."""
    out = []
    for index, path in enumerate(paths):
        rgba = np.asarray(Image.open(path).convert("RGBA")).copy()
        rgba[:40, :, 3] = rgba[-40:, :, 3] = rgba[:, :40, 3] = rgba[:, -40:, 3] = 0
        out.append(os.path.join(root, f"{index:05d}.png"))
        Image.fromarray(rgba).save(out[-1])
    return out


def decode_cost(paths, decode, repeats):
    """CPU milliseconds (all threads) per image of decoding ``paths`` in a tf.data map, as the pipelines run.

    CPU time rather than wall time: it is what a decode takes from the cores that the
    rest of the pipeline and training share, and it is far less noisy on a busy machine.
    """
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1
    data = tf.data.Dataset.from_tensor_slices([open(path, "rb").read() for path in paths]).repeat(repeats)
    data = data.map(lambda encoded: tf.shape(decode(encoded))[0], num_parallel_calls=1)
    data = data.batch(50).with_options(options)
    for _ in data.take(1):
        pass
    start = time.process_time()
    count = sum(int(tf.size(batch)) for batch in data)
    return (time.process_time() - start) / count * 1e3


DECODERS = {
    "decode_rgb, the split's formats (what the pipelines run)": lambda formats: (
        lambda data: decode_rgb(data, formats=formats)
    ),
    "decode_rgb, any format (serving, mixed folders)": lambda formats: decode_rgb,
    "tf.io.decode_image (alpha dropped, no size check)": lambda formats: (
        lambda data: tf.io.decode_image(data, channels=3, expand_animations=False)
    ),
}


def compare_decoders(jpegs, pngs, rounds, repeats=2):
    """Alternating rounds of the decoders on RGB JPEGs and RGBA PNGs; CPU ms per image."""
    costs = {(kind, name): [] for kind in ("RGB JPEG", "RGBA PNG") for name in DECODERS}
    for _ in range(rounds):
        for kind, paths, formats in (("RGB JPEG", jpegs, ("JPEG",)), ("RGBA PNG", pngs, ("PNG",))):
            for name, make in DECODERS.items():
                costs[kind, name].append(decode_cost(paths, make(formats), repeats))
    return costs


def resnet50_train_rate():
    embedder = tf_langdml.build_embedder("resnet50", weights=None, embed_dim=128)
    model = tf_langdml.LanguageGuidedModel(embedder)
    model.compile(optimizer=keras.optimizers.Adam(1e-5))
    batch = tf.random.uniform((32, 224, 224, 3), 0, 255)
    labels = tf.repeat(tf.range(16), 2)
    model.train_on_batch(batch, labels)
    start = time.perf_counter()
    for _ in range(2):
        model.train_on_batch(batch, labels)
    return 2 * 32 / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=30, help="batches of 90 timed for tf.data, per setting")
    parser.add_argument("--loop-images", type=int, default=900, help="images timed for the plain loop, per setting")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both sides")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        write_folder(root, args.images)
        print(f"generated {args.images} JPEGs of 500x375 in {time.perf_counter() - start:.0f} s")
        split = load_image_folder(root, test_fraction=0.1).train_split
        jpegs = list(split.sources[:300])
        decoders = compare_decoders(jpegs, write_rgba_pngs(root, jpegs), args.rounds)
        results = {antialias: compare(split, args, antialias) for antialias in (True, False)}
        train_rate = resnet50_train_rate()

    print(f"{args.rounds} alternating rounds per setting; images/s as best | median; CPU time per image (all threads)")
    for antialias, result in results.items():
        tfdata, loop = result["tfdata"], result["loop"]
        title = (
            "antialiased resize (default; the paper's PIL resize)"
            if antialias
            else "antialias=False (TensorFlow's default resize; PIL transform in the loop)"
        )
        print(title)
        print(
            f"  tf.data train pipeline : {max(tfdata):7.1f} | {np.median(tfdata):7.1f} images/s   "
            f"{min(result['tfdata_cpu']):5.2f} ms CPU"
        )
        print(
            f"  plain PIL + numpy loop : {max(loop):7.1f} | {np.median(loop):7.1f} images/s   "
            f"{min(result['loop_cpu']):5.2f} ms CPU"
        )
        print(
            f"  ratio tf.data / loop   : {max(tfdata) / max(loop):7.2f} | {np.median(tfdata) / np.median(loop):7.2f}"
            "  (target >= 2)"
        )
    print(
        f"decoding alone, 300 images of 500 x 375, {args.rounds} alternating rounds; CPU ms per image as "
        "best | median, and the ratio to tf.io.decode_image:"
    )
    bare_name = list(DECODERS)[-1]
    for kind in ("RGB JPEG", "RGBA PNG"):
        bare = decoders[kind, bare_name]
        for name in DECODERS:
            cost = decoders[kind, name]
            print(
                f"  {kind} {name:55s} {min(cost):6.2f} | {np.median(cost):6.2f} ms   ratio "
                f"{min(cost) / min(bare):5.2f} | {np.median(cost) / np.median(bare):5.2f}"
            )
    slowest = min(float(np.median(result["tfdata"])) for result in results.values())
    print(
        f"ResNet50 train step      : {train_rate:7.1f} images/s  (batch 32, 224 x 224) -> "
        f"{'input keeps up' if slowest > train_rate else 'input would starve training'}"
    )


if __name__ == "__main__":
    main()
