"""What long work prints: training piped (one short line per epoch) and on a pseudo-terminal (Keras' bar), index progress.

A ``tf-langdml train`` subprocess with piped output (a module fixture that records its
outcome; the index test reuses its run) and one on a pseudo-terminal (slow: a second
TensorFlow process); the index and precision checks run in-process. The sweep's ``run i/N`` lines are checked in tests/runs/test_sweep.py.
"""

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import quiet_env, tiny_run_overrides, write_colour_folder

from tf_langdml.inference import ImageProgress, progress_line
from tf_langdml.runs.console import EpochLines, LossProgbar, epoch_line, fit_console, shown_keys

EPOCHS, STEPS, EVAL_EVERY = 3, 2, 2
TIMEOUT = 300


def train_overrides(folder, runs, name, encoder):
    return [
        *tiny_run_overrides(folder, runs, name),
        "language.guidance=elg",
        f"language.encoder=precomputed:{encoder}",
        'language.template="{}"',
        "loss.language_weight=1.0",
        f"training.epochs={EPOCHS}",
        f"training.steps_per_epoch={STEPS}",
        f"training.eval_every={EVAL_EVERY}",
        "evaluation.batch_size=16",
        "evaluation.semantic=false",
    ]


def set_arguments(overrides):
    return [argument for override in overrides for argument in ("--set", override)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """8 colour classes x 6 images (4 train, 4 test classes; 48 gallery images) and vectors for their names."""
    root = tmp_path_factory.mktemp("progress")
    folder = write_colour_folder(root / "folder", num_classes=8, per_class=6)
    names = np.array([f"class {index}" for index in range(8)])  # the cleaned folder names, template "{}"
    np.savez(
        root / "names.npz", texts=names, embeddings=np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    )
    return {"root": root, "folder": folder, "encoder": root / "names.npz", "runs": root / "runs"}


def read_terminal(master, process, deadline):
    """Everything the child writes to its pty until it exits (EIO once the last slave is closed) or the deadline."""
    chunks = []
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif process.poll() is not None:
            break
    return b"".join(chunks).decode("utf-8", "replace")


def run_on_terminal(command, environment, timeout=TIMEOUT):
    """``{"code", "output"}`` of ``command`` with stdin, stdout and stderr on a pseudo-terminal (code "timeout")."""
    master, slave = pty.openpty()
    process = subprocess.Popen(command, env=environment, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    deadline = time.time() + timeout
    try:
        output = read_terminal(master, process, deadline)
        try:
            process.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return {"code": "timeout", "output": output}
    finally:
        os.close(master)
    return {"code": process.returncode, "output": output}


@pytest.fixture(scope="module")
def piped_run(inputs):
    """``{"code", "out", "err"}`` of ``tf-langdml train`` with stdout and stderr to pipes (recorded, never raised)."""
    command = [
        sys.executable,
        "-m",
        "tf_langdml.cli",
        "train",
        "--yes",
        *set_arguments(train_overrides(inputs["folder"], inputs["runs"], "piped", inputs["encoder"])),
    ]
    try:
        done = subprocess.run(command, env=quiet_env(), capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as error:
        return {"code": "timeout", "out": error.stdout or "", "err": str(error.stderr or "")}
    return {"code": done.returncode, "out": done.stdout, "err": done.stderr}


EPOCH_LINE = re.compile(
    r"^tf_langdml: epoch (\d+)/(\d+): loss (\d+\.\d{4}) \(dml (\d+\.\d{4}), language (\d+\.\d{4})\), "
    r"(\d+ ms|\d+\.\d\d s)/step(?:, recall@1 (\d\.\d{4}))?$"
)


def test_piped_training_prints_one_short_line_per_epoch(piped_run, inputs):
    piped = piped_run
    assert piped["code"] == 0, piped["err"][-3000:]
    metrics = json.loads(piped["out"])  # stdout holds the metrics only: the progress is on stderr
    assert metrics["epochs"] == EPOCHS
    lines = piped["err"].splitlines()
    epoch_lines = [line for line in lines if line.startswith("tf_langdml: epoch ")]
    assert len(epoch_lines) == EPOCHS, lines
    history = json.loads((inputs["runs"] / "piped" / "history.json").read_text())
    for number, line in enumerate(epoch_lines, start=1):
        assert len(line) < 120, line  # "well under 150": about 95 characters at these magnitudes
        match = EPOCH_LINE.match(line)
        assert match, line
        epoch, epochs, loss, dml, language, _, recall = match.groups()
        assert (int(epoch), int(epochs)) == (number, EPOCHS)
        logged = history[str(number)]  # the console shows the values history.json holds, rounded to 4 places
        assert (loss, dml, language) == tuple(f"{logged[key]:.4f}" for key in ("loss", "dml_loss", "language_loss"))
        if number % EVAL_EVERY:
            assert recall is None and "val_recall@1" not in logged
        else:
            assert recall == f"{logged['val_recall@1']:.4f}"
    # The diagnostics are still in history.json (and TensorBoard), not on the console; no Keras bar when piped.
    assert any(key.startswith("diagnostics/") for key in history["1"])
    assert "diagnostics" not in piped["err"] and "[==" not in piped["err"] + piped["out"]
    # The precision line once, after the table and the model are built, and still in run_log.jsonl.
    assert [line for line in lines if "computing in" in line] == [
        "tf_langdml: computing in float32: precision float32 set explicitly."
    ]
    assert lines.index("tf_langdml: computing in float32: precision float32 set explicitly.") > next(
        index for index, line in enumerate(lines) if line.startswith("tf_langdml: embedding 4 texts")
    )
    start = json.loads((inputs["runs"] / "piped" / "run_log.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["precision"] == "float32"
    # The final evaluation's pass over the 24 test images: one line per tenth crossed (batches of 16).
    assert [line for line in lines if " images (" in line] == [
        line
        for line in lines
        if re.fullmatch(
            r"tf_langdml: embedded (16 / 24 images \(66|24 / 24 images \(100) %\), "
            r"\d+ s elapsed",
            line,
        )
    ]
    assert len([line for line in lines if " images (" in line]) == 2


def terminal_lines(output):
    """The lines a terminal ends up showing: backspaces dropped, each carriage return starts a new line."""
    return [line for line in output.replace("\b", "").replace("\r\n", "\n").replace("\r", "\n").split("\n") if line]


@pytest.mark.slow  # a second TensorFlow process (~20 s of CPU)
def test_a_terminal_gets_keras_progress_bars(inputs):
    # The same training on a pseudo-terminal, then index_run(verbose=1) of its run in the same process.
    runs, folder = inputs["runs"], inputs["folder"]
    script = (
        "import sys\n"
        "from tf_langdml.cli import main\n"
        f"code = main(['train', '--yes', *{set_arguments(train_overrides(folder, runs, 'terminal', inputs['encoder']))!r}])\n"
        "if code == 0:\n"
        "    from tf_langdml.runs.serving import index_run\n"
        f"    index_run({str(runs / 'terminal')!r}, {str(folder)!r}, 'terminal', "
        f"saved_models_dir={str(inputs['root'] / 'saved')!r}, batch_size=8, verbose=1)\n"
        "sys.exit(code)\n"
    )
    terminal = run_on_terminal([sys.executable, "-c", script], quiet_env())
    assert terminal["code"] == 0, terminal["output"][-3000:]
    lines = terminal_lines(terminal["output"])
    assert [line for line in lines if line.startswith("Epoch ")] == [
        f"Epoch {i}/{EPOCHS}" for i in range(1, EPOCHS + 1)
    ]
    finished = [line for line in lines if line.startswith(f"{STEPS}/{STEPS} [") and "/step - loss" in line]
    assert len(finished) == EPOCHS, lines
    for number, line in enumerate(finished, start=1):
        assert re.fullmatch(
            rf"{STEPS}/{STEPS} \[=+\] - .* - loss: \d\.\d{{4}} - dml_loss: \d\.\d{{4}} - "
            r"language_loss: \d\.\d{4}" + (r" - val_recall@1: \d\.\d{4}" if number % EVAL_EVERY == 0 else ""),
            line,
        ), line
    assert "diagnostics" not in terminal["output"] and "tf_langdml: epoch" not in terminal["output"]
    # index on a terminal: the gallery line, then Keras' bar over its 6 batches of 8 images.
    gallery = next(index for index, line in enumerate(lines) if line.startswith("tf_langdml: indexing gallery"))
    assert any(re.fullmatch(r"6/6 \[=+\] - .*/batch", line) for line in lines[gallery:]), lines[gallery:]
    assert not any("images (" in line for line in lines[gallery:])


def test_index_prints_progress_over_the_gallery_when_piped(piped_run, inputs, capsys):
    from tf_langdml.cli import main

    assert piped_run["code"] == 0, "the run to index did not train"
    assert (
        main(
            [
                "index",
                "--run",
                str(inputs["runs"] / "piped"),
                "--gallery",
                str(inputs["folder"]),
                "--name",
                "piped",
                "--saved-models",
                str(inputs["root"] / "saved"),
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("tf_langdml: indexing gallery ") and err[0].endswith(
        ", computing in float32 (the run's, from run_log.jsonl)."
    )
    assert err[1] == "tf_langdml: embedding 48 images in batches of 8 (--batch-size)."
    # 48 images in batches of 8: 16.7 %, 33.3 %, ... cross a new tenth at every batch, so one line each.
    shown = [
        re.fullmatch(r"tf_langdml: embedded (\d+) / 48 images \((\d+) %\), \d+ s elapsed", line) for line in err[2:]
    ]
    assert all(shown), err
    assert [(int(match[1]), int(match[2])) for match in shown] == [
        (8, 16),
        (16, 33),
        (24, 50),
        (32, 66),
        (40, 83),
        (48, 100),
    ]
    # Quiet: the same pass prints nothing (index_run(verbose=0) embeds through embed_split(verbose=0)).
    from tf_langdml.inference import embed_split
    from tf_langdml.runs.serving import gallery_split
    from tf_langdml.runs.trained_embedder import restore_embedder

    config, embedder = restore_embedder(inputs["runs"] / "piped")
    split, _, _ = gallery_split(str(inputs["folder"]), config)
    assert embed_split(embedder, split, 8, config.data.image_size, verbose=0).shape == (48, 8)
    assert capsys.readouterr() == ("", "")


def test_a_start_that_fails_on_its_texts_prints_no_precision_line(inputs, tmp_path, capsys):
    from tf_langdml.runs.schema import ConfigError, load_config
    from tf_langdml.runs.train import train

    other = tmp_path / "other.npz"  # vectors for other names: the language table cannot be built
    np.savez(other, texts=np.array(["a", "b"]), embeddings=np.eye(2, dtype=np.float32))
    config = load_config(None, train_overrides(inputs["folder"], tmp_path / "runs", "failing", other))
    with pytest.raises(ConfigError, match="have no vector"):
        train(config, verbose=1)
    assert "computing in" not in capsys.readouterr().err


def test_image_progress_prints_a_line_per_tenth_with_counts_and_time():
    clock = iter(range(0, 1000, 6)).__next__  # 6 s per call after the start
    stream = io.StringIO()
    progress = ImageProgress(12800, 128, terminal=False, stream=stream, clock=clock)
    for done in range(128, 12800 + 1, 128):
        progress.update(done)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10  # 100 batches, one line per tenth
    assert lines[0] == "tf_langdml: embedded 1,280 / 12,800 images (10 %), 6 s elapsed"
    assert lines[-1] == "tf_langdml: embedded 12,800 / 12,800 images (100 %), 1 min 00 s elapsed"
    # Fewer batches than tenths: a line per batch, each at the tenth it reached.
    stream = io.StringIO()
    progress = ImageProgress(15, 5, terminal=False, stream=stream, clock=lambda: 0.0)
    for done in (5, 10, 15):
        progress.update(done)
    assert [line.split(" (")[1].split(")")[0] for line in stream.getvalue().splitlines()] == ["33 %", "66 %", "100 %"]
    assert progress_line(57, 100, 57.4, "classified") == "classified 57 / 100 images (57 %), 57 s elapsed"


def test_epoch_line_format_and_step_time():
    logs = {
        "loss": 1.23456,
        "dml_loss": 1.1,
        "language_loss": 0.13456,
        "val_recall@1": 0.5625,
        "diagnostics/gradient_norm_ratio": 3.0,
    }
    assert epoch_line(2, 10, logs, 0.085, language=True) == (
        "epoch 2/10: loss 1.2346 (dml 1.1000, language 0.1346), 85 ms/step, recall@1 0.5625"
    )
    assert epoch_line(2, 10, {"loss": 1.0, "dml_loss": 1.0, "language_loss": 0.0}, 2.314, language=False) == (
        "epoch 2/10: loss 1.0000 (dml 1.0000), 2.31 s/step"
    )
    # The longest plausible line (five-digit losses, 1000 epochs, slow steps) stays well under 150 characters.
    huge = {"loss": 99999.9999, "dml_loss": 99999.9999, "language_loss": 99999.9999, "val_recall@1": 1.0}
    assert len("tf_langdml: " + epoch_line(1000, 1000, huge, 99.99, language=True)) < 130
    # The step time: the epoch's start to its last batch's end, over its steps (the evaluation after it excluded).
    times = iter([10.0, 10.1, 10.2, 10.3])
    stream = io.StringIO()
    lines = EpochLines(epochs=5, language=False, stream=stream, clock=lambda: next(times))
    lines.on_epoch_begin(0)
    for batch in range(3):
        lines.on_train_batch_end(batch)
    lines.on_epoch_end(0, {"loss": 0.5, "dml_loss": 0.5, "language_loss": 0.0})
    assert stream.getvalue() == "tf_langdml: epoch 1/5: loss 0.5000 (dml 0.5000), 100 ms/step\n"


def test_fit_console_chooses_by_terminal_and_the_bar_shows_only_the_loss_terms():
    assert fit_console(0, 3, True) == (0, [])
    verbose, (bar,) = fit_console(1, 3, language=False, terminal=True)
    assert verbose == 1 and isinstance(bar, LossProgbar)
    verbose, (lines,) = fit_console(1, 3, language=True, terminal=False)
    assert verbose == 0 and isinstance(lines, EpochLines)
    logs = {"loss": 1.0, "dml_loss": 1.0, "language_loss": 0.0, "val_recall@1": 0.5, "diagnostics/x": 2.0}
    assert bar._shown(logs) == {"loss": 1.0, "dml_loss": 1.0, "val_recall@1": 0.5}
    assert shown_keys(True) == ("loss", "dml_loss", "language_loss", "val_recall@1")


def test_index_quiet_passes_verbose_zero(monkeypatch, tmp_path, capsys):
    from tf_langdml.cli import main

    calls = []

    def index_run(*args, verbose, **kwargs):
        calls.append(verbose)
        raise FileNotFoundError("stop here")  # one line, exit 2: nothing is exported

    monkeypatch.setattr("tf_langdml.runs.serving.index_run", index_run)
    for flags in ([], ["--quiet"]):
        assert main(["index", "--run", str(tmp_path), "--gallery", "test", "--name", "x", *flags]) == 2
    assert calls == [1, 0]
