"""What training.deterministic costs: seconds per training step with and without TensorFlow op determinism.

Op determinism (``tf.config.experimental.enable_op_determinism``) holds for the rest
of a process, so each measurement is a worker subprocess; default and deterministic
workers alternate, round after round, so that machine noise hits both alike. Each
worker builds the demo's model (EfficientNet-Lite0 at 96 px, 128-d head, batch 32, ELG
with a MiniLM-sized random table; weights are random: the speed does not depend on
them), warms up, and times ``--steps`` training steps fed by the demo set's real
tf.data pipeline. Printed: median wall and CPU seconds per step of each, and their ratios.

    .venv/bin/python benchmarks/determinism.py [--rounds 3] [--steps 20]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def worker(deterministic, steps):
    import tf_langdml  # noqa: F401  (binds tf.keras to tf-keras)  # isort: skip
    import numpy as np
    import tensorflow as tf

    from tf_langdml import keras
    from tf_langdml.data import load_demo, make_train_dataset
    from tf_langdml.models import LanguageGuidedModel, build_embedder

    keras.utils.set_random_seed(0)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    split = load_demo().train_split
    table = np.random.default_rng(0).normal(size=(split.num_classes, 384)).astype(np.float32)
    model = LanguageGuidedModel(
        build_embedder("efficientnet_lite0", weights=None, embed_dim=128, input_shape=(96, 96, 3)), table
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-4), language_weight=7.5, weight_decay=4e-4)
    batches = iter(make_train_dataset(split, 32, 2, seed=0, image_size=96))
    for _ in range(3):
        model.train_on_batch(*next(batches))
    walls, cpus = [], []
    for _ in range(steps):
        images, labels = next(batches)
        wall, cpu = time.perf_counter(), time.process_time()
        model.train_on_batch(images, labels)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    print(json.dumps({"wall": walls, "cpu": cpus}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--worker", choices=["default", "deterministic"], help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        worker(arguments.worker == "deterministic", arguments.steps)
        return
    times = {"default": {"wall": [], "cpu": []}, "deterministic": {"wall": [], "cpu": []}}
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for round_index in range(arguments.rounds):
        for mode in ("default", "deterministic") if round_index % 2 == 0 else ("deterministic", "default"):
            output = subprocess.run(
                [sys.executable, __file__, "--worker", mode, "--steps", str(arguments.steps)],
                env=environment,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            result = json.loads(output.strip().splitlines()[-1])
            for key in ("wall", "cpu"):
                times[mode][key] += result[key]
    print(f"EfficientNet-Lite0 96 px, batch 32, ELG; {arguments.rounds} rounds x {arguments.steps} steps per mode")
    print(f"{'mode':15s}{'median wall s/step':>20s}{'median CPU s/step':>20s}")
    medians = {}
    for mode, values in times.items():
        medians[mode] = {key: statistics.median(values[key]) for key in ("wall", "cpu")}
        print(f"{mode:15s}{medians[mode]['wall']:20.4f}{medians[mode]['cpu']:20.4f}")
    print(
        f"deterministic / default: wall {medians['deterministic']['wall'] / medians['default']['wall']:.3f}x, "
        f"CPU {medians['deterministic']['cpu'] / medians['default']['cpu']:.3f}x"
    )


if __name__ == "__main__":
    main()
