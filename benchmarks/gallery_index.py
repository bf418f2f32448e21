"""Gallery images per second through ``tf-langdml index``'s embedding path, per precision policy and batch size.

A folder of JPEGs (500 x 375, like CUB's photos) is generated in a temporary folder
(removed at the end) and read as ``index`` reads a gallery
(:func:`tf_langdml.runs.serving.gallery_split`). For each backbone and image size
(random weights: speed does not depend on them), the embedder is built in float32 and
its copy per policy made by :func:`tf_langdml.export.with_precision` (what a run
restored under that policy computes, and what the export serves); every (policy, batch
size) pair embeds the whole gallery with :func:`tf_langdml.inference.embed_split`,
index's own call (decode in parallel, batch, prefetch, forward pass). One untimed pass
per pair first (tracing); then ``--rounds`` timed passes per pair, the pairs in
alternating order each round (forward, then reversed), so a slow spell of the shared
machine hits all alike. Printed per pair: median and best images / s, the median CPU
seconds per image, the ratio of images / s to float32 at the same batch size and to the
same policy's best batch size.

``--memory`` measures, per backbone and batch size, in a fresh process each (so no
earlier pass's memory is reused), the peak resident memory one traced forward pass of
random images adds (``VmHWM`` minus ``VmRSS`` before the call, tracing included), and the
slope between the smallest and largest batch per image and per input pixel: what
:data:`tf_langdml.inference.BYTES_PER_PIXEL` bounds.

``--stages`` measures, per backbone at each batch size given, whether decoding runs
during the forward pass: decode alone (iterate the eval dataset), forward alone (the same
batches held in memory), and both (``embed_split``), in alternating order, wall and CPU
seconds; then the loop of :func:`tf_langdml.inference.forward_batches` timed inside: how long
it waits for each next batch. When the input is decoded in parallel and prefetched while the
network runs, only the first batch is waited for. (On a machine whose cores the forward pass
already fills, decoding alongside it cannot make the pass faster than the forward pass plus the
decode's CPU time shared over the cores: the CPU seconds of both are the sum of the two.)

    .venv/bin/python benchmarks/gallery_index.py [--models efficientnet_lite0:96,efficientnet_lite0:224,resnet50:224]
        [--batch-sizes 1,4,8,16,32,64] [--policies float32,mixed_bfloat16] [--images 128] [--rounds 2]
        [--stages] [--memory] [--quick]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import tf_langdml  # noqa: F401  (first: binds tf.keras to tf-keras before TensorFlow loads)

# isort: split
import numpy as np
import tensorflow as tf
from PIL import Image

from tf_langdml import export, inference
from tf_langdml.data.splits import make_eval_dataset
from tf_langdml.models import build_embedder
from tf_langdml.models.precision import reported_cpu_flags
from tf_langdml.runs.schema import load_config
from tf_langdml.runs.serving import gallery_split


def write_folder(root, num_images, num_classes=8, seed=0):
    rng = np.random.default_rng(seed)
    for index in range(num_images):
        folder = os.path.join(root, f"class_{index % num_classes}")
        os.makedirs(folder, exist_ok=True)
        small = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)  # smooth structure + noise: photo-like sizes
        image = Image.fromarray(small).resize((500, 375), Image.BILINEAR)
        noisy = np.clip(np.asarray(image, np.int16) + rng.integers(-12, 13, (375, 500, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(os.path.join(folder, f"{index:05d}.jpg"), quality=90)


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def memory_kib(field):
    with open("/proc/self/status", encoding="utf-8") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":"))


def peak_added_kib(function):
    """Peak resident memory (KiB) ``function`` added: VmHWM after resetting it (Linux clear_refs 5), minus VmRSS."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as handle:
            handle.write("5")
    except OSError:
        return float("nan")
    before = memory_kib("VmRSS")
    function()
    return memory_kib("VmHWM") - before


FORWARD_PEAK = """
import sys
sys.path.insert(0, sys.argv[1])
from gallery_index import build_embedder, inference, np, peak_added_kib, tf
name, size, batch = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model = build_embedder(name, weights=None, embed_dim=128, input_shape=(size, size, 3))
images = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32))
print(peak_added_kib(lambda: inference.inference_outputs(model, images).numpy()))
"""


def memory(name, size, args):
    added = {}
    for batch in args.batch_sizes:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                FORWARD_PEAK,
                os.path.dirname(os.path.abspath(__file__)),
                name,
                str(size),
                str(batch),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        added[batch] = float(result.stdout.split()[-1]) * 1024
        print(f"{name:18s} {size:3d}  batch {batch:3d}  forward peak +{added[batch] / 2**20:8.1f} MiB", flush=True)
    low, high = min(args.batch_sizes), max(args.batch_sizes)
    slope = (added[high] - added[low]) / (high - low)
    print(
        f"{name:18s} {size:3d}  per image (batch {low} -> {high}): {slope / 2**20:6.1f} MiB, "
        f"{slope / size**2:6.0f} bytes per input pixel",
        flush=True,
    )


def throughput(name, size, split, args):
    tf.keras.utils.set_random_seed(0)
    embedder = build_embedder(name, weights=None, embed_dim=128, input_shape=(size, size, 3))
    models = {policy: export.with_precision(embedder, policy) for policy in args.policies}
    pairs = [(policy, batch) for policy in args.policies for batch in args.batch_sizes]
    count = len(split.labels)
    for policy, batch in pairs:  # untimed: tracing
        inference.embed_split(models[policy], split, batch, size, verbose=0)
    times = {pair: [] for pair in pairs}
    for round_index in range(args.rounds):
        for policy, batch in pairs if round_index % 2 == 0 else pairs[::-1]:
            model = models[policy]
            times[policy, batch].append(
                timed(lambda model=model, batch=batch: inference.embed_split(model, split, batch, size, verbose=0))
            )
    rate = {pair: count / statistics.median(wall for wall, _ in values) for pair, values in times.items()}
    for policy, batch in pairs:
        walls = [wall for wall, _ in times[policy, batch]]
        cpu = statistics.median(cpu for _, cpu in times[policy, batch])
        best_batch = max(rate[policy, other] for other in args.batch_sizes)
        print(
            f"{name:18s} {size:3d}  {policy:14s} batch {batch:3d}  {rate[policy, batch]:7.1f} images/s "
            f"(best {count / min(walls):7.1f})  CPU {1e3 * cpu / count:6.1f} ms/image  "
            f"ratio to float32 {rate[policy, batch] / rate.get(('float32', batch), float('nan')):5.2f}  "
            f"to best batch {rate[policy, batch] / best_batch:5.2f}",
            flush=True,
        )


def waits(model, split, batch, size):
    """(total, forward, input wait of the first batch, of the rest) seconds of forward_batches' own loop, timed."""
    iterator, forward, waited = iter(make_eval_dataset(split, batch, size)), 0.0, []
    started = time.perf_counter()
    while True:
        before = time.perf_counter()
        try:
            images, _ = next(iterator)
        except StopIteration:
            break
        waited.append(time.perf_counter() - before)
        before = time.perf_counter()
        inference.inference_outputs(model, images).numpy()
        forward += time.perf_counter() - before
    return time.perf_counter() - started, forward, waited[0], sum(waited[1:])


def stages(name, size, split, args):
    tf.keras.utils.set_random_seed(0)
    model = build_embedder(name, weights=None, embed_dim=128, input_shape=(size, size, 3))
    count = len(split.labels)
    for batch in args.batch_sizes:
        held = [images for images, _ in make_eval_dataset(split, batch, size)]

        def decode(batch=batch):
            for _ in make_eval_dataset(split, batch, size):
                pass

        def forward(held=held):
            for images in held:
                inference.inference_outputs(model, images).numpy()

        def both(batch=batch):
            inference.embed_split(model, split, batch, size, verbose=0)

        steps = {"decode": decode, "forward": forward, "both": both}
        for step in steps.values():  # untimed: tracing
            step()
        times = {step: [] for step in steps}
        waited = []
        for round_index in range(args.rounds):
            for step in list(steps) if round_index % 2 == 0 else list(steps)[::-1]:
                times[step].append(timed(steps[step]))
            waited.append(waits(model, split, batch, size))
        wall = {step: statistics.median(value for value, _ in values) for step, values in times.items()}
        cpu = {step: statistics.median(value for _, value in values) for step, values in times.items()}
        total, _, first, rest = (statistics.median(values) for values in zip(*waited))
        print(
            f"{name:18s} {size:3d}  batch {batch:3d}  "
            + "  ".join(f"{step} {count / wall[step]:6.1f} images/s (CPU {cpu[step]:5.2f} s)" for step in steps)
            + f"  both / (decode + forward) CPU {cpu['both'] / (cpu['decode'] + cpu['forward']):4.2f}  "
            f"waiting for input: first batch {first:5.3f} s, the other {count // batch + bool(count % batch) - 1} "
            f"{rest:5.3f} s of {total:5.2f} s",
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet_lite0:96,efficientnet_lite0:224,resnet50:224")
    parser.add_argument("--batch-sizes", default="1,4,8,16,32,64")
    parser.add_argument("--policies", default="float32,mixed_bfloat16")
    parser.add_argument("--images", type=int, default=128, help="gallery images (generated JPEGs)")
    parser.add_argument("--rounds", type=int, default=2, help="timed passes per (policy, batch size)")
    parser.add_argument("--stages", action="store_true", help="decode alone, forward alone, both (float32)")
    parser.add_argument("--memory", action="store_true", help="peak memory of one forward pass per batch size")
    parser.add_argument("--quick", action="store_true", help="smoke check: toy_cnn at 32, 24 images, 1 round")
    args = parser.parse_args()
    models = [(item.split(":")[0], int(item.split(":")[1])) for item in args.models.split(",")]
    if args.quick:
        models, args.images, args.rounds = [("toy_cnn", 32)], 24, 1
    args.batch_sizes = [int(batch) for batch in args.batch_sizes.split(",")]
    args.policies = args.policies.split(",")
    print(
        f"CPU features reported: {', '.join(reported_cpu_flags()) or 'none of avx2/fma/avx512f/avx512_bf16/amx_bf16'}; "
        f"{os.cpu_count()} cores; TensorFlow {tf.__version__}; {args.images} images of 500 x 375 (JPEG), "
        f"{args.rounds} timed passes per pair, alternating; median (best)"
    )
    if args.memory:
        for name, size in models:
            memory(name, size, args)
        return
    folder = tempfile.mkdtemp(prefix="tf_langdml_gallery_benchmark_")
    try:
        write_folder(folder, args.images)
        for name, size in models:
            config = load_config(None, ["data.dataset=folder", f"data.data_dir={folder}", f"data.image_size={size}"])
            split, _, _ = gallery_split(folder, config)
            (stages if args.stages else throughput)(name, size, split, args)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
