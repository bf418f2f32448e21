"""Training-step time and embedding throughput per precision policy, side by side (float32 vs mixed_bfloat16).

For each backbone (ResNet50 and EfficientNet-Lite0 -> 128-d, random weights: speed does
not depend on them), one ``LanguageGuidedModel`` per policy, built under that Keras
policy from the same initial weights (variables float32, layers computing in the
policy's dtype; the losses and similarity matrices stay float32), multi-similarity +
L_match (w 7.5) on a random ELG-sized table, Adam 1e-5, frozen BatchNorm statistics,
batch 32 (16 classes x 2) at 224 x 224, the issue's setting. One untimed step per model
first (tracing); then blocks of steps, one block per policy per round, alternating the
order each round, the first step of every block untimed (the allocator re-faults the
other model's working set). The embedding pass (eval-mode forward of the embedder, a batch
of 64 images at 224) is timed once per block and reported as images per second.

Printed per backbone and policy: median and best wall seconds per step, median CPU
seconds, the ratio to float32, the first step's loss (the two policies start from the
same weights and batch, so it shows what bfloat16 rounding does to the loss), and the
embedding pass's images / s. The header says which CPU features the machine reports; after each
backbone's lines, what ``training.precision: auto`` resolves to for that backbone, image size and
batch (the library's own resolution: on a device without fast bfloat16 float32 by the rule, without
measuring; past that gate its own short probe, or its cached decision, with the times it measured).

    .venv/bin/python benchmarks/precision.py [--backbones resnet50,efficientnet_lite0] [--steps 2] [--rounds 3]
        [--quick]
"""

import argparse
import statistics
import time

import tf_langdml  # noqa: F401  (first: binds tf.keras to tf-keras before TensorFlow loads)

# isort: split
import numpy as np
import tensorflow as tf

from tf_langdml import keras
from tf_langdml.inference import inference_outputs
from tf_langdml.models import LanguageGuidedModel, build_embedder
from tf_langdml.models.precision import reported_cpu_flags

POLICIES = ("float32", "mixed_bfloat16")
NUM_CLASSES = 100


def build(backbone, policy, image_size, table, initial_weights=None):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        embedder = build_embedder(backbone, weights=None, embed_dim=128, input_shape=(image_size, image_size, 3))
        if initial_weights is not None:
            embedder.set_weights(initial_weights)
        model = LanguageGuidedModel(embedder, language_table=table)
        model.compile(optimizer=keras.optimizers.Adam(1e-5), dml_loss="multisimilarity", language_weight=7.5)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return model


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def measure(backbone, args, images, labels, eval_images, table):
    models = {}
    for policy in POLICIES:
        weights = models["float32"].embedder.get_weights() if "float32" in models else None
        models[policy] = build(backbone, policy, args.image_size, table, weights)
    first_loss = {policy: float(np.ravel(model.train_on_batch(images, labels))[0]) for policy, model in models.items()}
    for model in models.values():
        inference_outputs(model.embedder, eval_images)  # trace the embedding pass
    steps = {policy: [] for policy in POLICIES}
    embeds = {policy: [] for policy in POLICIES}
    for round_index in range(args.rounds):
        for policy in POLICIES if round_index % 2 == 0 else POLICIES[::-1]:
            model = models[policy]
            model.train_on_batch(images, labels)  # untimed: the block's first step
            steps[policy] += [
                timed(lambda model=model: model.train_on_batch(images, labels))[:2] for _ in range(args.steps)
            ]
            embeds[policy].append(timed(lambda model=model: inference_outputs(model.embedder, eval_images).numpy())[0])
    base = statistics.median(wall for wall, _ in steps["float32"])
    base_embed = statistics.median(embeds["float32"])
    for policy in POLICIES:
        walls = [wall for wall, _ in steps[policy]]
        cpus = [cpu for _, cpu in steps[policy]]
        embed = statistics.median(embeds[policy])
        print(
            f"{backbone:18s} {policy:15s} step {statistics.median(walls):7.2f} s (best {min(walls):6.2f}, CPU "
            f"{statistics.median(cpus):6.2f})  ratio {statistics.median(walls) / base:5.2f}   first loss "
            f"{first_loss[policy]:.6f}   embedding {eval_images.shape[0] / embed:6.1f} images/s "
            f"(ratio {embed / base_embed:5.2f})",
            flush=True,
        )


def auto_choice(backbone, image_size, batch_size):
    """``auto -> policy (reason)`` as a run of this backbone (128-d, average pooling, frozen BN statistics) resolves it."""
    try:
        from tf_langdml.models import ProbedModel, resolve_precision
    except ImportError:
        return "auto: not available in this version"
    model = ProbedModel(backbone, image_size=image_size, batch_size=batch_size, embed_dim=128)
    return "auto -> {} ({})".format(*resolve_precision("auto", model=model))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="resnet50,efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per block")
    parser.add_argument("--rounds", type=int, default=2, help="blocks per policy")
    parser.add_argument("--quick", action="store_true", help="smoke check: toy_cnn at 32 x 32, 2 rounds")
    args = parser.parse_args()
    backbones = args.backbones.split(",")
    if args.quick:
        backbones, args.image_size, args.rounds = ["toy_cnn"], 32, 2
    rng = np.random.default_rng(0)
    classes = rng.choice(NUM_CLASSES, args.batch // 2, replace=False)
    labels = tf.constant(np.repeat(classes, 2).astype("int32"))
    images = tf.constant(rng.uniform(0, 255, (labels.shape[0], args.image_size, args.image_size, 3)).astype("float32"))
    eval_images = tf.constant(rng.uniform(0, 255, (64, args.image_size, args.image_size, 3)).astype("float32"))
    table = rng.normal(size=(NUM_CLASSES, 1, 384)).astype("float32")
    print(
        f"CPU features reported: {', '.join(reported_cpu_flags()) or 'none of avx2/fma/avx512f/avx512_bf16/amx_bf16'}"
    )
    print(
        f"batch {labels.shape[0]} at {args.image_size}, {args.rounds} rounds x {args.steps} timed steps per policy, "
        "alternating; embedding pass: 64 images, eval mode"
    )
    for backbone in backbones:
        measure(backbone, args, images, labels, eval_images, table)
        print(f"{backbone:18s} {auto_choice(backbone, args.image_size, labels.shape[0])}", flush=True)


if __name__ == "__main__":
    main()
