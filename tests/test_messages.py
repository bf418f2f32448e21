"""What a newcomer reads when something goes wrong (issue 26): each message read back in full.

Messages name the bad input and what to do in one line; `train` with no config answers before
any heavy work; Ctrl-C prints one line and exits 130; every flag has help text.
"""

import argparse
import io
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from helpers import CLI_PROBE, run_cli, run_python, tiny_embedder, user_env, write_colour_folder

from tf_langdml.cli import _parser, main
from tf_langdml.runs.schema import CHOICE_KEYS, ConfigError, config_to_yaml, load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


# -- every flag has help ---------------------------------------------------------------------------


def test_every_flag_of_every_subcommand_has_help_text():
    parser = _parser()
    (subcommands,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    summaries = {action.dest: action.help for action in subcommands._choices_actions}
    missing = []
    for name, subparser in subcommands.choices.items():
        if not (summaries.get(name) or "").strip():
            missing.append(name)
        for action in subparser._actions:
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    # demo, train, sweep, evaluate, embed-classes, pseudolabel, export, index, search (and report)
    assert len(subcommands.choices) >= 9
    assert missing == []


# -- train without a config ------------------------------------------------------------------------


def test_a_bare_train_without_a_terminal_refuses_before_loading_tensorflow():
    result = run_python(CLI_PROBE, "train", cwd=ROOT, env=user_env(), stdin=subprocess.DEVNULL, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "exit 2 tensorflow False", result.stderr[-3000:]
    (line,) = result.stderr.splitlines()  # one line, no traceback
    assert line.startswith(
        "tf-langdml train: no --config given, and the defaults (hours of CPU time) would train "
        "backbone resnet50 "
        "(ImageNet weights downloaded from storage.googleapis.com"
    )
    for part in (
        "224 x 224 images",
        "150 epochs",
        "--config configs/demo.yaml",
        "configs/folder.yaml",
        "18 paper runs",
        "or --yes to start it.",
    ):
        assert part in line, part


def test_a_bare_train_on_a_terminal_asks_and_no_means_nothing_starts():
    import pty

    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", CLI_PROBE, "train"],
            stdin=follower,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=user_env(),
        )
        os.write(leader, b"n\n")
        out, err = process.communicate(timeout=120)
    finally:
        os.close(leader)
        os.close(follower)
    assert out.strip().splitlines()[-1].endswith("exit 2 tensorflow False"), err[-3000:]
    assert "Start it anyway? [y/N]" in out
    assert "No --config given: the defaults (hours of CPU time) would train backbone resnet50" in err
    assert err.strip().splitlines()[-1] == "tf-langdml train: not started."


def test_set_without_a_config_still_asks_and_yes_starts(monkeypatch, capsys):
    started = []
    monkeypatch.setattr("tf_langdml.runs.train.train", lambda config, verbose=1: started.append(config) or {})
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal: asking refuses
    # --set name=x alone leaves ResNet50, the download and 150 epochs in place: still asked, and it says what runs.
    assert main(["train", "--set", "name=x"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        "tf-langdml train: no --config given, and the defaults with your --set values would train backbone resnet50"
    ), line
    assert "150 epochs" in line and line.endswith("or --yes to start it.")
    assert started == []
    assert main(["train", "--yes"]) == 0
    assert main(["train", "--yes", "--set", "training.epochs=1"]) == 0
    # With a config there is no question.
    assert main(["train", "--config", str(ROOT / "configs" / "demo.yaml"), "--set", "training.epochs=2"]) == 0
    assert [config.training.epochs for config in started] == [150, 1, 2]
    assert "no --config" not in capsys.readouterr().err


# -- Ctrl-C ------------------------------------------------------------------------------------------


# Holds the process inside `import tensorflow` (at its `tensorflow.python` sub-import) until a signal comes, so the
# Ctrl-C below lands in the middle of the start-up however loaded the machine is.
IN_THE_IMPORT = (
    "import pathlib, sys, time\n"
    "class Hold:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'tensorflow.python':\n"
    "            pathlib.Path(sys.argv[1]).write_text('in the import')\n"
    "            time.sleep(120)\n"
    "        return None\n"
    "sys.meta_path.insert(0, Hold())\n"
    "from tf_langdml.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


def test_ctrl_c_during_start_up_prints_one_line_and_exits_130(tmp_path):
    marker = tmp_path / "in_the_import"
    # pytest-xdist's workers ignore SIGINT, and a child inherits that (Python then never installs its Ctrl-C
    # handler); a user's shell starts the command with the default disposition, so the child gets it back.
    process = subprocess.Popen(
        [sys.executable, "-c", IN_THE_IMPORT, str(marker), "evaluate", "--run", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=user_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not marker.exists():
        time.sleep(0.01)
    assert marker.exists() and process.poll() is None, "the process never reached the TensorFlow import"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert err == "tf-langdml evaluate: interrupted while starting (loading TensorFlow); nothing was done.\n"
    assert out == ""


@pytest.mark.parametrize(
    "command,argv,resume",
    [
        (
            "train",
            ["train", "--yes", "--set", "training.epochs=1"],
            "run the same command again: it resumes from the run's last checkpoint.",
        ),
        ("evaluate", ["evaluate", "--run", "runs/x"], "run the same command again."),
    ],
)
def test_ctrl_c_at_work_says_how_to_resume(command, argv, resume, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(f"tf_langdml.runs.train.{command}", interrupted)
    assert main(argv) == 130
    assert capsys.readouterr().err == f"tf-langdml {command}: interrupted; {resume}\n"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))  # --verbose sets it
    assert main(["--verbose", *argv]) == 130
    error = capsys.readouterr().err
    assert error.startswith("Traceback") and error.endswith(f"tf-langdml {command}: interrupted; {resume}\n")


# -- config values -----------------------------------------------------------------------------------

# A valid value of each choice key, written in capitals.
CHOICES = {
    "data.dataset": "DEMO",
    "model.backbone": "ResNet50",
    "model.pooling": "AVG",
    "loss.dml": "Margin",
    "loss.direction": "Image_To_Language",
    "language.guidance": "PLG",
    "language.classifier": "ResNet50",
    "language.level": "Sample",
    "optimizer.name": "SGD",
    "optimizer.schedule": "Constant",
    "training.precision": "Float32",
    "evaluation.split": "Test",
}


def test_choice_values_are_case_insensitive():
    assert set(CHOICES) == CHOICE_KEYS
    config = load_config(
        None, [f"{key}={value}" for key, value in CHOICES.items()] + ["loss.language_weight=1", "data.background=BLACK"]
    )
    for key, value in CHOICES.items():
        section, name = key.split(".")
        assert getattr(getattr(config, section), name) == value.lower(), key
    assert config.data.background == "black"
    # Paths and handles keep their case.
    assert load_config(None, ["language.encoder=precomputed:My.npz"]).language.encoder == "precomputed:My.npz"


def test_the_precision_flags_are_case_insensitive():
    assert (
        _parser().parse_args(["export", "--run", "r", "--name", "n", "--precision", "Mixed_BFloat16"]).precision
        == "mixed_bfloat16"
    )
    assert (
        _parser()
        .parse_args(["index", "--run", "r", "--gallery", "g", "--name", "n", "--precision", "FLOAT32"])
        .precision
        == "float32"
    )


@pytest.mark.parametrize(
    "key,choices",
    [
        ("language.guidance", "['none', 'elg', 'plg']"),
        ("optimizer.name", "['adam', 'sgd']"),
        ("training.precision", "['float32', 'mixed_float16', 'mixed_bfloat16', 'auto']"),
        ("evaluation.split", "['test', 'validation']"),
    ],
)
def test_an_invalid_choice_lists_the_valid_values_once(key, choices):
    with pytest.raises(ConfigError) as far:
        load_config(None, [f"{key}=zzzzzz", "loss.language_weight=1"])
    assert str(far.value) == f"'{key}' is 'zzzzzz'; expected one of {choices}."
    close = {
        "language.guidance": ("PLGX", "plg"),
        "optimizer.name": ("Adamm", "adam"),
        "training.precision": ("flot32", "float32"),
        "evaluation.split": ("tst", "test"),
    }[key]
    with pytest.raises(ConfigError) as near:
        load_config(None, [f"{key}={close[0]}", "loss.language_weight=1"])
    assert str(near.value) == f"'{key}' is '{close[0].lower()}'; expected one of {choices}; did you mean '{close[1]}'?"
    assert "valid values" not in str(near.value)


# -- run folders: missing, not a run, not finished ------------------------------------------------


COMMANDS = (["export", "--name", "x"], ["evaluate"], ["index", "--gallery", "test", "--name", "x"])


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: argv[0])
def test_a_missing_folder_a_non_run_and_an_unfinished_run_are_told_apart(argv, tmp_path, capsys):
    missing, photos, unfinished = tmp_path / "missing", tmp_path / "photos", tmp_path / "unfinished"
    photos.mkdir()
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text(config_to_yaml(load_config()))
    expected = {
        missing: f"{missing} does not exist; give a run directory, <runs_dir>/<name> (the folder `tf-langdml train` "
        "printed and wrote).",
        photos: f"{photos} is not a run directory (it has no config.yaml); give the folder `tf-langdml train` "
        "wrote, <runs_dir>/<name>.",
        unfinished: f"{unfinished} has not finished (no embedder.weights.h5 yet); finish it with `tf-langdml train "
        f"--config {unfinished / 'config.yaml'}` (it resumes from its last checkpoint), then try again.",
    }
    for folder, message in expected.items():
        assert (
            main(
                [argv[0], "--run", str(folder), *argv[1:], "--saved-models", str(tmp_path / "sm")]
                if argv[0] != "evaluate"
                else ["evaluate", "--run", str(folder)]
            )
            == 2
        )
        assert capsys.readouterr().err == f"tf-langdml {argv[0]}: {message}\n"
    assert not (tmp_path / "sm").exists()


# -- search --------------------------------------------------------------------------------------------


def test_search_on_a_missing_model_names_it_as_missing(tmp_path, capsys):
    image = tmp_path / "photo.png"
    image.write_bytes(b"\x89PNG")
    assert main(["search", "--model", str(tmp_path / "saved_models" / "nope"), str(image)]) == 2
    assert capsys.readouterr().err == (
        f"tf-langdml search: {tmp_path / 'saved_models' / 'nope'} does not exist; give saved_models/<name> (its latest "
        "version) or saved_models/<name>/<version>, as `tf-langdml index` printed.\n"
    )


# What the search signature's tf.debugging.Assert raised for a text file (copied from a real run), and for k.
ASSERTED = (
    "Graph execution error:\n\nDetected at node Assert/Assert defined at (most recent call last):\n"
    "<stack traces unavailable>\nassertion failed: [Bad image(s) in the request; nothing was embedded.] "
    "[row 0: not a JPEG, PNG, GIF or BMP image] [row 1: not a JPEG, PNG, GIF or BMP image]\n"
    "\t [[{{node Assert/Assert}}]] [Op:__inference_signature_wrapper_13298]"
)


def test_search_on_text_files_names_them_without_stray_brackets(tmp_path, monkeypatch, capsys):
    import tensorflow as tf

    notes, odd = tmp_path / "notes.txt", tmp_path / "odd [1].txt"
    notes.write_text("hi")
    odd.write_text("hi")

    def search_saved_model(model, images, k):
        raise tf.errors.InvalidArgumentError(None, None, ASSERTED)

    monkeypatch.setattr("tf_langdml.gallery.search_saved_model", search_saved_model)
    assert main(["search", "--model", str(tmp_path), str(notes), str(odd)]) == 2
    assert capsys.readouterr().err == (
        f"tf-langdml search: Bad image(s) in the request; nothing was embedded. {notes}: not a JPEG, PNG, GIF or BMP "
        f"image {odd}: not a JPEG, PNG, GIF or BMP image\n"
    )


# -- data: the skip warning, libjpeg, test classes, precomputed files ----------------------------


def _colour_folder(root, bad):
    write_colour_folder(root, num_classes=4, per_class=3, size=16)
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    for index in range(bad):  # a JPEG cut in half: libjpeg itself writes "Improper call to JPEG library ..." to fd 2
        (root / "class_1" / f"cut_{index}.jpg").write_bytes(buffer.getvalue()[:300])
    (root / "class_2" / "notes.txt").write_text("x")
    return root


def test_the_cli_prints_the_skip_warning_as_one_plain_line_and_no_libjpeg_chatter(tmp_path):
    folder = _colour_folder(tmp_path / "photos", bad=6)
    # evaluation.ks = 50 fails after the data load (the test split has 6 images), before any model is built.
    result = run_cli(
        [
            "train",
            "--quiet",
            "--yes",
            "--set",
            f"runs_dir={tmp_path / 'runs'}",
            "--set",
            "data.dataset=folder",
            "--set",
            f"data.data_dir={folder}",
            "--set",
            "model.backbone=toy_cnn",
            "--set",
            "model.weights=null",
            "--set",
            "data.image_size=16",
            "--set",
            "data.batch_size=4",
            "--set",
            "evaluation.ks=[1,50]",
        ],
        cwd=ROOT,
        env=user_env(),
        returncode=2,
    )
    lines = [line for line in result.stderr.splitlines() if not line.startswith("computing in")]  # runs/train.py's
    assert lines[0] == (
        f"tf-langdml train: warning: Skipped 7 file(s) under '{folder}' that are not readable images: 1 without an "
        "image extension (.jpg, .jpeg, .png, .gif, .bmp); 6 not decodable (corrupt, truncated or another format); "
        "0 above max_pixels=64000000 by their header. Examples: 'class_2/notes.txt', 'class_1/cut_0.jpg', "
        "'class_1/cut_1.jpg', 'class_1/cut_2.jpg', 'class_1/cut_3.jpg' and 2 more."
    )
    assert lines[1].startswith("tf-langdml train: 'evaluation.ks' has k = 50") and len(lines) == 2, lines
    assert "JPEG library" not in result.stderr and "UserWarning" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_library_users_still_get_a_warning(tmp_path):
    from tf_langdml.data import load_image_folder
    from tf_langdml.data.image_folder import SkippedFilesWarning

    folder = _colour_folder(tmp_path / "photos", bad=1)
    with pytest.warns(
        SkippedFilesWarning,
        match=r"Skipped 2 file\(s\).*by their header\. Examples: "
        r"'class_2/notes\.txt', 'class_1/cut_0\.jpg'\.$",
    ):
        load_image_folder(folder)


def test_one_unknown_test_class_gets_a_plain_did_you_mean(tmp_path):
    from tf_langdml.data import load_image_folder

    folder = _colour_folder(tmp_path / "photos", bad=0)
    with pytest.raises(ValueError) as raised:
        load_image_folder(folder, test_classes=["clas_2"])
    assert str(raised.value) == (
        f"test_classes ['clas_2'] are not class folders of '{folder}'; 1 unknown name(s). Known class folders (4), "
        "e.g. ['class_0', 'class_1', 'class_2', 'class_3']; did you mean 'class_2'?"
    )
    with pytest.raises(ValueError) as raised:
        load_image_folder(folder, test_classes=["zebra"])
    assert str(raised.value).endswith("e.g. ['class_0', 'class_1', 'class_2', 'class_3'].")


def test_a_missing_precomputed_file_is_refused_before_the_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [
        "train",
        "--yes",
        "--set",
        f"runs_dir={tmp_path / 'runs'}",
        "--set",
        "language.guidance=elg",
        "--set",
        "loss.language_weight=1",
        "--set",
        "language.encoder=precomputed:nope.npz",
        "--set",
        "model.backbone=toy_cnn",
        "--set",
        "model.weights=null",
    ]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"tf-langdml train: 'language.encoder': the precomputed embeddings file 'nope.npz' does not exist (resolved "
        f"from {tmp_path}); give the path of an .npz written by `tf-langdml embed-classes`, or use 'minilm'.\n"
    )
    assert not (tmp_path / "runs").exists()


def test_an_existing_export_version_names_the_cli_flag_and_the_python_argument(tmp_path):
    from tf_langdml.export import export_embedder

    embedder = tiny_embedder(embed_dim=4)
    (tmp_path / "model" / "1").mkdir(parents=True)
    with pytest.raises(FileExistsError) as raised:
        export_embedder(embedder, tmp_path / "model", version=1)
    assert str(raised.value) == (
        f"{tmp_path / 'model' / '1'} exists; exported versions are never overwritten. Pass "
        "another version (`--version N` on the command line, version=N in Python), or none "
        "for the next number."
    )
