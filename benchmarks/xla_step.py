"""Train-step time with and without XLA (jit_compile), same model and batch, side by side in one run.

A LanguageGuidedModel (multi-similarity + ELG language loss with a random table) is
built twice from the same weights; after warm-up (tracing, XLA compilation), steps
alternate between the two so a slow spell of the machine hits both alike.

    .venv/bin/python benchmarks/xla_step.py [--backbone resnet50] [--image-size 128] [--batch 32] [--steps 8]
"""

import argparse
import time

import tf_langdml  # noqa: F401  (first: binds tf.keras to tf-keras before TensorFlow loads)

# isort: split
import numpy as np
import tensorflow as tf

from tf_langdml import keras
from tf_langdml.models import LanguageGuidedModel, build_embedder


def make(args, table, jit_compile):
    keras.utils.set_random_seed(0)
    embedder = build_embedder(
        args.backbone, weights=None, embed_dim=128, input_shape=(args.image_size, args.image_size, 3)
    )
    model = LanguageGuidedModel(embedder, language_table=table)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-5), language_weight=7.5, weight_decay=4e-4, jit_compile=jit_compile
    )
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (args.batch, args.image_size, args.image_size, 3)).astype("float32"))
    labels = tf.constant(np.repeat(np.arange(args.batch // 2), 2).astype("int32"))
    table = rng.normal(size=(args.batch // 2, 1, 384)).astype("float32")
    models = {"plain": make(args, table, False), "xla": make(args, table, True)}
    models["xla"].embedder.set_weights(models["plain"].embedder.get_weights())
    warmup = {}
    for name, model in models.items():
        start = time.perf_counter()
        model.train_on_batch(images, labels)
        warmup[name] = time.perf_counter() - start
    wall = {name: [] for name in models}
    cpu = {name: [] for name in models}
    for _ in range(args.steps):
        for name, model in models.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            model.train_on_batch(images, labels)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu_start)
    print(
        f"{args.backbone} at {args.image_size} x {args.image_size}, batch {args.batch}, {args.steps} steps each "
        "(seconds: first step incl. tracing/compilation | best | median | median CPU)"
    )
    for name in models:
        print(
            f"  {name:5s}: {warmup[name]:7.1f} | {min(wall[name]):6.3f} | {np.median(wall[name]):6.3f} | "
            f"{np.median(cpu[name]):6.3f}"
        )
    print(
        f"ratio xla / plain: best {min(wall['xla']) / min(wall['plain']):.2f}, median "
        f"{np.median(wall['xla']) / np.median(wall['plain']):.2f}, CPU {np.median(cpu['xla']) / np.median(cpu['plain']):.2f}"
    )


if __name__ == "__main__":
    main()
