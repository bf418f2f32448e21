"""Global-batch losses under tf.distribute: MirroredStrategy on 2 logical CPUs equals one device."""

import json
import subprocess
import sys

import pytest
from helpers import quiet_env

SCRIPT = r"""
import json, sys
import tf_langdml
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tf_langdml import keras
from tf_langdml.models import LanguageGuidedModel, build_embedder

rng = np.random.default_rng(0)
labels = np.repeat(np.arange(4), 2).astype("int32")           # 4 classes x 2 images: a global batch of 8
images = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
table = rng.normal(size=(6, 2, 5)).astype("float32")          # PLG-like, K = 2

def make(strategy):
    with strategy.scope():
        keras.utils.set_random_seed(1)
        embedder = build_embedder("toy_cnn", weights=None, embed_dim=8, input_shape=(16, 16, 3))
        model = LanguageGuidedModel(embedder, language_table=table)
        model.compile(optimizer=keras.optimizers.SGD(1.0), language_weight=2.0, weight_decay=1e-3)
    return model

single = make(tf.distribute.OneDeviceStrategy("/cpu:0"))
mirrored = make(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
mirrored.embedder.set_weights(single.embedder.get_weights())
before = [w.copy() for w in single.embedder.get_weights()]
data = tf.data.Dataset.from_tensors((images, labels))
single_logs = single.fit(data, epochs=1, verbose=0).history
mirrored_logs = mirrored.fit(data, epochs=1, verbose=0).history
after_single, after_mirrored = single.embedder.get_weights(), mirrored.embedder.get_weights()
deltas = [np.abs((a - b0) - (c - b0)).max() for a, c, b0 in zip(after_single, after_mirrored, before)]
moved = max(np.abs(a - b0).max() for a, b0 in zip(after_single, before))

# bfloat16 layers (mixed_bfloat16; float32 variables and losses): the same pair of strategies, one step each.
keras.mixed_precision.set_global_policy("mixed_bfloat16")
single_16, mirrored_16 = make(single.distribute_strategy), make(mirrored.distribute_strategy)
keras.mixed_precision.set_global_policy("float32")
mirrored_16.set_weights(single_16.get_weights())
start_16 = [w.copy() for w in single_16.embedder.get_weights()]
logs_16 = [model.fit(data, epochs=1, verbose=0).history for model in (single_16, mirrored_16)]
updates_16 = [[w - w0 for w, w0 in zip(model.embedder.get_weights(), start_16)] for model in (single_16, mirrored_16)]
bfloat16 = {"loss": [logs["loss"][0] for logs in logs_16],
            "language_loss": [logs["language_loss"][0] for logs in logs_16],
            "compute_dtype": mirrored_16.embedder.get_layer("toy_cnn").get_layer("toy_conv0").compute_dtype,
            "max_update_difference": float(max(np.abs(a - b).max() for a, b in zip(*updates_16))),
            "max_update": float(max(np.abs(a).max() for a in updates_16[0]))}

# Losses with learned state: proxies (own optimizer at 10x); S2SD's heads on gathered features with the margin
# loss as target (per-class beta at its own rate, the distance miner's draws) on the embedding and each head.
state = {}
if "--state" in sys.argv:  # the slow test below
    for spec in ({"name": "proxy_anchor", "proxy_lr_multiplier": 10.0},
                 {"name": "s2sd", "dims": [16, 24], "distill_weight": 1.0, "feature_weight": 2.0, "target": "margin",
                  "target_arguments": {"beta_learning_rate": 0.05}}):
        def make_state(strategy):
            with strategy.scope():
                keras.utils.set_random_seed(1)
                embedder = build_embedder("toy_cnn", weights=None, embed_dim=8, input_shape=(16, 16, 3))
                model = LanguageGuidedModel(embedder, language_table=table)
                model.compile(optimizer=keras.optimizers.SGD(0.1), dml_loss=dict(spec), language_weight=2.0,
                              weight_decay=1e-3)
            return model
        # The same MirroredStrategy object: a second one in a process reuses collective instance keys.
        one, two = make_state(single.distribute_strategy), make_state(mirrored.distribute_strategy)
        for target, source in zip(two.trainable_variables, one.trainable_variables):
            target.assign(source)  # the embedder and the loss's variables (proxies, beta, heads)
        start = [v.numpy().copy() for v in one.trainable_variables]
        logs_one = one.fit(data, epochs=1, verbose=0).history
        logs_two = two.fit(data, epochs=1, verbose=0).history
        loss_refs = {v.ref() for v in one.dml_loss.trainable_variables}
        moved_loss_state = max(float(np.abs(v.numpy() - w0).max()) for v, w0 in zip(one.trainable_variables, start)
                               if v.ref() in loss_refs)
        state[spec["name"]] = {
            "loss": [logs_one["loss"][0], logs_two["loss"][0]],
            "max_update_difference": float(max(np.abs((a.numpy() - w0) - (b.numpy() - w0)).max()
                                               for a, b, w0 in zip(one.trainable_variables, two.trainable_variables, start))),
            "loss_state_moved": moved_loss_state, "loss_state_variables": len(one.dml_loss.trainable_variables)}


print(json.dumps({"single": {k: v[0] for k, v in single_logs.items()},
                  "mirrored": {k: v[0] for k, v in mirrored_logs.items()},
                  "replicas": mirrored.distribute_strategy.num_replicas_in_sync,
                  "max_update_difference": float(max(deltas)), "max_update": float(moved), "state": state,
                  "bfloat16": bfloat16}))
"""


@pytest.fixture(scope="module")
def report():
    """The script's report: one subprocess (one MirroredStrategy) for the float32 and the bfloat16 tests."""
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600, env=quiet_env()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_mirrored_strategy_gives_the_single_device_loss_and_update(report):
    assert report["replicas"] == 2
    # Same global-batch loss from embeddings computed in two halves vs one batch (conv kernels may block
    # differently): a few ulps per embedding; losses move by <= ~1e-6 (the language KL has a ~1e-6 absolute
    # rounding floor, see test_language_guided_model); 7e-9 seen.
    for name in ("loss", "dml_loss", "language_loss"):
        assert report["mirrored"][name] == pytest.approx(report["single"][name], abs=1e-5), name
    assert report["single"]["language_loss"] > 0
    assert report["max_update"] > 1e-4  # the step did move the weights (SGD, learning rate 1)
    # Learning rate 1, so the update is the gradient: summed per replica then all-reduced vs summed at
    # once, a different float32 order; plus the rounding of w (ulp 1.2e-7 at |w| ~ 1). 2.7e-7 seen.
    assert report["max_update_difference"] <= 1e-5, report


def test_mirrored_strategy_in_bfloat16_gives_the_single_device_loss_and_update(report):
    result = report["bfloat16"]
    assert result["compute_dtype"] == "bfloat16"
    # Each image's forward pass is the same bfloat16 arithmetic on either device, and the global-batch losses are
    # float32 on the gathered embeddings: as in float32, the losses agree to float32 rounding (abs 1e-5).
    assert result["loss"][1] == pytest.approx(result["loss"][0], abs=1e-5), result
    assert result["language_loss"][0] > 0
    # The update (SGD, learning rate 1: the gradient) differs where the reduction differs: each replica's weight
    # gradient (a sum over its 4 images) is rounded to bfloat16 before the float32 all-reduce, the single device's
    # sum over 8 once. Rounding three partial or full sums, each <= 2 x the largest update in magnitude: at most
    # 3 x 2 x u = 6 u (u = 2^-8) of the largest update.
    assert result["max_update"] > 1e-4
    assert result["max_update_difference"] <= 6 * 2.0**-8 * result["max_update"], result


@pytest.mark.slow  # two more pairs of models in the subprocess, about 40 s; make test-slow
def test_mirrored_strategy_gives_the_single_device_update_of_the_loss_s_own_variables():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, "--state"], capture_output=True, text=True, timeout=900, env=quiet_env()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report["state"]) == {"proxy_anchor", "s2sd"}
    # Proxies, beta and S2SD's heads (own optimizers, gathered pooled features): same loss and update.
    for name, result in report["state"].items():
        assert result["loss"][1] == pytest.approx(result["loss"][0], abs=1e-5), (name, result)
        assert result["loss_state_moved"] > 1e-5 and result["loss_state_variables"] >= 1, (name, result)
        assert result["max_update_difference"] <= 1e-5, (name, result)
