"""training.precision's ``auto``: bfloat16 where the device has it fast, else float32 (mocked capability probes)."""

import pytest

from tf_langdml.models.precision import (
    PRECISIONS,
    DeviceCapabilities,
    precision_policy,
    read_cpu_flags,
    resolve_precision,
)
from tf_langdml.runs import schema


def probe(gpus=(), flags=(), source="/proc/cpuinfo"):
    return lambda: DeviceCapabilities(gpus=tuple(gpus), cpu_flags=frozenset(flags), cpu_flags_source=source)


def test_auto_on_a_cpu_with_avx512_bf16_or_amx_is_bfloat16():
    policy, reason = resolve_precision("auto", probe(flags=["sse2", "avx512f", "avx512_bf16"]))
    assert policy == "mixed_bfloat16" and "avx512_bf16" in reason and "/proc/cpuinfo" in reason
    assert resolve_precision("auto", probe(flags=["amx_bf16"]))[0] == "mixed_bfloat16"


def test_auto_on_a_cpu_without_fast_bfloat16_is_float32():
    policy, reason = resolve_precision("auto", probe(flags=["sse2", "avx2", "avx512f"]))
    assert policy == "float32" and "neither avx512_bf16 nor amx_bf16" in reason
    assert resolve_precision("auto", probe(source=None)) == (
        "float32",
        "auto: no GPU, and the CPU's flags could not be read (no /proc/cpuinfo)",
    )


def test_auto_on_gpus_follows_the_compute_capability():
    a100 = ("/physical_device:GPU:0", (8, 0))
    t4 = ("/physical_device:GPU:1", (7, 5))
    policy, reason = resolve_precision("auto", probe(gpus=[a100]))
    assert policy == "mixed_bfloat16" and "8.0" in reason
    policy, reason = resolve_precision("auto", probe(gpus=[("/physical_device:GPU:0", (7, 5))], flags=["amx_bf16"]))
    assert policy == "float32" and "7.5, below 8.0" in reason  # the GPU decides, not the CPU
    assert resolve_precision("auto", probe(gpus=[a100, t4]))[0] == "float32"  # the slowest replica paces a step
    assert resolve_precision("auto", probe(gpus=[("/physical_device:GPU:0", None)]))[0] == "float32"


def test_explicit_values_are_kept_and_unknown_ones_refused():
    for name in PRECISIONS[:3]:
        assert resolve_precision(name, probe=lambda: pytest.fail("probed"))[0] == name
    with pytest.raises(ValueError, match="expected one of"):
        resolve_precision("bfloat16")
    assert PRECISIONS == schema.PRECISIONS  # the schema's copy (it imports no TensorFlow)


def test_precision_policy_restores_the_previous_one():
    from tf_langdml import keras

    with precision_policy("mixed_bfloat16"):
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        with precision_policy("auto"):
            pass


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx512_bf16 amx_bf16\n\nprocessor\t: 1\n")
    assert read_cpu_flags(cpuinfo) == {"fpu", "avx512_bf16", "amx_bf16"}
    assert read_cpu_flags(tmp_path / "absent") is None
