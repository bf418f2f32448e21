"""Seconds per training step with and without language guidance, side by side.

Same embedder (ResNet50 + 128-d head), same batch, same input size; the only
difference is the language-matching loss on a PLG-sized table (C=100 classes,
K=5 names, D=512, as CLIP ViT-B/32 gives). Steps alternate between the two
models so that machine noise hits both alike; the ratio of the medians is printed.

Wall-clock steps on a shared 2-core VM snap to multiples of ~2.56 s now and then
(a step of either model, at random), so three figures are printed: the best wall
step, the median wall step, and the median CPU time of the process (all threads),
which the VM's stalls do not inflate. The isolated cost of L_match (forward and
backward on the same batch) is printed as a share of a baseline step.

Default input: 224 x 224, batch 90 -- the paper's CUB setting, so the ratio is the
overhead a user of the benchmark configs pays. `--image-size 64` is a harsher test
(the backbone is ~12x cheaper, the loss costs the same).

    .venv/bin/python benchmarks/language_overhead.py [--image-size 224] [--batch 90] [--steps 3] [--rounds 4]
"""

import argparse
import statistics
import time

import tf_langdml  # first: binds tf.keras to tf-keras before TensorFlow loads  # isort: skip
import numpy as np
import tensorflow as tf

from tf_langdml import keras


def time_step(model, images, labels):
    """(wall seconds, CPU seconds of all this process's threads) of one training step."""
    wall, cpu = time.perf_counter(), time.process_time()
    model.train_on_batch(images, labels)
    return time.perf_counter() - wall, time.process_time() - cpu


def time_language_loss_alone(batch, labels, table, repeats=200):
    """Seconds for one forward + backward of L_match on a (batch, 128) embedding."""
    embeddings = tf.Variable(tf.math.l2_normalize(tf.random.stateless_normal((batch, 128), seed=(0, 1)), axis=1))
    table = tf.constant(table)

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            loss = tf_langdml.language_matching_loss(embeddings, labels, table)
        return tape.gradient(loss, embeddings)

    forward_backward()
    start = time.perf_counter()
    for _ in range(repeats):
        forward_backward()
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=90)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per block")
    parser.add_argument("--rounds", type=int, default=4, help="blocks per model")
    parser.add_argument("--verbose", action="store_true", help="print every timed step")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    images_per_class = 2
    labels = np.repeat(np.arange(args.batch // images_per_class), images_per_class).astype("int32")
    images = tf.constant(rng.uniform(0, 255, (labels.size, args.image_size, args.image_size, 3)).astype("float32"))
    labels = tf.constant(labels)
    table = rng.normal(size=(100, 5, 512)).astype("float32")

    embedder = tf_langdml.build_embedder(
        "resnet50", weights=None, embed_dim=128, input_shape=(args.image_size, args.image_size, 3)
    )
    baseline = tf_langdml.LanguageGuidedModel(embedder)
    guided = tf_langdml.LanguageGuidedModel(embedder, table)
    for model, weight in ((baseline, 0.0), (guided, 7.5)):
        model.compile(optimizer=keras.optimizers.Adam(1e-5), language_weight=weight, weight_decay=4e-4)
        model.train_on_batch(images, labels)  # trace and warm up

    # Blocks of steps, alternating between the models and swapping which goes first
    # each round, so that drift hits both alike. The first step of every block is not
    # timed: switching models makes the allocator re-fault the other model's working
    # set (seconds at 224 px), which is an artefact of running two models in turn.
    times = {"baseline": [], "guided": []}
    models = {"baseline": baseline, "guided": guided}
    for round_index in range(args.rounds):
        order = ("baseline", "guided") if round_index % 2 == 0 else ("guided", "baseline")
        for key in order:
            time_step(models[key], images, labels)
            times[key] += [time_step(models[key], images, labels) for _ in range(args.steps)]
    if args.verbose:
        print({key: [round(wall, 2) for wall, _ in values] for key, values in times.items()})

    print(f"input {args.image_size}x{args.image_size}, batch {args.batch}, ResNet50 -> 128-d, table (100, 5, 512)")
    print(f"{args.rounds * args.steps} timed steps each, in alternating blocks of {args.steps}")
    print(f"{'s/step':36s}{'wall best':>11s}{'wall median':>13s}{'CPU median':>12s}")
    summary = {}
    for key, label in (("baseline", "baseline (multi-similarity)"), ("guided", "language-guided (+ L_match, w=7.5)")):
        walls = [wall for wall, _ in times[key]]
        cpus = [cpu for _, cpu in times[key]]
        summary[key] = (min(walls), statistics.median(walls), statistics.median(cpus))
        print(f"{label:36s}{summary[key][0]:11.3f}{summary[key][1]:13.3f}{summary[key][2]:12.3f}")
    ratios = [guided / baseline for guided, baseline in zip(summary["guided"], summary["baseline"])]
    print(
        f"ratio guided / baseline: wall best {ratios[0]:.3f}, wall median {ratios[1]:.3f}, "
        f"CPU median {ratios[2]:.3f}  (target <= 1.03)"
    )
    alone = time_language_loss_alone(args.batch, labels, table)
    print(
        f"L_match alone, forward + backward: {alone * 1e3:.2f} ms = {alone / summary['baseline'][0]:.2%} of a baseline step"
    )


if __name__ == "__main__":
    main()
