"""``auto``'s probe: its decision cache (key, hit, damage, atomic writes) and one real measurement on toy_cnn."""

import functools
import json
import math
import pathlib

import pytest

from tf_langdml import keras
from tf_langdml.models import precision_probe
from tf_langdml.models.precision import DeviceCapabilities, resolve_precision
from tf_langdml.models.precision_probe import ProbedModel, cache_file, cache_key, read_choice, write_choice

MODEL = ProbedModel("toy_cnn", image_size=8, batch_size=2)
MACHINE = DeviceCapabilities(cpu_flags=frozenset({"avx512f", "avx512_bf16"}), cpu_model="AMD EPYC 9R14")


def counting_measure(calls, float32=1.0, bfloat16=0.5):
    def measure(model):
        calls.append(model)
        return {"float32": float32, "mixed_bfloat16": bfloat16}

    return measure


def auto(measure, cache, model=MODEL, machine=MACHINE):
    return resolve_precision("auto", lambda: machine, model, measure, cache)


def test_a_cached_decision_is_not_probed_again(tmp_path):
    calls = []
    first = auto(counting_measure(calls), tmp_path)
    second = auto(counting_measure(calls, float32=0.5, bfloat16=1.0), tmp_path)  # would now say float32
    assert len(calls) == 1 and first[0] == second[0] == "mixed_bfloat16"
    assert "cached in " in first[1] and "read from " in second[1]


def test_the_cache_key_separates_backbone_image_size_batch_and_machine(tmp_path):
    other_cpu = DeviceCapabilities(cpu_flags=MACHINE.cpu_flags, cpu_model="Intel Xeon 8480+")
    other_flags = DeviceCapabilities(cpu_flags=frozenset({"amx_bf16"}), cpu_model=MACHINE.cpu_model)
    a_gpu = DeviceCapabilities(gpus=(("/physical_device:GPU:0", (8, 0)),), cpu_model=MACHINE.cpu_model)
    variants = [
        (MACHINE, MODEL),
        (MACHINE, ProbedModel("efficientnet_lite0", 8, 2)),
        (MACHINE, ProbedModel("toy_cnn", 16, 2)),
        (MACHINE, ProbedModel("toy_cnn", 8, 4)),
        (MACHINE, ProbedModel("toy_cnn", 8, 2, embed_dim=64)),
        (other_cpu, MODEL),
        (other_flags, MODEL),
        (a_gpu, MODEL),
    ]
    paths = {cache_file(cache_key(machine, model), tmp_path) for machine, model in variants}
    assert len(paths) == len(variants)
    assert cache_key(MACHINE, MODEL)["tensorflow"]  # the TensorFlow version is part of it
    calls = []
    for machine, model in variants:  # each one probed once, none read another's decision
        auto(counting_measure(calls), tmp_path, model, machine)
    assert len(calls) == len(variants)


@pytest.mark.parametrize(
    "damage",
    [
        b"{not json",
        b"\xff\xfe",
        json.dumps({"policy": "mixed_bfloat16"}).encode(),  # no key: not a decision for this machine
        json.dumps({"key": cache_key(MACHINE, MODEL), "policy": "float32", "seconds_per_step": [1, 2]}).encode(),
        b" " * (precision_probe.MAX_CACHE_BYTES + 1),
    ],
    ids=["not-json", "not-utf8", "no-key", "times-not-a-mapping", "oversized"],
)
def test_a_damaged_cache_file_is_one_warning_and_a_new_probe(tmp_path, damage):
    path = cache_file(cache_key(MACHINE, MODEL), tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(damage)
    calls = []
    with pytest.warns(UserWarning, match="Ignoring the precision cache file") as warned:
        assert auto(counting_measure(calls), tmp_path)[0] == "mixed_bfloat16"
    assert len(warned) == 1 and str(path) in str(warned[0].message) and "\n" not in str(warned[0].message)
    assert len(calls) == 1
    assert read_choice(path, cache_key(MACHINE, MODEL))["policy"] == "mixed_bfloat16"  # replaced by a valid one


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    key = cache_key(MACHINE, MODEL)
    path = cache_file(key, tmp_path)
    assert write_choice(path, key, "float32", {"float32": 1.0, "mixed_bfloat16": 2.0})
    before = path.read_bytes()
    real_write_text = pathlib.Path.write_text

    def write_half_then_fail(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", write_half_then_fail)
    with pytest.warns(UserWarning, match="Could not write the precision cache file"):
        assert not write_choice(path, key, "mixed_bfloat16", {"float32": 2.0, "mixed_bfloat16": 1.0})
    assert path.read_bytes() == before and list(path.parent.iterdir()) == [path]  # no partial file left


def test_one_real_probe_times_both_policies_on_toy_cnn(tmp_path):
    # The real build / trace / time path under both policies (a fake capability probe opens the gate on
    # this machine). Which policy wins is not asserted: that is the machine's business.
    measure = functools.partial(precision_probe.measure_step_times, rounds=1, steps=1)
    policy, reason = auto(measure, tmp_path)
    record = json.loads(next((tmp_path / "precision").iterdir()).read_text())
    times = record["seconds_per_step"]
    assert policy in ("float32", "mixed_bfloat16") and record["policy"] == policy
    assert all(math.isfinite(times[name]) and times[name] > 0 for name in ("float32", "mixed_bfloat16"))
    assert "probed toy_cnn at 8 px, batch 2" in reason
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after building under bfloat16
