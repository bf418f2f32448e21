"""Which Keras dtype policy a run computes in: ``float32``, ``mixed_float16``, ``mixed_bfloat16`` or ``auto``.

:func:`resolve_precision` turns ``auto`` into a policy from what the machine has, with
a sentence saying why; :func:`probe_devices` reports that (visible GPUs and their
compute capability, the CPU's bfloat16 flags from ``/proc/cpuinfo``), and a test passes
its own probe. :func:`precision_policy` builds layers under a policy and restores the
previous global one.

Under both mixed policies only the layers compute in 16 bits: variables stay float32,
the embedder's L2 normalisation and the classifier's logits are float32 layers, and
the losses, similarity matrices and metrics read float32. Loss scaling (Keras wraps the
optimizer in a ``LossScaleOptimizer`` at ``compile``) is for ``mixed_float16`` only:
bfloat16 has float32's exponent range, so gradients do not underflow.
"""

import contextlib
import dataclasses
import os
import pathlib
from collections.abc import Callable, Iterator

import tensorflow as tf

from tf_langdml._keras import keras
from tf_langdml.errors import ArgumentError

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")
POLICIES = PRECISIONS[:3]
CPU_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instructions with native bfloat16 arithmetic
MIN_BFLOAT16_COMPUTE_CAPABILITY = (8, 0)  # NVIDIA Ampere (A100) and later: bfloat16 tensor cores


@dataclasses.dataclass(frozen=True)
class DeviceCapabilities:
    """What ``auto`` reads: the visible GPUs and the CPU's flags.

    Attributes:
        gpus: ``(name, compute capability (major, minor) or None)`` per visible GPU.
        cpu_flags: the CPU feature flags (empty when they could not be read).
        cpu_flags_source: where the flags came from (for the reason), or None when unread.
    """

    gpus: tuple = ()
    cpu_flags: frozenset = frozenset()
    cpu_flags_source: str | None = "/proc/cpuinfo"


def read_cpu_flags(path: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str] | None:
    """The ``flags`` of the first processor in ``path`` (Linux); None when the file is absent or has none."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 | ARM
            return frozenset(value.split())
    return None


def probe_devices() -> DeviceCapabilities:
    """The :class:`DeviceCapabilities` of this process (lists the GPUs: TensorFlow initialises them)."""
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        try:
            capability = tf.config.experimental.get_device_details(device).get("compute_capability")
        except (ValueError, RuntimeError):
            capability = None
        gpus.append((device.name, tuple(capability) if capability else None))
    flags = read_cpu_flags()
    return DeviceCapabilities(
        gpus=tuple(gpus),
        cpu_flags=flags or frozenset(),
        cpu_flags_source="/proc/cpuinfo" if flags is not None else None,
    )


def _auto(capabilities):
    if capabilities.gpus:
        # Every GPU, not any: a mirrored step waits for the slowest replica, and a single-device run
        # uses the first GPU, which may be the older one.
        slow = [
            (name, capability)
            for name, capability in capabilities.gpus
            if capability is None or tuple(capability) < MIN_BFLOAT16_COMPUTE_CAPABILITY
        ]
        if not slow:
            capabilities_text = ", ".join(
                f"{name} {capability[0]}.{capability[1]}" for name, capability in capabilities.gpus
            )
            return "mixed_bfloat16", f"every visible GPU has compute capability >= 8.0 ({capabilities_text})"
        name, capability = slow[0]
        found = "unknown" if capability is None else f"{capability[0]}.{capability[1]}"
        return "float32", (
            f"GPU {name} has compute capability {found}, below 8.0: no fast bfloat16 "
            "(mixed_float16 may be; set it explicitly)"
        )
    if capabilities.cpu_flags_source is None:
        return "float32", "no GPU, and the CPU's flags could not be read (no /proc/cpuinfo)"
    flags = [flag for flag in CPU_BFLOAT16_FLAGS if flag in capabilities.cpu_flags]
    if flags:
        return "mixed_bfloat16", f"no GPU; the CPU has {' and '.join(flags)} (from {capabilities.cpu_flags_source})"
    return "float32", (
        f"no GPU, and the CPU has neither {' nor '.join(CPU_BFLOAT16_FLAGS)} "
        f"(from {capabilities.cpu_flags_source}): bfloat16 would be emulated, slower than float32"
    )


def resolve_precision(name: str, probe: Callable[[], DeviceCapabilities] | None = None) -> tuple[str, str]:
    """``(policy name, reason)`` for a precision setting.

    Args:
        name: one of :data:`PRECISIONS`. ``auto``: ``mixed_bfloat16`` when every visible
            GPU has compute capability >= 8.0, or when there is no GPU and the CPU has
            ``avx512_bf16`` or ``amx_bf16``; else ``float32`` (a GPU below 8.0 included).
            The others are returned as they are.
        probe: a callable returning :class:`DeviceCapabilities` (default :func:`probe_devices`);
            called only for ``auto``.

    Returns:
        The Keras policy name (never ``auto``) and a sentence saying why.
    """
    if name not in PRECISIONS:
        raise ArgumentError(f"Unknown precision {name!r}; expected one of {list(PRECISIONS)}.", argument="name")
    if name != "auto":
        return name, f"precision {name} set explicitly"
    policy, reason = _auto((probe or probe_devices)())
    return policy, f"auto: {reason}"


@contextlib.contextmanager
def precision_policy(policy: str) -> Iterator[None]:
    """Set the Keras global dtype policy to ``policy`` (a resolved name) inside the block, then restore the previous."""
    if policy not in POLICIES:
        raise ArgumentError(
            f"Unknown dtype policy {policy!r}; expected one of {list(POLICIES)} (resolve 'auto' first).",
            argument="policy",
        )
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
