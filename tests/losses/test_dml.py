"""The DML loss registry, and the multi-similarity mapping against a reference loop."""

import math

import numpy as np
import pytest
import tensorflow as tf
from helpers import unit_rows

from tf_langdml.losses import build_dml_loss, dml_loss_arguments
from tf_langdml.losses.dml import TFSIM_LOSSES


def reference_multisimilarity(embeddings, labels, positive_weight, negative_weight, margin, threshold):
    """Multi-similarity loss (Wang et al. 2019) written with the paper's names.

    Per anchor: mine positives with s_p - margin < max s_n and negatives with
    s_n + margin > min s_p; an anchor left without either contributes 0; the batch
    loss is the mean over all anchors.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    batch = len(labels)
    total = 0.0
    for i in range(batch):
        sims = [float(np.dot(embeddings[i], embeddings[j])) for j in range(batch)]
        positives = [sims[j] for j in range(batch) if j != i and labels[j] == labels[i]]
        negatives = [sims[j] for j in range(batch) if labels[j] != labels[i]]
        if not positives or not negatives:
            continue
        kept_positives = [s for s in positives if s - margin < max(negatives)]
        kept_negatives = [s for s in negatives if s + margin > min(positives)]
        if not kept_positives or not kept_negatives:
            continue
        positive_term = math.log(1 + sum(math.exp(-positive_weight * (s - threshold)) for s in kept_positives))
        negative_term = math.log(1 + sum(math.exp(negative_weight * (s - threshold)) for s in kept_negatives))
        total += positive_term / positive_weight + negative_term / negative_weight
    return total / batch


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "arguments",
    [
        {},  # the paper's defaults: 2, 40, 0.1, 0.5
        {"positive_weight": 1.0, "negative_weight": 10.0, "margin": 0.3, "threshold": 0.2},
    ],
)
def test_multisimilarity_matches_reference(seed, arguments, run_mode):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), 3)
    rng.shuffle(labels)
    # Correlated within a class so that mining keeps some pairs and drops others.
    centers = rng.normal(size=(4, 8))
    embeddings = unit_rows(centers[labels] + rng.normal(scale=0.9, size=(12, 8))).astype("float32")
    loss = build_dml_loss("multisimilarity", **arguments)
    value = float(run_mode(lambda y, e: loss(y, e))(labels, embeddings))
    defaults = {"positive_weight": 2.0, "negative_weight": 40.0, "margin": 0.1, "threshold": 0.5}
    expected = reference_multisimilarity(embeddings, labels, **{**defaults, **arguments})
    assert expected > 0
    # float32 TF vs a float64 loop; no cancellation (every term >= 0). A float32 sim of 8-d unit
    # vectors is off by <= ~8 x 2^-24 = 5e-7 and moves each anchor's loss by at most that (its weights
    # in the log-sum-exp sum to <= 1): <= ~1e-6 on losses of 0.5 .. 1.3 (6e-8 relative seen). Mining
    # cannot flip: the closest sim to a mining boundary is 5e-4 away.
    assert value == pytest.approx(expected, rel=1e-5)


def test_multisimilarity_defaults_are_the_papers():
    loss = build_dml_loss("multisimilarity")
    config = loss.get_config()
    assert (config["alpha"], config["beta"], config["epsilon"], config["lmda"], config["center"]) == (
        2.0,
        40.0,
        0.1,
        0.5,
        1.0,
    )
    assert dml_loss_arguments("multisimilarity") == {
        "positive_weight": 2.0,
        "negative_weight": 40.0,
        "margin": 0.1,
        "threshold": 0.5,
    }


def test_anchor_without_negative_after_mining_contributes_zero():
    # Two tight, far-apart classes: every negative is easier than every positive
    # by more than the margin, so nothing survives mining and the loss is 0.
    embeddings = unit_rows(np.array([[1, 0.01], [1, -0.01], [-1, 0.01], [-1, -0.01]])).astype("float32")
    labels = np.array([0, 0, 1, 1])
    loss = build_dml_loss("multisimilarity")
    assert float(loss(labels, embeddings)) == 0.0  # exact: no pair is mined, nothing is summed
    assert reference_multisimilarity(embeddings, labels, 2.0, 40.0, 0.1, 0.5) == 0.0


@pytest.mark.parametrize("name", sorted(TFSIM_LOSSES))
def test_every_tfsim_loss_gives_per_anchor_values_and_gradients(name):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 2)
    embeddings = tf.Variable(unit_rows(rng.normal(size=(8, 6))).astype("float32"))
    loss = build_dml_loss(name)
    with tf.GradientTape() as tape:
        value = loss(labels, embeddings)
    assert value.shape == () and np.isfinite(float(value))
    assert loss.call(labels, embeddings).shape[0] == 8
    gradient = tape.gradient(value, embeddings)
    assert gradient is not None and float(tf.reduce_max(tf.abs(gradient))) > 0


def test_tfsim_triplet_is_semi_hard_with_margin():
    config = build_dml_loss("tfsim_triplet").get_config()
    assert config["negative_mining_strategy"] == "semi-hard"
    assert config["margin"] == 0.2


def test_xbm_wraps_any_loss_and_remembers_batches():
    rng = np.random.default_rng(1)
    loss = build_dml_loss("multisimilarity", xbm_memory_size=20, xbm_warmup_steps=0)
    assert type(loss).__name__ == "XBM"
    assert loss.loss.get_config()["beta"] == 40.0
    for step in range(3):
        labels = np.repeat(np.arange(4), 2) + 4 * step
        embeddings = unit_rows(rng.normal(size=(8, 6))).astype("float32")
        value = loss(labels, embeddings)
        assert np.isfinite(float(value))
    assert loss._y_pred_memory.numpy().shape == (20, 6)  # 3 batches of 8, truncated to the memory size
    triplet_xbm = build_dml_loss("tfsim_triplet", xbm_memory_size=16)
    assert triplet_xbm.loss.get_config()["negative_mining_strategy"] == "semi-hard"


def test_unknown_names_and_arguments_are_clear_errors():
    with pytest.raises(ValueError, match=r"Unknown DML loss 'arcfce'; known losses: \["):
        build_dml_loss("arcfce")
    with pytest.raises(ValueError, match=r"Unknown argument\(s\) \['alpha'\].*accepts"):
        build_dml_loss("multisimilarity", alpha=2.0)
    with pytest.raises(ValueError, match="xbm_memory_size must be a positive"):
        build_dml_loss("circle", xbm_memory_size=0)
    with pytest.raises(
        ValueError, match=r"xbm_memory_size works with TensorFlow-Similarity's losses .*not with 'margin'"
    ):
        build_dml_loss("margin", xbm_memory_size=16)


def test_the_docs_loss_table_lists_every_loss_with_its_real_defaults():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2]
    from tf_langdml.losses import DML_LOSSES

    for document in ("docs/dml_losses.md",):  # the README links to it (its table moved there)
        rows = {}
        for line in (root / document).read_text().splitlines():
            match = re.match(r"\| `(\w+)` \| (.+?) \| ", line)
            if match and match.group(1) in DML_LOSSES and "=" in match.group(2):  # (not a results table)
                rows[match.group(1)] = match.group(2).replace("`", "")
        assert set(rows) == set(DML_LOSSES), document
        for name, text in rows.items():
            expected = ", ".join(f"{key}={value!r}" for key, value in dml_loss_arguments(name).items())
            assert text == expected, (document, name)
