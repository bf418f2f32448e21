"""training.precision's ``auto``: the device gate (mocked capability probes), then the probe's choice (faked timings).

The probe's cache and its one real measurement: test_precision_probe.py.
"""

import pytest

from tf_langdml.models.precision import (
    PRECISIONS,
    DeviceCapabilities,
    precision_policy,
    read_cpu_flags,
    read_cpu_model,
    reported_cpu_flags,
    resolve_precision,
)
from tf_langdml.models.precision_probe import BFLOAT16_MAX_TIME_RATIO, ProbedModel, choose_policy
from tf_langdml.runs import builders, schema

MODEL = ProbedModel("toy_cnn", image_size=8, batch_size=2)


def probe(gpus=(), flags=(), source="/proc/cpuinfo"):
    return lambda: DeviceCapabilities(gpus=tuple(gpus), cpu_flags=frozenset(flags), cpu_flags_source=source)


def never_measured(model):
    pytest.fail(f"the gate should have answered float32 without timing {model}")


def timings(float32, bfloat16, calls=None):
    """A ``measure`` answering fixed seconds per step (and appending each model it was asked about to ``calls``)."""

    def measure(model):
        if calls is not None:
            calls.append(model)
        return {"float32": float32, "mixed_bfloat16": bfloat16}

    return measure


def auto(capabilities, measure=never_measured, model=MODEL, cache=None):
    return resolve_precision("auto", capabilities, model, measure, cache)


def test_auto_past_the_cpu_gate_keeps_bfloat16_only_when_the_probe_finds_it_faster(tmp_path):
    avx512 = probe(flags=["sse2", "avx512f", "avx512_bf16"])
    policy, reason = auto(avx512, timings(1.0, 0.5), cache=tmp_path / "faster")
    assert policy == "mixed_bfloat16" and "avx512_bf16" in reason and "/proc/cpuinfo" in reason
    assert auto(probe(flags=["amx_bf16"]), timings(1.0, 0.5), cache=tmp_path / "amx")[0] == "mixed_bfloat16"
    # EfficientNet-Lite0's case (depthwise convolutions without a fast bfloat16 kernel): slower, so float32.
    assert auto(avx512, timings(1.13, 1.45), cache=tmp_path / "slower")[0] == "float32"
    assert auto(avx512, timings(1.0, 1.0), cache=tmp_path / "equal")[0] == "float32"


def test_choice_needs_bfloat16_under_the_margin():
    assert choose_policy({"float32": 1.0, "mixed_bfloat16": 0.5}) == "mixed_bfloat16"
    assert choose_policy({"float32": 1.0, "mixed_bfloat16": 1.0}) == "float32"
    assert choose_policy({"float32": 1.0, "mixed_bfloat16": BFLOAT16_MAX_TIME_RATIO}) == "float32"  # not under it
    assert choose_policy({"float32": 1.0, "mixed_bfloat16": 0.9 * BFLOAT16_MAX_TIME_RATIO}) == "mixed_bfloat16"


def test_the_reason_says_what_was_measured_and_why(tmp_path):
    model = ProbedModel("efficientnet_lite0", image_size=224, batch_size=32)
    policy, reason = auto(probe(flags=["avx512_bf16"]), timings(1.13, 1.45), model, tmp_path)
    (cache_file,) = (tmp_path / "precision").iterdir()
    assert policy == "float32"
    assert reason == (
        "auto: no GPU; the CPU has avx512_bf16 (from /proc/cpuinfo); probed efficientnet_lite0 at 224 px, batch 32: "
        f"float32 1.13 s/step, mixed_bfloat16 1.45 s/step (1.28x) -> float32, as mixed_bfloat16 is not under "
        f"{BFLOAT16_MAX_TIME_RATIO}x (cached in {cache_file})"
    )  # 1.45 / 1.13 = 1.2832
    policy, reason = auto(probe(flags=["avx512_bf16"]), timings(5.12, 2.44), model, tmp_path / "resnet")
    assert policy == "mixed_bfloat16" and "(0.48x) -> mixed_bfloat16 (cached in " in reason  # 2.44 / 5.12 = 0.4766


def test_auto_without_fast_bfloat16_is_float32_and_measures_nothing():
    policy, reason = auto(probe(flags=["sse2", "avx2", "avx512f"]))
    assert policy == "float32" and "neither avx512_bf16 nor amx_bf16" in reason
    assert auto(probe(source=None)) == (
        "float32",
        "auto: no GPU, and the CPU's flags could not be read (no /proc/cpuinfo)",
    )
    with pytest.raises(ValueError, match="pass model=ProbedModel"):
        resolve_precision("auto", probe(flags=["avx2"]))


def test_auto_on_gpus_follows_the_compute_capability(tmp_path):
    a100 = ("/physical_device:GPU:0", (8, 0))
    t4 = ("/physical_device:GPU:1", (7, 5))
    policy, reason = auto(probe(gpus=[a100]), timings(1.0, 0.5), cache=tmp_path)
    assert policy == "mixed_bfloat16" and "8.0" in reason
    policy, reason = auto(probe(gpus=[("/physical_device:GPU:0", (7, 5))], flags=["amx_bf16"]))
    assert policy == "float32" and "7.5, below 8.0" in reason  # the GPU decides, not the CPU
    assert auto(probe(gpus=[a100, t4]))[0] == "float32"  # the slowest replica paces a step
    assert auto(probe(gpus=[("/physical_device:GPU:0", None)]))[0] == "float32"


def test_builders_probe_the_runs_own_model_image_size_and_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_LANGDML_CACHE", str(tmp_path))
    calls = []
    training = schema.TrainingConfig(precision="auto", jit_compile=True)
    model = schema.ModelConfig(backbone="toy_cnn", embed_dim=16, pooling="max", freeze_bn_statistics=False)
    data = schema.DataConfig(image_size=24, batch_size=6)
    avx512 = probe(flags=["avx512_bf16"])
    assert builders.precision(training, model, data, avx512, timings(1.0, 0.5, calls))[0] == "mixed_bfloat16"
    assert calls == [
        ProbedModel("toy_cnn", 24, 6, embed_dim=16, pooling="max", freeze_bn_statistics=False, jit_compile=True)
    ]
    assert list((tmp_path / "precision").iterdir())  # under $TF_LANGDML_CACHE
    with pytest.raises(ValueError, match=r"pass policy=builders.precision\(training, model, data\)"):
        builders.guided_model(model, 24, schema.LossConfig(), schema.OptimizerConfig(), training)


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
    assert read_cpu_model(cpuinfo) == "X" and read_cpu_model(tmp_path / "absent") is None
    assert reported_cpu_flags(("avx2", "amx_bf16", "avx512_bf16"), cpuinfo) == ["amx_bf16", "avx512_bf16"]
    assert reported_cpu_flags(path=tmp_path / "absent") == []
