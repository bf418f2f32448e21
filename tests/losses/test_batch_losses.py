"""The tuple and proxy losses (BatchLoss layers) against float64 numpy references of their equations.

Each reference below is written from the equations of the module docstrings of
tf_langdml/losses/tuple_losses.py and proxy_losses.py (the papers' formulas), not from the
library. The mined losses' references use the library's miner only to get the triplets the
loss uses: ``mine_triplets`` with the loss's seed ``mining_seed(seed, step)``.

Batches have uneven classes, with singletons (anchors without a positive), and a class of
the C = 6 training classes that is absent from the batch.

Tolerances: the library computes in float32. Its distances and similarities of unit vectors
are off by ~1e-7 (relative), which moves these losses (sums of hinges, log-sum-exps whose
weights sum to <= 1 and means of them) by a few 1e-7 relative; with the proxy losses' scales
(α = 32, 1/T = 20, s = 16) by up to ~5e-6 absolute on values of 1 .. 30. ``rel=1e-5``
with a 1e-6 absolute floor covers that. The hinges are checked to stay > 1e-4 away from
their kinks, so no term switches on or off between float32 and float64.
"""

import math

import numpy as np
import pytest
import tensorflow as tf
from helpers import unit_rows

from tf_langdml.errors import argument_of
from tf_langdml.losses import build_dml_loss, dml_loss_arguments
from tf_langdml.losses.base import mining_seed
from tf_langdml.losses.miners import mine_triplets

# 2 and 4 are singletons (no positive); class 5 of the 6 training classes is never in the batch.
LABELS = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4], np.int32)
NUM_CLASSES = 6
DIM = 8
BATCH_LOSSES = [
    "margin",
    "triplet",
    "contrastive",
    "npair",
    "proxy_anchor",
    "proxy_nca",
    "normalized_softmax",
    "arcface",
]
CLASS_VECTOR_LOSSES = ["proxy_anchor", "proxy_nca", "normalized_softmax", "arcface"]


def batch_case(seed, batch_labels=LABELS, dim=DIM, spread=0.9):
    """Shuffled labels and class-correlated unit embeddings (float32)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(batch_labels).astype(np.int32)
    centers = rng.normal(size=(NUM_CLASSES, dim))
    embeddings = unit_rows(centers[labels] + spread * rng.normal(size=(len(labels), dim)))
    return embeddings.astype(np.float32), labels


def mined(embeddings, labels, miner, seed, step, margin=0.2, lower_cutoff=0.5, upper_cutoff=None, rho=0.2):
    """The triplets the loss uses: the library's miner with the loss's seed. Numpy positives and negatives."""
    _, positives, negatives, _ = mine_triplets(
        embeddings,
        labels,
        miner,
        seed=mining_seed(seed, step),
        margin=margin,
        lower_cutoff=lower_cutoff,
        upper_cutoff=upper_cutoff,
        rho=rho,
    )
    return positives.numpy(), negatives.numpy()


def pushed_positives(labels, positives):
    """How many kept anchors got rho_distance's triplet (a, a, p): a positive pushed away as a negative."""
    anchors = kept_anchors(labels)
    return int((positives[anchors] == np.array(anchors)).sum())


def kept_anchors(labels):
    """The anchors with a positive and a negative (computed here from the labels, not taken from the miner)."""
    return [
        i
        for i in range(len(labels))
        if any(labels[j] == labels[i] for j in range(len(labels)) if j != i)
        and any(labels[j] != labels[i] for j in range(len(labels)))
    ]


def d(x, i, j):
    return math.sqrt(sum((x[i, k] - x[j, k]) ** 2 for k in range(x.shape[1])))


# --- references (float64, from the docstrings' equations) --------------------------------------------------


def reference_margin(x, labels, positives, negatives, beta, margin, nu, beta_constant=False):
    """Wu et al. 2017: ℓ⁺ = relu(d(a,p) − β + m), ℓ⁻ = relu(β − d(a,n) + m); Σ(ℓ⁺ + ℓ⁻) / #non-zero + ν Σ β.

    Returns the loss, the hinge arguments and the number of non-zero terms (the pair count).
    """
    x = np.asarray(x, np.float64)
    total, count, beta_sum, hinges = 0.0, 0, 0.0, []
    for i in kept_anchors(labels):
        b = float(beta[0] if beta_constant else beta[labels[i]])
        positive_argument = d(x, i, positives[i]) - b + margin
        negative_argument = b - d(x, i, negatives[i]) + margin
        hinges += [positive_argument, negative_argument]
        total += max(positive_argument, 0.0) + max(negative_argument, 0.0)
        count += (positive_argument > 0) + (negative_argument > 0)
        beta_sum += b
    loss = total / count if count else total
    return loss + nu * beta_sum, np.array(hinges), count


def reference_triplet(x, labels, positives, negatives, margin):
    """mean over kept anchors of relu(d(a,p)² − d(a,n)² + m)."""
    x = np.asarray(x, np.float64)
    anchors = kept_anchors(labels)
    hinges = np.array([d(x, i, positives[i]) ** 2 - d(x, i, negatives[i]) ** 2 + margin for i in anchors])
    return float(np.maximum(hinges, 0).sum() / len(anchors)), hinges


def reference_contrastive(x, labels, positives, negatives, positive_margin, negative_margin):
    """mean relu(d(a,p) − m⁺) + mean relu(m⁻ − d(a,n)), over kept anchors."""
    x = np.asarray(x, np.float64)
    anchors = kept_anchors(labels)
    positive = np.array([d(x, i, positives[i]) - positive_margin for i in anchors])
    negative = np.array([negative_margin - d(x, i, negatives[i]) for i in anchors])
    value = np.maximum(positive, 0).mean() + np.maximum(negative, 0).mean()
    return float(value), np.concatenate([positive, negative])


def reference_npair(x, labels, positives, l2_weight):
    """Sohn 2016: per anchor with a positive, log(1 + Σ_{n: other label} exp(a·n − a·p)); mean + λ mean ‖e‖."""
    x = np.asarray(x, np.float64)
    batch = len(labels)
    terms = []
    for i in range(batch):
        if not any(labels[j] == labels[i] for j in range(batch) if j != i):
            continue  # no positive
        a_p = float(np.dot(x[i], x[positives[i]]))
        terms.append(
            math.log(1 + sum(math.exp(float(np.dot(x[i], x[j])) - a_p) for j in range(batch) if labels[j] != labels[i]))
        )
    norms = [math.sqrt(float(np.dot(row, row))) for row in x]
    return sum(terms) / len(terms) + l2_weight * sum(norms) / batch


def cosines(x, vectors):
    x, vectors = unit_rows(x), unit_rows(vectors)
    return x @ vectors.T


def reference_proxy_anchor(x, labels, proxies, alpha, delta, positive_denominator=None, negative_denominator=None):
    """Kim et al. 2020: (1/|P⁺|) Σ_{c∈P⁺} log(1 + Σ_{y_i=c} e^{−α(s_ic−δ)})
    + (1/C) Σ_c log(1 + Σ_{y_i≠c} e^{α(s_ic+δ)}), P⁺ the classes in the batch."""
    s = cosines(x, proxies)
    num_classes, batch = len(proxies), len(labels)
    present = sorted(set(int(label) for label in labels))
    positive = sum(
        math.log(1 + sum(math.exp(-alpha * (s[i, c] - delta)) for i in range(batch) if labels[i] == c)) for c in present
    )
    negative = sum(
        math.log(1 + sum(math.exp(alpha * (s[i, c] + delta)) for i in range(batch) if labels[i] != c))
        for c in range(num_classes)
    )
    return positive / (positive_denominator or len(present)) + negative / (negative_denominator or num_classes)


def reference_proxy_nca(x, labels, proxies, scale):
    """Movshovitz-Attias et al. 2017, scale 3: D_ic = ‖3x̂_i − 3p̂_c‖²; mean_i D_iy + log Σ_{c≠y} exp(−D_ic)."""
    x, proxies = scale * unit_rows(x), scale * unit_rows(proxies)
    total = 0.0
    for i, y in enumerate(labels):
        distance = [float(np.sum((x[i] - proxies[c]) ** 2)) for c in range(len(proxies))]
        total += distance[y] + math.log(sum(math.exp(-distance[c]) for c in range(len(proxies)) if c != y))
    return total / len(labels)


def cross_entropy(logits, labels):
    return float(np.mean([math.log(sum(math.exp(v) for v in row)) - row[y] for row, y in zip(logits, labels)]))


def reference_normalized_softmax(x, labels, vectors, temperature):
    """Zhai & Wu 2018: mean cross-entropy(s_i / T, y_i)."""
    return cross_entropy(cosines(x, vectors) / temperature, labels)


def reference_arcface(x, labels, vectors, angular_margin, scale):
    """Deng et al. 2019: logits s·cos θ_ic, s·cos(θ_iy + m) for the true class; θ = arccos of the cosine."""
    theta = np.arccos(np.clip(cosines(x, vectors), -1.0, 1.0))
    logits = np.cos(theta)
    for i, y in enumerate(labels):
        logits[i, y] = np.cos(theta[i, y] + angular_margin)
    return cross_entropy(scale * logits, labels)


def random_class_vectors(seed, num_classes=NUM_CLASSES, dim=DIM):
    """Known class vectors of uneven norms (the losses must normalise them)."""
    rng = np.random.default_rng(100 + seed)
    return (rng.normal(size=(num_classes, dim)) * rng.uniform(0.2, 3.0, size=(num_classes, 1))).astype(np.float32)


def loss_value(loss, run_mode, labels, embeddings, step):
    call = run_mode(lambda y, x, s: loss(y, x, step=s))
    return float(call(tf.constant(labels), tf.constant(embeddings), tf.constant(step, tf.int64)))


# --- values against the references -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments,step",
    [
        ({}, 0),  # the paper's code: margin 0.2, β 1.2 (set per class below), distance miner, ν = 0
        ({"nu": 0.1, "margin": 0.3, "seed": 4}, 7),
        ({"beta_constant": True, "beta": 1.05, "seed": 2}, 3),
        ({"beta_constant": True, "beta": 0.95, "nu": 0.05, "miner": "semihard", "upper_cutoff": 1.4}, 5),
        ({"miner": "distance", "upper_cutoff": 1.3, "lower_cutoff": 0.7, "seed": 9}, 11),
        ({"miner": "rho_distance", "rho": 0.5, "seed": 6}, 4),
    ],
)
def test_margin_loss_matches_reference(arguments, step, run_mode):
    embeddings, labels = batch_case(seed=step)
    loss = build_dml_loss("margin", **arguments)
    loss.setup(NUM_CLASSES, DIM)
    constant = arguments.get("beta_constant", False)
    if constant:  # one fixed β for every class: the argument beta
        beta = np.array([arguments["beta"]], np.float32)
    else:  # a learned β per class: set to known, non-uniform values
        beta = np.random.default_rng(step).uniform(0.9, 1.4, NUM_CLASSES).astype(np.float32)
        loss.beta.assign(beta)
    value = loss_value(loss, run_mode, labels, embeddings, step)
    margin, nu = arguments.get("margin", 0.2), arguments.get("nu", 0.0)
    positives, negatives = mined(
        embeddings,
        labels,
        arguments.get("miner", "distance"),
        arguments.get("seed", 0),
        step,
        margin=margin,
        lower_cutoff=arguments.get("lower_cutoff", 0.5),
        upper_cutoff=arguments.get("upper_cutoff"),
        rho=arguments.get("rho", 0.2),
    )
    if arguments.get("miner") == "rho_distance":  # the case has both kinds of triplets
        assert 0 < pushed_positives(labels, positives) < len(kept_anchors(labels))
    expected, hinges, pair_count = reference_margin(
        embeddings, labels, positives, negatives, beta, margin, nu, constant
    )
    assert np.abs(hinges).min() > 1e-4
    # the normalisation is by the number of non-zero terms: neither the mean nor the sum over the 2 × 7 terms
    assert 0 < pair_count < len(hinges)
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_margin_loss_without_active_terms_is_the_sum_plus_the_beta_penalty(run_mode):
    # Two tight classes on opposite poles and a singleton on the equator: d(a, p) ~ 0.02, d(a, n) ~ 2 or √2,
    # so with β = 1 or 1.1 and margin 0.2 every hinge is 0 (at most 1.1 − √2 + 0.2 = −0.11); the loss is then
    # Σ(ℓ⁺ + ℓ⁻) = 0, plus ν Σ β over the 4 kept anchors.
    embeddings = unit_rows([[1, 0.01, 0], [1, -0.01, 0], [-1, 0.01, 0], [-1, -0.01, 0], [0, 0, 1]]).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 2], np.int32)
    loss = build_dml_loss("margin", beta=1.0, nu=0.25, miner="random")
    loss.setup(3, 3)
    loss.beta.assign([1.0, 1.1, 9.0])  # the singleton's β (9) must not count
    for step in range(3):
        value = loss_value(loss, run_mode, labels, embeddings, step)
        assert value == pytest.approx(0.25 * (2 * 1.0 + 2 * 1.1), rel=1e-6)


@pytest.mark.parametrize(
    "arguments,step",
    [
        ({}, 0),  # semihard, margin 0.2
        ({"margin": 0.5, "seed": 3}, 5),
        ({"miner": "softhard", "seed": 1}, 2),
        ({"miner": "distance", "margin": 0.3}, 9),
        ({"miner": "rho_distance", "rho": 0.5, "seed": 2}, 4),
    ],
)
def test_triplet_loss_matches_reference(arguments, step, run_mode):
    embeddings, labels = batch_case(seed=10 + step)
    loss = build_dml_loss("triplet", **arguments)
    loss.setup(None, DIM)
    value = loss_value(loss, run_mode, labels, embeddings, step)
    margin = arguments.get("margin", 0.2)
    miner, rho = arguments.get("miner", "semihard"), arguments.get("rho", 0.2)
    positives, negatives = mined(embeddings, labels, miner, arguments.get("seed", 0), step, margin=margin, rho=rho)
    if miner == "rho_distance":
        assert 0 < pushed_positives(labels, positives) < len(kept_anchors(labels))
    expected, hinges = reference_triplet(embeddings, labels, positives, negatives, margin)
    assert np.abs(hinges).min() > 1e-4 and expected > 0
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    "arguments,step",
    [
        ({}, 0),  # distance miner, m⁺ = 0, m⁻ = 1
        ({"positive_margin": 0.3, "negative_margin": 1.2, "seed": 5}, 6),
        ({"miner": "semihard", "negative_margin": 1.4}, 1),  # the semihard window of the contrastive loss is 0.2
        # m⁺ > 0: d(a, a) = 0 of the (a, a, p) triplets would sit on the kink of relu(d − m⁺) with m⁺ = 0
        ({"miner": "rho_distance", "rho": 0.5, "positive_margin": 0.3, "seed": 2}, 4),
    ],
)
def test_contrastive_loss_matches_reference(arguments, step, run_mode):
    embeddings, labels = batch_case(seed=20 + step)
    loss = build_dml_loss("contrastive", **arguments)
    loss.setup(None, DIM)
    value = loss_value(loss, run_mode, labels, embeddings, step)
    miner, rho = arguments.get("miner", "distance"), arguments.get("rho", 0.2)
    positives, negatives = mined(embeddings, labels, miner, arguments.get("seed", 0), step, margin=0.2, rho=rho)
    if miner == "rho_distance":
        assert 0 < pushed_positives(labels, positives) < len(kept_anchors(labels))
    margins = arguments.get("positive_margin", 0.0), arguments.get("negative_margin", 1.0)
    expected, hinges = reference_contrastive(embeddings, labels, positives, negatives, *margins)
    assert np.abs(hinges).min() > 1e-4 and expected > 0
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("l2_weight,step", [(0.005, 0), (0.5, 3)])
def test_npair_loss_matches_reference(l2_weight, step, run_mode):
    embeddings, labels = batch_case(seed=30 + step)
    # rows of norms 0.5 .. 1.5: the norm penalty is not a constant here
    embeddings = (embeddings * np.random.default_rng(step).uniform(0.5, 1.5, (len(labels), 1))).astype(np.float32)
    loss = build_dml_loss("npair", l2_weight=l2_weight, seed=7)
    loss.setup(None, DIM)
    value = loss_value(loss, run_mode, labels, embeddings, step)
    # the positive is a random one (the random miner with the loss's seed)
    positives, _ = mined(embeddings, labels, "random", 7, step)
    expected = reference_npair(embeddings, labels, positives, l2_weight)
    without_penalty = reference_npair(embeddings, labels, positives, 0.0)
    assert expected - without_penalty == pytest.approx(l2_weight * np.linalg.norm(embeddings, axis=1).mean())
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("arguments", [{}, {"alpha": 16.0, "delta": 0.2}])
def test_proxy_anchor_matches_reference(arguments, seed, run_mode):
    embeddings, labels = batch_case(seed=40 + seed)
    loss = build_dml_loss("proxy_anchor", **arguments)
    loss.setup(NUM_CLASSES, DIM)
    proxies = random_class_vectors(seed)
    loss.class_vectors.assign(proxies)
    value = loss_value(loss, run_mode, labels, embeddings, 0)
    alpha, delta = arguments.get("alpha", 32.0), arguments.get("delta", 0.1)
    expected = reference_proxy_anchor(embeddings, labels, proxies, alpha, delta)
    # class 5 is absent: P⁺ has 5 classes, C = 6; swapping the denominators would be visibly wrong
    for wrong in [{"positive_denominator": 6}, {"negative_denominator": 5}]:
        wrong_value = reference_proxy_anchor(embeddings, labels, proxies, alpha, delta, **wrong)
        assert abs(wrong_value - expected) > 1e-3 * expected
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("seed,scale", [(0, 3.0), (1, 3.0), (2, 1.5)])
def test_proxy_nca_matches_reference(seed, scale, run_mode):
    embeddings, labels = batch_case(seed=50 + seed)
    loss = build_dml_loss("proxy_nca", scale=scale)
    loss.setup(NUM_CLASSES, DIM)
    proxies = random_class_vectors(seed)
    loss.class_vectors.assign(proxies)
    value = loss_value(loss, run_mode, labels, embeddings, 0)
    expected = reference_proxy_nca(embeddings, labels, proxies, scale)
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("seed,temperature", [(0, 0.05), (1, 0.05), (2, 0.5)])
def test_normalized_softmax_matches_reference(seed, temperature, run_mode):
    embeddings, labels = batch_case(seed=60 + seed)
    loss = build_dml_loss("normalized_softmax", temperature=temperature)
    loss.setup(NUM_CLASSES, DIM)
    vectors = random_class_vectors(seed)
    loss.class_vectors.assign(vectors)
    value = loss_value(loss, run_mode, labels, embeddings, 0)
    expected = reference_normalized_softmax(embeddings, labels, vectors, temperature)
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("seed,arguments", [(0, {}), (1, {}), (2, {"angular_margin": 1.2, "scale": 8.0})])
def test_arcface_matches_reference(seed, arguments, run_mode):
    embeddings, labels = batch_case(seed=70 + seed)
    loss = build_dml_loss("arcface", **arguments)
    loss.setup(NUM_CLASSES, DIM)
    vectors = random_class_vectors(seed)
    loss.class_vectors.assign(vectors)
    value = loss_value(loss, run_mode, labels, embeddings, 0)
    margin, scale = arguments.get("angular_margin", 0.5), arguments.get("scale", 16.0)
    expected = reference_arcface(embeddings, labels, vectors, margin, scale)
    if margin > 1.0:  # θ + m beyond π/2 for some true classes: cos(θ + m) < 0, still the reference's value
        theta = np.arccos(np.clip(cosines(embeddings, vectors), -1, 1))[np.arange(len(labels)), labels]
        assert (theta + margin > np.pi / 2).any()
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)


# --- gradients by central differences of the float64 references ------------------------------------------------

GRADIENT_LABELS = np.array([0, 0, 1, 1, 1, 2], np.int32)  # 2: a singleton
GRADIENT_CLASSES = 4  # class 3 is absent


def central_differences(function, x, eps=1e-6):
    """∂function/∂x by central differences, float64."""
    x = np.asarray(x, np.float64)
    gradient = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += eps
        minus[index] -= eps
        gradient[index] = (function(plus) - function(minus)) / (2 * eps)
    return gradient


def gradient_case(name):
    """The loss, set up, with its variables set to known values; the batch; and the reference as a function
    of (embeddings, variable) with the triplets of the library's miner held fixed."""
    embeddings, labels = batch_case(seed=80, batch_labels=GRADIENT_LABELS, dim=4, spread=0.7)
    step = 2
    arguments = {"margin": {"nu": 0.1}, "triplet": {"margin": 2.0, "miner": "random"}}.get(name, {})
    loss = build_dml_loss(name, **arguments)
    loss.setup(GRADIENT_CLASSES, 4)
    variable = None
    if name == "margin":
        variable = np.array([1.0, 1.3, 0.8, 1.1], np.float32)
        loss.beta.assign(variable)
    elif name in CLASS_VECTOR_LOSSES:
        variable = random_class_vectors(3, GRADIENT_CLASSES, 4)
        loss.class_vectors.assign(variable)
    miner = {"margin": "distance", "triplet": "random", "contrastive": "distance", "npair": "random"}.get(name)
    positives, negatives = mined(embeddings, labels, miner, 0, step) if miner else (None, None)
    hinges = {
        "margin": lambda: reference_margin(embeddings, labels, positives, negatives, variable, 0.2, 0.1)[1],
        "triplet": lambda: reference_triplet(embeddings, labels, positives, negatives, 2.0)[1],
        "contrastive": lambda: reference_contrastive(embeddings, labels, positives, negatives, 0.0, 1.0)[1],
    }.get(name)
    if hinges is not None:
        assert np.abs(hinges()).min() > 1e-3  # no hinge's kink within reach of the central differences
    reference = {
        "margin": lambda x, v: reference_margin(x, labels, positives, negatives, v, 0.2, 0.1)[0],
        "triplet": lambda x, v: reference_triplet(x, labels, positives, negatives, 2.0)[0],
        "contrastive": lambda x, v: reference_contrastive(x, labels, positives, negatives, 0.0, 1.0)[0],
        "npair": lambda x, v: reference_npair(x, labels, positives, 0.005),
        "proxy_anchor": lambda x, v: reference_proxy_anchor(x, labels, v, 32.0, 0.1),
        "proxy_nca": lambda x, v: reference_proxy_nca(x, labels, v, 3.0),
        "normalized_softmax": lambda x, v: reference_normalized_softmax(x, labels, v, 0.05),
        "arcface": lambda x, v: reference_arcface(x, labels, v, 0.5, 16.0),
    }[name]
    return loss, embeddings, labels, step, variable, reference


@pytest.mark.parametrize("name", BATCH_LOSSES)
def test_gradients_match_central_differences_of_the_reference(name):
    loss, embeddings, labels, step, variable, reference = gradient_case(name)
    x = tf.Variable(embeddings)
    with tf.GradientTape() as tape:
        value = loss(labels, x, step=step)
    variables = [x, *loss.trainable_variables]
    gradients = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(value, variables)]
    assert float(value) == pytest.approx(reference(embeddings, variable), rel=1e-5)
    expected = [central_differences(lambda e: reference(e, variable), embeddings)]
    if variable is not None:  # the loss's own variable: β or the class vectors
        assert len(loss.trainable_variables) == 1
        expected.append(central_differences(lambda v: reference(embeddings, v), variable))
    for gradient, numeric in zip(gradients, expected):
        assert np.abs(numeric).max() > 1e-2  # the gradient is not trivially zero
        # float32 gradients vs float64 central differences (truncation ~eps² f''' and rounding ~1e-16 / eps,
        # both < 1e-9): the float32 error is what remains, <= 4e-7 of the largest entry in these 8 cases
        np.testing.assert_allclose(gradient, numeric, rtol=1e-4, atol=1e-5 * np.abs(numeric).max())
    if name == "margin":
        # ∂L/∂β_c = (#{active ℓ⁻} − #{active ℓ⁺}) / pair count + ν · #kept anchors of class c: 0 for the
        # absent class 3
        assert expected[1][3] == 0 and gradients[1][3] == 0


# --- errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BATCH_LOSSES)
def test_calling_before_setup_is_a_clear_error(name):
    embeddings, labels = batch_case(seed=0)
    with pytest.raises(RuntimeError, match=r"has no variables yet: call loss\.setup\(num_classes, embed_dim\) first"):
        build_dml_loss(name)(labels, embeddings)


@pytest.mark.parametrize("name", ["margin", *CLASS_VECTOR_LOSSES])
@pytest.mark.parametrize("num_classes", [None, 0, 1])
def test_losses_with_class_variables_need_two_classes(name, num_classes):
    with pytest.raises(ValueError, match=r"needs num_classes >= 2 .*got " + repr(num_classes)):
        build_dml_loss(name).setup(num_classes, DIM)


def test_margin_loss_with_a_constant_beta_has_nothing_to_train():
    loss = build_dml_loss("margin", beta_constant=True, beta=1.1)
    loss.setup(None, DIM)  # no per-class β: the number of classes is not needed
    assert loss.trainable_variables == [] and loss.learning_rate_groups() == []


@pytest.mark.parametrize("name", CLASS_VECTOR_LOSSES)
def test_a_label_beyond_the_class_vectors_is_a_clear_error(name, run_mode):
    embeddings, labels = batch_case(seed=0)
    loss = build_dml_loss(name)
    loss.setup(4, DIM)  # labels go up to 4
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"a label is >= num_classes \(4\)"):
        loss_value(loss, run_mode, labels, embeddings, 0)


@pytest.mark.parametrize("name", ["margin", "triplet", "contrastive"])
def test_unknown_miner_is_a_clear_error(name):
    with pytest.raises(
        ValueError,
        match=r"Unknown miner 'hardest'; expected one of \['random', 'semihard', "
        r"'softhard', 'distance', 'rho_distance'\]",
    ):
        build_dml_loss(name, miner="hardest")


@pytest.mark.parametrize("name", ["margin", "triplet", "contrastive"])
def test_the_mined_losses_take_rho_0_2_by_default_and_refuse_one_outside_0_1(name):
    assert dml_loss_arguments(name)["rho"] == 0.2  # the paper's code's --miner_rho_distance_cp
    assert build_dml_loss(name, miner="rho_distance", rho=0.0).get_config()["rho"] == 0.0
    with pytest.raises(ValueError, match=r"^rho must be a probability in \[0, 1\] .*got 1\.5; ") as caught:
        build_dml_loss(name, miner="rho_distance", rho=1.5)
    assert argument_of(caught.value) == "rho"


@pytest.mark.parametrize(
    "name,arguments,argument",
    [
        ("margin", {"margin": -0.1}, "margin"),
        ("margin", {"nu": -1.0}, "nu"),
        ("margin", {"beta_learning_rate": -5e-4}, "beta_learning_rate"),
        ("margin", {"lower_cutoff": -0.5}, "lower_cutoff"),
        ("margin", {"upper_cutoff": 0.0}, "upper_cutoff"),
        ("triplet", {"margin": -0.2}, "margin"),
        ("triplet", {"margin": float("nan")}, "margin"),
        ("contrastive", {"positive_margin": -0.1}, "positive_margin"),
        ("contrastive", {"negative_margin": -1.0}, "negative_margin"),
        ("npair", {"l2_weight": -0.005}, "l2_weight"),
        ("proxy_anchor", {"alpha": 0.0}, "alpha"),
        ("proxy_anchor", {"proxy_lr_multiplier": -1.0}, "proxy_lr_multiplier"),
        ("proxy_nca", {"scale": -3.0}, "scale"),
        ("normalized_softmax", {"temperature": 0.0}, "temperature"),
        ("normalized_softmax", {"class_learning_rate": -1.0}, "class_learning_rate"),
        ("arcface", {"angular_margin": -0.5}, "angular_margin"),
        ("arcface", {"scale": float("inf")}, "scale"),
    ],
)
def test_bad_arguments_name_the_argument(name, arguments, argument):
    with pytest.raises(ValueError, match=rf"^{argument} must be a finite number"):
        build_dml_loss(name, **arguments)
