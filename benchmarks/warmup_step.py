"""The training step during a backbone warmup against the step after it, side by side.

During ``training.warmup_epochs`` the backbone gets no update, and the step takes no
gradient for it: the backward pass stops at the head, so a warmup step should cost about
the forward pass plus the head's backward. This prints what it costs on this machine.

Setting: the demo's (EfficientNet-Lite0 or ResNet50 -> 128-d, random weights, batch 32 =
16 classes x 2, 96 x 96, multi-similarity + L_match w 2.5 on a random table, Adam 1e-4).
One model with ``warmup_steps`` larger than the benchmark (every step a warmup step) and
one without a warmup, built from the same weights; one untimed step each (tracing), then
blocks of ``--steps`` steps, one block per model per round, alternating which goes first.

    .venv/bin/python benchmarks/warmup_step.py [--backbone efficientnet_lite0] [--image-size 96] [--steps 5] [--rounds 3]
"""

import argparse
import statistics
import time

import tf_langdml  # noqa: F401  (first: binds tf.keras to tf-keras before TensorFlow loads)

# isort: split
import numpy as np
import tensorflow as tf

from tf_langdml import keras
from tf_langdml.models import LanguageGuidedModel, build_embedder

NUM_CLASSES = 16


def build(backbone, image_size, warmup_steps, table, initial_weights):
    keras.utils.set_random_seed(0)
    embedder = build_embedder(backbone, weights=None, embed_dim=128, input_shape=(image_size, image_size, 3))
    embedder.set_weights(initial_weights)
    model = LanguageGuidedModel(embedder, language_table=table)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        dml_loss="multisimilarity",
        language_weight=2.5,
        warmup_steps=warmup_steps,
    )
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    size = arguments.image_size
    rng = np.random.default_rng(0)
    table = tf.math.l2_normalize(rng.normal(size=(NUM_CLASSES, 384)).astype("float32"), axis=1)
    images = tf.constant(rng.uniform(0, 255, size=(2 * NUM_CLASSES, size, size, 3)).astype("float32"))
    labels = tf.constant(np.repeat(np.arange(NUM_CLASSES), 2).astype("int32"))
    keras.utils.set_random_seed(0)
    reference = build_embedder(arguments.backbone, weights=None, embed_dim=128, input_shape=(size, size, 3))
    weights = reference.get_weights()
    total = (arguments.rounds * (arguments.steps + 1) + 1) * 10
    models = {
        "warmup step": build(arguments.backbone, size, total, table, weights),
        "full step": build(arguments.backbone, size, 0, table, weights),
    }
    for model in models.values():
        model.train_on_batch(images, labels)  # tracing
    times = {name: [] for name in models}
    for round_index in range(arguments.rounds):
        order = list(models) if round_index % 2 == 0 else list(models)[::-1]
        for name in order:
            models[name].train_on_batch(images, labels)  # untimed: the other model's working set
            for _ in range(arguments.steps):
                start = time.perf_counter()
                models[name].train_on_batch(images, labels)
                times[name].append(time.perf_counter() - start)
    assert int(models["warmup step"].backbone_optimizer.iterations) == 0, "every timed step was a warmup step"
    full = statistics.median(times["full step"])
    print(
        f"{arguments.backbone} at {size} px, batch {2 * NUM_CLASSES}, {arguments.rounds} rounds x {arguments.steps} steps"
    )
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"  {name:12s} median {median * 1000:7.1f} ms  best {min(values) * 1000:7.1f} ms  ratio {median / full:.2f}"
        )


if __name__ == "__main__":
    main()
