"""tf-langdml train end to end on a generated image folder; kill -9 mid-epoch and resume; the CLI."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import yaml
from helpers import quiet_env, tiny_run_overrides, write_colour_folder

from tf_langdml.cli import main
from tf_langdml.runs import checkpoints
from tf_langdml.runs.run_dir import RUN_FILES
from tf_langdml.runs.schema import ConfigError, load_config
from tf_langdml.runs.train import train

METRICS = [
    "recall@1",
    "recall@2",
    "recall@4",
    "recall@8",
    "map@r",
    "map@1000",
    "intra",
    "inter",
    "intra_over_inter",
    "rho_spectrum",
    "nmi",
    "f1",
    "mistake_language_similarity",
    "mistakes_in_5_nearest_classes",
    "epochs",
    "optimizer_steps",
]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """8 named classes x 6 noisy solid-colour PNGs (4 train classes, 4 test classes)."""
    names = ["red_apple", "green_apple", "blue_whale", "grey_whale", "red_car", "blue_car", "green_frog", "grey_mouse"]
    return write_colour_folder(
        tmp_path_factory.mktemp("folder"),
        per_class=6,
        size=24,
        noise=30,
        class_names=[f"{index:02d}.{name}" for index, name in enumerate(names)],
    )


def tiny_overrides(folder, runs, name, guidance="elg", epochs=2, steps=3, every=1):
    return [
        *tiny_run_overrides(folder, runs, name),
        f"language.guidance={guidance}",
        f"loss.language_weight={0 if guidance == 'none' else 1.0}",
        "optimizer.learning_rate=0.01",
        f"training.epochs={epochs}",
        f"training.steps_per_epoch={steps}",
        f"training.eval_every={every}",
        "training.checkpoint_every=2",
        "evaluation.batch_size=16",
    ]


# The whole run's schedule: decay x0.5 at epoch 1 (0-based: optimizer step 3 on, of 2 epochs of 3 steps), the
# head at its own rate, the backbone warmed up for epoch 0 (these keys set off their defaults, run end to end).
STEP_DECAY = [
    "optimizer.schedule=step",
    "optimizer.decay_epochs=[1]",
    "optimizer.decay_factor=0.5",
    "optimizer.head_learning_rate=0.02",
    "training.warmup_epochs=1",
]


def test_train_writes_the_whole_run_directory(image_folder, tmp_path, minilm_encoder):
    config = load_config(None, tiny_overrides(image_folder, tmp_path, "tiny") + STEP_DECAY)
    metrics = train(config, verbose=0)
    folder = tmp_path / "tiny"
    for name in RUN_FILES:
        assert (folder / name).exists(), name
    assert set(METRICS) <= set(metrics)
    assert metrics["epochs"] == 2 and metrics["optimizer_steps"] == 6
    # Python floats survive a JSON round trip exactly (shortest repr), and NaN is stored as None.
    assert json.loads((folder / "metrics.json").read_text()) == metrics
    assert np.load(folder / "language_table.npy").shape == (4, 1, 384)
    assert json.loads((folder / "train_class_names.json").read_text())[0] == "red apple"
    assert yaml.safe_load((folder / "config.yaml").read_text())["model"]["backbone"] == "toy_cnn"
    history = json.loads((folder / "history.json").read_text())
    assert sorted(history) == ["1", "2"]
    for line in history.values():  # the embedding-space diagnostics of every evaluation (eval_every 1)
        assert {"val_intra", "val_inter", "val_intra_over_inter", "val_rho_spectrum"} <= set(line)
    # Under the step decay history.json has each epoch's rate (its last step's): 0.01, float32(0.005);
    # TensorBoard each step's: three of 0.01, then three of 0.005.
    rates = [float(np.float32(rate)) for rate in (0.01, 0.005)]
    assert [history[epoch]["learning_rate"] for epoch in ("1", "2")] == rates
    logged = [
        float(tf.make_ndarray(value.tensor))
        for path in sorted((folder / "logs" / "train").glob("events.out.tfevents.*"))
        for event in tf.compat.v1.train.summary_iterator(str(path))
        for value in event.summary.value
        if value.tag == "learning_rate"
    ]
    assert logged == [rates[0]] * 3 + [rates[1]] * 3
    assert (folder / "logs" / "projector_config.pbtxt").exists()
    assert list((folder / "checkpoints").glob("ckpt-6.index"))
    # The CLI exports it for TF Serving, and evaluates it again.
    assert main(["export", "--run", str(folder), "--name", "tiny", "--saved-models", str(tmp_path / "saved")]) == 0
    assert (tmp_path / "saved" / "tiny" / "1" / "saved_model.pb").exists()
    assert main(["evaluate", "--run", str(folder)]) == 0
    # A finished run is not trained again; another config under the same name is refused.
    assert train(config, verbose=0) == metrics  # read back from metrics.json: exact
    with pytest.raises(ConfigError, match="changed: training.epochs"):
        train(load_config(None, tiny_overrides(image_folder, tmp_path, "tiny", epochs=3) + STEP_DECAY), verbose=0)


def test_plg_run_saves_pseudo_label_names(image_folder, tmp_path, minilm_encoder):
    overrides = tiny_overrides(image_folder, tmp_path, "plg", guidance="plg", epochs=1, steps=2) + [
        "language.classifier=efficientnet_lite0",
        "language.classifier_image_size=32",
        "evaluation.semantic=false",
        "evaluation.clustering=false",
    ]
    train(load_config(None, overrides), verbose=0)
    names = json.loads((tmp_path / "plg" / "pseudo_labels.json").read_text())
    assert names["level"] == "class" and len(names["rows"]) == 4 and len(names["rows"][0]["pseudo_labels"]) == 5


def _registered_steps(folder):
    """Steps of the checkpoints the run's CheckpointManager has registered (a resume can only start from those)."""
    state = tf.train.get_checkpoint_state(str(folder / "checkpoints")) if (folder / "checkpoints").exists() else None
    return sorted(int(path.rsplit("-", 1)[1]) for path in state.all_model_checkpoint_paths) if state else []


def _checkpoint_values(folder, step):
    reader = tf.train.load_checkpoint(str(folder / "checkpoints" / f"ckpt-{step}"))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()}


def test_a_run_killed_mid_epoch_resumes_bit_exactly_and_counts_every_step_once(image_folder, tmp_path):
    # The margin loss: its per-class beta trains with its own optimizer, and its distance-weighted
    # miner draws from a stream seeded by (seed, step); both must come back exactly after kill -9.
    steps_per_epoch, epochs = 20, 2
    overrides = tiny_overrides(
        image_folder, tmp_path, "resume", guidance="none", epochs=epochs, steps=steps_per_epoch, every=2
    ) + ["evaluation.semantic=false", "evaluation.clustering=false", "loss.dml=margin", "training.deterministic=true"]
    command = [sys.executable, "-m", "tf_langdml", "train", "--quiet", "--yes"] + [
        f"--set={item}" for item in overrides
    ]
    environment = quiet_env()
    folder = tmp_path / "resume"
    first = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
        if _registered_steps(folder):  # (an index file alone may belong to a checkpoint still being written)
            break
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = _registered_steps(folder)[-1]
    assert 0 < killed_at < steps_per_epoch * epochs and not (folder / "metrics.json").exists()
    assert killed_at % steps_per_epoch, "killed at an epoch boundary: not the mid-epoch case"

    second = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["epochs"] == epochs and metrics["optimizer_steps"] == steps_per_epoch * epochs
    assert sorted(json.loads((folder / "history.json").read_text()), key=int) == ["1", "2"]
    starts = [json.loads(line)["optimizer_step"] for line in (folder / "run_log.jsonl").read_text().splitlines()]
    assert starts == [0, killed_at]  # the second process began where the first one's last checkpoint was

    # An unbroken run of the same config ends in the same state, bit for bit: weights, beta, every optimizer.
    unbroken = [
        f"--set=runs_dir={tmp_path / 'unbroken'}" if item.startswith("--set=runs_dir=") else item for item in command
    ]
    reference = subprocess.run(unbroken, env=environment, capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]
    final = steps_per_epoch * epochs
    resumed, expected = _checkpoint_values(folder, final), _checkpoint_values(tmp_path / "unbroken" / "resume", final)
    assert resumed.keys() == expected.keys()
    beta = [key for key in expected if "beta" in key and "OPTIMIZER" not in key and ".OPTIMIZER_SLOT" not in key]
    assert beta and any("loss_optimizers" in key for key in expected), sorted(expected)[:20]
    assert not np.array_equal(expected[beta[0]], np.full_like(expected[beta[0]], 1.2))  # beta did train
    for key in expected:
        if key != checkpoints.CONFIG_VARIABLE:  # (the two runs differ in runs_dir, so in their config's SHA-256)
            assert np.array_equal(resumed[key], expected[key]), key
    assert (
        json.loads((tmp_path / "unbroken" / "resume" / "metrics.json").read_text())["recall@1"] == metrics["recall@1"]
    )


def test_cli_help_and_errors(capsys, tmp_path):
    for command in ("demo", "train", "evaluate", "embed-classes", "pseudolabel", "export", "sweep"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "Example:" in capsys.readouterr().out
    assert main(["train", "--set", "training.epoch=3"]) == 2
    assert "did you mean 'training.epochs'" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tmp_path)]) == 2


def test_cli_embed_classes(tmp_path, minilm_encoder, capsys):
    out = tmp_path / "table.npz"
    assert main(["embed-classes", "--names", "sparrow, finch", "--out", str(out)]) == 0
    data = np.load(out)
    assert list(data["names"]) == ["sparrow", "finch"] and data["embeddings"].shape == (2, 384)
    assert list(data["texts"]) == ["a photo of a sparrow", "a photo of a finch"]


class _Interrupted(Exception):
    pass


def test_a_bfloat16_run_resumes_in_the_precision_it_began_with(image_folder, tmp_path, monkeypatch):
    # training.precision=auto, resolved to bfloat16 at the first start (a probe reporting AVX-512 BF16, timings
    # where bfloat16 is faster); the restart sees a machine without it, yet keeps bfloat16, as does evaluate. The
    # run is stopped after step 3 (the last checkpoint: step 2, mid-epoch) and restarted; an unbroken run of the
    # same config ends alike (its decision read from the cache the first start wrote). The fake probe draws from
    # the global random state as the real one's model builds do: the run must seed after it, else the probed
    # start would begin from other weights than the one that read the cache.
    from tf_langdml import keras
    from tf_langdml.models import precision, precision_probe
    from tf_langdml.runs.train import evaluate

    fast = precision.DeviceCapabilities(cpu_flags=frozenset({"avx512_bf16"}))
    slow = precision.DeviceCapabilities(cpu_flags=frozenset({"avx2"}))
    overrides = tiny_overrides(image_folder, tmp_path / "runs", "bf16", guidance="none", epochs=2, steps=3, every=5) + [
        "evaluation.semantic=false",
        "evaluation.clustering=false",
        "training.precision=auto",
    ]
    config = load_config(None, overrides)
    monkeypatch.setattr(precision, "probe_devices", lambda: fast)

    def bfloat16_faster(model):
        keras.layers.Dense(2).build((None, 2))  # an unseeded initializer: the draw the probe's model builds make
        return {"float32": 2.0, "mixed_bfloat16": 1.0}

    monkeypatch.setattr(precision_probe, "measure_step_times", bfloat16_faster)
    monkeypatch.setenv("TF_LANGDML_CACHE", str(tmp_path / "cache"))  # a decision of its own, not the session's
    unbroken = train(load_config(None, overrides + [f"runs_dir={tmp_path / 'unbroken'}"]), verbose=0)
    assert unbroken["precision"] == "mixed_bfloat16"

    save = checkpoints.ResumeCheckpoints.on_train_batch_end

    def stop_after_step_3(self, batch, logs=None):
        save(self, batch, logs)
        if int(self.model.optimizer.iterations.numpy()) == 3:
            raise _Interrupted

    monkeypatch.setattr(checkpoints.ResumeCheckpoints, "on_train_batch_end", stop_after_step_3)
    with pytest.raises(_Interrupted):
        train(config, verbose=0)
    monkeypatch.setattr(checkpoints.ResumeCheckpoints, "on_train_batch_end", save)
    monkeypatch.setattr(precision, "probe_devices", lambda: slow)  # auto would now give float32
    metrics = train(config, verbose=0)
    folder = tmp_path / "runs" / "bf16"
    starts = [json.loads(line) for line in (folder / "run_log.jsonl").read_text().splitlines()]
    assert [(start["optimizer_step"], start["precision"]) for start in starts] == [
        (0, "mixed_bfloat16"),
        (2, "mixed_bfloat16"),
    ]
    assert "avx512_bf16" in starts[0]["precision_reason"] and metrics["precision"] == "mixed_bfloat16"
    assert metrics["optimizer_steps"] == 6 and metrics["epochs"] == 2
    # Same state as the unbroken run: the batches depend only on (seed, step) and the CPU kernels are
    # deterministic here; the same bfloat16 roundings then give the same numbers.
    resumed, expected = _checkpoint_values(folder, 6), _checkpoint_values(tmp_path / "unbroken" / "bf16", 6)
    assert resumed.keys() == expected.keys()
    for key in expected:
        if np.asarray(expected[key]).dtype.kind == "f":  # (not the object graph, nor save_counter)
            np.testing.assert_allclose(resumed[key], expected[key], rtol=1e-6, atol=1e-7, err_msg=key)
    # evaluate rebuilds the embedder in the run's bfloat16 (not this machine's auto): training's final metrics.
    recomputed = evaluate(folder, verbose=0)
    assert recomputed["recall@1"] == metrics["recall@1"] and recomputed["map@r"] == pytest.approx(metrics["map@r"])
