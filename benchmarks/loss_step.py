"""Seconds per training step with different DML losses, side by side, relative to multi-similarity.

One LanguageGuidedModel per loss, each with its own embedder (ResNet50 -> 128-d head,
the same initial weights), the same batch and input size, and the same language
guidance (L_match, w = 7.5, on a PLG-sized random table: 100 training classes x 5 names
x 384 dims, as MiniLM gives); only the DML loss differs:

- ``multisimilarity``: the baseline (TF-Similarity's, the paper's arguments);
- ``proxy_anchor``: one proxy per training class (100), at 2000x the learning rate;
- ``s2sd``: the paper's published setting, target heads (1024, 1536, 2048) on the
  backbone's avg+max-pooled features, feature distillation weight 125;
- ``margin``: distance-weighted miner, one learned beta per class (the field's baseline).

Adam (learning rate 1e-5), coupled weight decay 4e-4, as the paper. Each model takes one
untimed step first (tracing). Then steps run in blocks, one block per model per round,
the order rotating each round so that drift hits every model alike; as in
language_overhead.py, the first step of every block is not timed (switching models makes
the allocator re-fault the next model's working set, an artefact of running several
models in turn; ``--verbose`` prints those steps too). Printed per loss: best and median
wall seconds per step, median CPU seconds of the process (all threads; a shared VM's
stalls do not inflate it), their ratios to multi-similarity, the number of trainable
parameters outside the embedder (the loss's own state: proxies, beta, S2SD's heads),
and the loss alone (forward + backward on a batch of embeddings, and pooled features for
S2SD) in ms.

Default input: 224 x 224, batch 90 (45 classes x 2 images, drawn from the 100), the
paper's CUB setting. ``--quick`` is a smoke check in seconds (toy CNN, 32 x 32).

    .venv/bin/python benchmarks/loss_step.py [--image-size 224] [--batch 90] [--steps 2] [--rounds 2] [--quick]
"""

import argparse
import resource
import statistics
import time

import tf_langdml  # noqa: F401  (first: binds tf.keras to tf-keras before TensorFlow loads)

# isort: split
import numpy as np
import tensorflow as tf

from tf_langdml import keras
from tf_langdml.losses.base import dml_loss_value
from tf_langdml.models import LanguageGuidedModel, build_embedder

NUM_CLASSES = 100  # training classes: the table's rows, the proxies, the margin loss's betas
VARIANTS = {
    "multisimilarity": "multisimilarity",
    "proxy_anchor": "proxy_anchor",
    "s2sd": {
        "name": "s2sd",
        "target": "multisimilarity",
        "dims": [1024, 1536, 2048],
        "feature_weight": 125.0,
        "feature_pooling": "avg+max",
    },
    "margin": {"name": "margin", "miner": "distance"},
}


def make(args, table, dml_loss):
    keras.utils.set_random_seed(0)
    embedder = build_embedder(
        args.backbone, weights=None, embed_dim=128, input_shape=(args.image_size, args.image_size, 3)
    )
    model = LanguageGuidedModel(embedder, language_table=table)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-5),
        dml_loss=dml_loss,
        language_weight=7.5,
        weight_decay=4e-4,
        num_classes=NUM_CLASSES,
    )
    return model


def loss_parameters(model):
    """Trainable parameters of the model outside its embedder (the DML loss's own variables)."""
    embedder = {variable.ref() for variable in model.embedder.trainable_variables}
    return sum(int(np.prod(variable.shape)) for variable in model.trainable_variables if variable.ref() not in embedder)


def time_step(model, images, labels):
    """(wall seconds, CPU seconds of all this process's threads) of one training step."""
    wall, cpu = time.perf_counter(), time.process_time()
    model.train_on_batch(images, labels)
    return time.perf_counter() - wall, time.process_time() - cpu


def time_loss_alone(model, labels, repeats=50):
    """Seconds for one forward + backward of the model's DML loss on a (batch, 128) embedding (+ pooled features)."""
    loss = model.dml_loss
    batch = int(labels.shape[0])
    embeddings = tf.Variable(tf.math.l2_normalize(tf.random.stateless_normal((batch, 128), seed=(0, 1)), axis=1))
    features = None
    if getattr(loss, "needs_features", False):
        feature_dim = int(model.embedder.get_layer("avg_pool").input.shape[-1])
        features = tf.Variable(tf.nn.relu(tf.random.stateless_normal((batch, feature_dim), seed=(0, 2))))
    sources = (
        [embeddings] + ([features] if features is not None else []) + list(getattr(loss, "trainable_variables", []))
    )

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            value = dml_loss_value(loss, labels, embeddings, features, step=tf.constant(0, tf.int64))
        return tape.gradient(value, sources)

    forward_backward()
    start = time.perf_counter()
    for _ in range(repeats):
        forward_backward()
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=90)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per block")
    parser.add_argument("--rounds", type=int, default=2, help="blocks per model")
    parser.add_argument(
        "--quick", action="store_true", help="smoke check in seconds: toy_cnn at 32 x 32, 3 rounds of 2 steps"
    )
    parser.add_argument("--verbose", action="store_true", help="print every step, the untimed first ones in brackets")
    args = parser.parse_args()
    if args.quick:
        args.backbone, args.image_size, args.rounds, args.steps = "toy_cnn", 32, 3, 2
    start_all = time.perf_counter()

    rng = np.random.default_rng(0)
    images_per_class = 2
    classes = rng.choice(NUM_CLASSES, args.batch // images_per_class, replace=False)
    labels = np.repeat(classes, images_per_class).astype("int32")
    images = tf.constant(rng.uniform(0, 255, (labels.size, args.image_size, args.image_size, 3)).astype("float32"))
    labels = tf.constant(labels)
    table = rng.normal(size=(NUM_CLASSES, 5, 384)).astype("float32")

    models = {name: make(args, table, dml_loss) for name, dml_loss in VARIANTS.items()}
    warmup = {}
    for name, model in models.items():
        warmup[name] = time_step(model, images, labels)[0]  # trace and warm up

    # Blocks of steps, one per model per round, the order rotating each round; the first
    # step of every block is not timed (see the module docstring).
    names = list(models)
    times = {name: [] for name in names}
    untimed = {name: [] for name in names}
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            untimed[name].append(time_step(models[name], images, labels))
            times[name] += [time_step(models[name], images, labels) for _ in range(args.steps)]
    if args.verbose:
        for name in names:
            blocks = [
                f"[{first[0]:.2f}] "
                + " ".join(f"{wall:.2f}" for wall, _ in times[name][i * args.steps : (i + 1) * args.steps])
                for i, first in enumerate(untimed[name])
            ]
            print(f"{name:16s} wall s: {' | '.join(blocks)}")

    print(
        f"{args.backbone} -> 128-d, input {args.image_size}x{args.image_size}, batch {labels.shape[0]} "
        f"({labels.shape[0] // images_per_class} classes x {images_per_class} of {NUM_CLASSES}), "
        f"L_match w=7.5 on a ({NUM_CLASSES}, 5, 384) table, Adam 1e-5, weight decay 4e-4"
    )
    print(
        f"{args.rounds * args.steps} timed steps each, in rotating blocks of {args.steps} (+1 untimed); "
        f"first step (tracing): " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in warmup.items())
    )
    print(
        f"{'s/step':18s}{'wall best':>10s}{'wall median':>12s}{'CPU median':>11s}"
        f"{'ratio best':>11s}{'ratio median':>13s}{'ratio CPU':>10s}{'loss params':>13s}{'loss alone':>12s}"
    )
    summary = {}
    for name in names:
        walls = [wall for wall, _ in times[name]]
        cpus = [cpu for _, cpu in times[name]]
        summary[name] = (min(walls), statistics.median(walls), statistics.median(cpus))
    for name in names:
        ratios = [value / baseline for value, baseline in zip(summary[name], summary["multisimilarity"])]
        alone = time_loss_alone(models[name], labels)
        print(
            f"{name:18s}{summary[name][0]:10.3f}{summary[name][1]:12.3f}{summary[name][2]:11.3f}"
            f"{ratios[0]:11.3f}{ratios[1]:13.3f}{ratios[2]:10.3f}{loss_parameters(models[name]):13,d}"
            f"{alone * 1e3:9.2f} ms"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(
        "(ratios: to multisimilarity; loss alone: its forward + backward on (batch, 128) embeddings, "
        "and pooled features for s2sd)"
    )
    print(f"peak RSS {peak:.1f} GiB, total wall {time.perf_counter() - start_all:.0f} s")


if __name__ == "__main__":
    main()
