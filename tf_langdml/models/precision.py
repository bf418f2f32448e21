"""Which Keras dtype policy a run computes in: ``float32``, ``mixed_float16``, ``mixed_bfloat16`` or ``auto``.

:func:`resolve_precision` turns ``auto`` into a policy, with a sentence saying why, in two
steps. The gate: :func:`probe_devices` reports what the machine has (visible GPUs and their
compute capability, the CPU's model and bfloat16 flags from ``/proc/cpuinfo``); without fast
bfloat16 the answer is ``float32`` and nothing is measured. Past the gate, the run's own model
is timed under both policies (:mod:`~tf_langdml.models.precision_probe`) and bfloat16 kept only
when it is clearly faster; the decision is cached per machine and model. Tests pass their own
capability probe and timing. :func:`precision_policy` builds layers under a policy and restores
the previous global one.

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
import warnings
from collections.abc import Callable

import tensorflow as tf

from tf_langdml.errors import ArgumentError
from tf_langdml.models import precision_probe
from tf_langdml.models.precision_probe import ProbedModel, global_policy

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
        cpu_model: the CPU's model name (part of the probe cache's key), or None when unread.
    """

    gpus: tuple = ()
    cpu_flags: frozenset = frozenset()
    cpu_flags_source: str | None = "/proc/cpuinfo"
    cpu_model: str | None = None


def _cpuinfo_value(path, keys):
    """The value of the first line of ``path`` whose key is in ``keys``; None when absent."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def read_cpu_flags(path: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str] | None:
    """The ``flags`` of the first processor in ``path`` (Linux); None when the file is absent or has none."""
    value = _cpuinfo_value(path, ("flags", "Features"))  # x86 | ARM
    return None if value is None else frozenset(value.split())


def read_cpu_model(path: str | os.PathLike = "/proc/cpuinfo") -> str | None:
    """The ``model name`` of the first processor in ``path`` (Linux); None when the file is absent or has none."""
    return _cpuinfo_value(path, ("model name", "Model", "CPU part"))  # x86 | ARM boards | ARM cores


def reported_cpu_flags(
    names: tuple[str, ...] = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"),
    path: str | os.PathLike = "/proc/cpuinfo",
) -> list[str]:
    """Those of ``names`` that the CPU's flags list, in the order given (for benchmark headers; [] when unread)."""
    flags = read_cpu_flags(path) or frozenset()
    return [name for name in names if name in flags]


def probe_devices() -> DeviceCapabilities:
    """The :class:`DeviceCapabilities` of this process (lists the GPUs: TensorFlow initialises them)."""
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(device)
        except (ValueError, RuntimeError):
            details = {}
        capability = details.get("compute_capability")
        name = f"{device.name} ({details['device_name']})" if details.get("device_name") else device.name
        gpus.append((name, tuple(capability) if capability else None))
    flags = read_cpu_flags()
    return DeviceCapabilities(
        gpus=tuple(gpus),
        cpu_flags=flags or frozenset(),
        cpu_flags_source="/proc/cpuinfo" if flags is not None else None,
        cpu_model=read_cpu_model(),
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


def resolve_precision(
    name: str,
    probe: Callable[[], DeviceCapabilities] | None = None,
    model: ProbedModel | None = None,
    measure: Callable[[ProbedModel], dict[str, float]] | None = None,
    cache_folder: str | os.PathLike | None = None,
) -> tuple[str, str]:
    """``(policy name, reason)`` for a precision setting.

    Args:
        name: one of :data:`PRECISIONS`. ``auto``: ``float32`` without measuring when the device
            has no fast bfloat16 (a GPU below compute capability 8.0, or no GPU and a CPU
            without ``avx512_bf16`` / ``amx_bf16``, or flags that cannot be read). Else ``model``
            is timed under both policies and ``mixed_bfloat16`` chosen only when its step takes
            under :data:`~tf_langdml.models.precision_probe.BFLOAT16_MAX_TIME_RATIO` x float32's;
            the decision is read from / written to the cache. The others are returned as they are.
        probe: a callable returning :class:`DeviceCapabilities` (default :func:`probe_devices`);
            called only for ``auto``.
        model: the run ``auto`` serves (its embedder, image size and batch size); needed for ``auto``.
        measure: ``measure(model)`` -> median seconds per step by policy (default
            :func:`~tf_langdml.models.precision_probe.measure_step_times`; tests pass fixed times).
        cache_folder: the folder of the decision cache (default: the tf_langdml cache,
            ``$TF_LANGDML_CACHE`` or ``~/.cache/tf_langdml``).

    Returns:
        The Keras policy name (never ``auto``) and a sentence saying why (for ``auto`` past the
        gate: both times, their ratio and the cache file).
    """
    if name not in PRECISIONS:
        raise ArgumentError(f"Unknown precision {name!r}; expected one of {list(PRECISIONS)}.", argument="name")
    if name != "auto":
        return name, f"precision {name} set explicitly"
    if model is None:
        raise ArgumentError(
            "precision 'auto' measures the run it serves: pass model=ProbedModel(backbone, image_size, batch_size).",
            argument="model",
        )
    capabilities = (probe or probe_devices)()
    policy, reason = _auto(capabilities)
    if policy == "float32":
        return policy, f"auto: {reason}"
    return _probed(capabilities, reason, model, measure or precision_probe.measure_step_times, cache_folder)


def _probed(capabilities, gate_reason, model, measure, cache_folder):
    """``(policy, reason)`` past the gate: the cached decision for this machine and model, else a new probe."""
    key = precision_probe.cache_key(capabilities, model)
    try:
        path = precision_probe.cache_file(key, cache_folder)
    except OSError as error:
        warnings.warn(f"{error} The precision probe's decision is not cached.", stacklevel=3)
        path = None
    record = precision_probe.read_choice(path, key) if path is not None else None
    if record is not None:
        policy, times = record["policy"], record["seconds_per_step"]
        where = f"measured {record['measured_at']}, read from {path}"
    else:
        times = measure(model)
        policy = precision_probe.choose_policy(times)
        written = path is not None and precision_probe.write_choice(path, key, policy, times)
        where = f"cached in {path}" if written else "not cached"
    ratio = times["mixed_bfloat16"] / times["float32"]
    why = (
        ""
        if policy == "mixed_bfloat16"
        else f", as mixed_bfloat16 is not under {precision_probe.BFLOAT16_MAX_TIME_RATIO}x"
    )
    return policy, (
        f"auto: {gate_reason}; probed {model.describe()}: float32 {times['float32']:.3g} s/step, "
        f"mixed_bfloat16 {times['mixed_bfloat16']:.3g} s/step ({ratio:.2f}x) -> {policy}{why} ({where})"
    )


def precision_policy(policy: str) -> contextlib.AbstractContextManager[None]:
    """Set the Keras global dtype policy to ``policy`` (a resolved name) inside the block, then restore the previous."""
    if policy not in POLICIES:
        raise ArgumentError(
            f"Unknown dtype policy {policy!r}; expected one of {list(POLICIES)} (resolve 'auto' first).",
            argument="policy",
        )
    return global_policy(policy)
