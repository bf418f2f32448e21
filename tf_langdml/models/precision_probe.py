"""What ``training.precision: auto`` measures once bfloat16 is possible: the run's own step, timed under both policies.

:func:`measure_step_times` builds the run's embedder (:class:`ProbedModel`: backbone and head,
image size, batch size) under ``float32`` and ``mixed_bfloat16`` from the same initial weights
and times a few training steps of each (forward, backward, apply; the first call of each block
untimed, the order alternating); :func:`choose_policy` keeps ``float32`` unless bfloat16's
median step is clearly shorter. The decision is cached per machine and model in a JSON file
(:func:`cache_file`, :func:`read_choice`, :func:`write_choice`) so the probe runs once.

The probe does not reseed anything: its models take the global random state's next values, so
a caller that must be reproducible (``runs.train``) resolves the precision before it seeds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import os
import pathlib
import statistics
import time
import typing
import warnings
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from tf_langdml._keras import keras
from tf_langdml.cache import atomic_file, cache_dir
from tf_langdml.models.embedder import build_embedder

if typing.TYPE_CHECKING:
    from tf_langdml.models.precision import DeviceCapabilities

PROBED_POLICIES = ("float32", "mixed_bfloat16")
# bfloat16 must take less than this fraction of float32's step time. Not 1.0: a median of four steps
# on a shared machine moves by a few percent, and bfloat16 costs comparability (embeddings move by about
# 2^-8 relative, a few nearest neighbours change), which a gain inside that noise does not pay for.
BFLOAT16_MAX_TIME_RATIO = 0.95
PROBE_VERSION = 1  # in the cache key: a change of what is measured invalidates older decisions
CACHE_FOLDER = "precision"
MAX_CACHE_BYTES = 64 * 1024  # a decision is under 2 KiB; anything larger is not one of ours


@dataclasses.dataclass(frozen=True)
class ProbedModel:
    """The run ``auto`` serves, as far as it sets a step's speed: the embedder, the image size and the batch."""

    backbone: str
    image_size: int
    batch_size: int
    embed_dim: int = 128
    pooling: str = "avg"
    freeze_bn_statistics: bool = True
    jit_compile: bool = False

    def describe(self) -> str:
        """``resnet50 at 224 px, batch 32`` (for the reason)."""
        xla = ", XLA" if self.jit_compile else ""
        return f"{self.backbone} at {self.image_size} px, batch {self.batch_size}{xla}"


@contextlib.contextmanager
def global_policy(policy: str) -> Iterator[None]:
    """The Keras global dtype policy set to ``policy`` inside the block, the previous one restored after it
    (unchecked: :func:`tf_langdml.models.precision.precision_policy` checks the name, then calls this)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _step_function(model: ProbedModel, policy: str, initial_weights: list | None):
    with global_policy(policy):
        embedder = build_embedder(
            model.backbone,
            weights=None,  # speed does not depend on the values; no download
            embed_dim=model.embed_dim,
            pooling=model.pooling,
            freeze_bn_statistics=model.freeze_bn_statistics,
            input_shape=(model.image_size, model.image_size, 3),
        )
    if initial_weights is not None:
        embedder.set_weights(initial_weights)
    optimizer = keras.optimizers.Adam(1e-5)  # the run's default optimizer; its update is a small part of a step

    @tf.function(jit_compile=model.jit_compile)
    def step(images):
        with tf.GradientTape() as tape:
            embeddings = tf.cast(embedder(images, training=True), tf.float32)
            # A similarity matrix, as the DML losses read: every embedding gets a gradient.
            loss = tf.reduce_mean(tf.matmul(embeddings, embeddings, transpose_b=True))
        variables = embedder.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return embedder, step


def measure_step_times(model: ProbedModel, rounds: int = 2, steps: int = 2) -> dict[str, float]:
    """Median wall seconds of one training step of ``model`` per policy of :data:`PROBED_POLICIES`.

    Both embedders start from the same weights and see the same random batch. After one untimed
    call each (tracing), ``rounds`` blocks per policy, the order alternating, each block one
    untimed step (the other model's working set was just in the caches) and ``steps`` timed ones.
    """
    images = tf.constant(
        np.random.default_rng(0)
        .uniform(0, 255, (model.batch_size, model.image_size, model.image_size, 3))
        .astype("float32")
    )
    embedder, float32_step = _step_function(model, "float32", None)
    functions = {
        "float32": float32_step,
        "mixed_bfloat16": _step_function(model, "mixed_bfloat16", embedder.get_weights())[1],
    }
    for function in functions.values():
        function(images).numpy()
    seconds = {policy: [] for policy in PROBED_POLICIES}
    for round_index in range(rounds):
        for policy in PROBED_POLICIES if round_index % 2 == 0 else PROBED_POLICIES[::-1]:
            functions[policy](images).numpy()
            for _ in range(steps):
                start = time.perf_counter()
                functions[policy](images).numpy()
                seconds[policy].append(time.perf_counter() - start)
    return {policy: statistics.median(times) for policy, times in seconds.items()}


def choose_policy(times: dict[str, float]) -> str:
    """``mixed_bfloat16`` when its step takes under :data:`BFLOAT16_MAX_TIME_RATIO` x float32's, else ``float32``."""
    return "mixed_bfloat16" if times["mixed_bfloat16"] < BFLOAT16_MAX_TIME_RATIO * times["float32"] else "float32"


def cache_key(capabilities: DeviceCapabilities, model: ProbedModel) -> dict:
    """What a decision depends on: the machine (CPU model, flags, CPUs, GPUs, TensorFlow) and :class:`ProbedModel`."""
    return {
        "probe_version": PROBE_VERSION,
        "cpu_model": capabilities.cpu_model,
        "cpu_flags": sorted(capabilities.cpu_flags),
        "cpu_count": os.cpu_count(),
        "gpus": [[name, list(capability) if capability else None] for name, capability in capabilities.gpus],
        "tensorflow": tf.__version__,
        "model": dataclasses.asdict(model),
    }


def cache_file(key: dict, folder: str | os.PathLike | None = None) -> pathlib.Path:
    """``<folder>/precision/auto-<hash of key>.json``; ``folder`` default: the tf_langdml cache folder."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:20]
    return cache_dir(folder) / CACHE_FOLDER / f"auto-{digest}.json"


def _check_record(record: object, key: dict) -> None:
    if not isinstance(record, dict) or record.get("key") != key:
        raise ValueError("not a decision for this machine and model")
    if record.get("policy") not in PROBED_POLICIES:
        raise ValueError(f"policy {record.get('policy')!r} is not one of {list(PROBED_POLICIES)}")
    times = record.get("seconds_per_step")
    if not isinstance(times, dict):
        raise ValueError("no seconds_per_step")
    for policy in PROBED_POLICIES:
        seconds = times.get(policy)
        if type(seconds) not in (int, float) or not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"{policy} seconds per step {seconds!r} is not a positive number")
    if not isinstance(record.get("measured_at"), str):
        raise ValueError("no measured_at time")


def read_choice(path: str | os.PathLike, key: dict) -> dict | None:
    """The cached decision in ``path`` for ``key``; None when there is none.

    A file that cannot be read, is over :data:`MAX_CACHE_BYTES`, is not JSON or holds something
    else than a decision for ``key`` gives one warning naming it, and None (the probe runs again
    and replaces it).
    """
    path = pathlib.Path(path)
    if not path.exists():
        return None
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CACHE_BYTES + 1)
        if len(data) > MAX_CACHE_BYTES:
            raise ValueError(f"over {MAX_CACHE_BYTES} bytes")
        record = json.loads(data.decode("utf-8"))
        _check_record(record, key)
        return record
    except (OSError, ValueError) as error:  # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
        warnings.warn(f"Ignoring the precision cache file {path} ({error}); probing again.", stacklevel=2)
        return None


def write_choice(path: str | os.PathLike, key: dict, policy: str, times: dict[str, float]) -> bool:
    """Write the decision to ``path`` atomically (complete or not at all); False when it could not be written.

    A failure to write is one warning: the decision stands, the next start probes again.
    """
    record = {
        "key": key,
        "policy": policy,
        "seconds_per_step": {name: float(times[name]) for name in PROBED_POLICIES},
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        with atomic_file(path) as temporary:
            temporary.write_text(json.dumps(record, indent=1), encoding="utf-8")
    except OSError as error:
        warnings.warn(
            f"Could not write the precision cache file {path} ({error}); the next start probes again.", stacklevel=2
        )
        return False
    return True
