"""tf-langdml sweep: grid parsing, the table and HParams events, resume after kill -9, selection never reads test."""

import csv
import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import quiet_env, tiny_sweep_values, write_colour_folder

from tf_langdml.runs import sweep as sweep_module
from tf_langdml.runs.schema import ConfigError
from tf_langdml.runs.sweep import run_sweep
from tf_langdml.runs.sweep_grid import effective_point, parse_grid, parse_seeds, run_config, run_name
from tf_langdml.runs.sweep_table import (
    DIAGNOSTIC_COLUMNS,
    SweepResult,
    diagnostic_summary,
    mean_std,
    paired_differences,
)

CLASS_NAMES = [
    "red apple",
    "green apple",
    "blue whale",
    "grey whale",
    "red car",
    "blue car",
    "green frog",
    "grey mouse",
    "yellow duck",
    "pink pig",
    "black cat",
    "white dog",
]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """12 classes x 4 noisy solid-colour PNGs: 6 train classes (2 of them validation), 6 test classes."""
    return write_colour_folder(
        tmp_path_factory.mktemp("sweep_folder"),
        noise=30,
        class_names=[f"{index:02d}.{name.replace(' ', '_')}" for index, name in enumerate(CLASS_NAMES)],
    )


def test_grid_parsing_names_the_bad_key_and_value(tmp_path):
    values = tiny_sweep_values(tmp_path, tmp_path)
    grid = parse_grid(["loss.language_weight=0, 2.5,5", "language.guidance=elg,plg"], values)
    assert grid == {"loss.language_weight": [0, 2.5, 5], "language.guidance": ["elg", "plg"]}
    assert parse_seeds("0,1,2") == [0, 1, 2]
    cases = [
        (
            ["loss.language_wieght=1,2"],
            "unknown config key 'loss.language_wieght'.*did you mean 'loss.language_weight'",
        ),
        (["language.guidance=elg,elgg"], r"language.guidance=elgg.*did you mean 'elg'"),
        (["loss.language_weight=1,abc"], "loss.language_weight=abc.*must be a number"),
        (["training.seed=0,1"], "cannot be swept.*--seeds"),
        (["loss.language_weight"], "KEY=V1,V2"),
        (["loss.language_weight=1,,2"], "empty value"),
        (["loss.language_weight=1,1"], "listed twice"),
        (["loss.shift=0", "loss.shift=1"], "given twice"),
        ([], "at least one --grid"),
    ]
    for arguments, message in cases:
        with pytest.raises(ConfigError, match=message):
            parse_grid(arguments, values)
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds("0,one")


def test_grid_values_go_through_the_config_loader(tmp_path):
    values = tiny_sweep_values(tmp_path, tmp_path)
    # YAML 1.2 floats are numbers (PyYAML alone reads "1e-4" as a string).
    assert parse_grid(["optimizer.learning_rate=1e-4,3E-5"], values) == {"optimizer.learning_rate": [1e-4, 3e-5]}
    for text, message in [
        ("loss.shift=&a 1,*a", "anchor"),
        ("loss.shift=!!python/object:os.system 1", "tag"),
        ("loss.shift=.inf,1", "finite"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_grid([text], values)


def test_long_points_give_bounded_distinct_stable_run_names():
    from tf_langdml.runs.schema import NAME_MAX, _check_name

    long_a = {
        "loss.dml_arguments.positive_weight": 2.0,
        "loss.dml_arguments.negative_weight": 40.0,
        "loss.language_weight": 2.5,
        "loss.shift": 1.0,
        "loss.temperature": 0.25,
        "language.guidance": "elg",
    }
    long_b = {**long_a, "loss.temperature": 0.5}
    names = [run_name(point, seed, final) for point in (long_a, long_b) for seed in (0, 12) for final in (False, True)]
    assert all(len(name) <= NAME_MAX for name in names), [len(name) for name in names]
    assert len(set(names)) == len(names)  # the digest keeps points (and seeds, final) apart
    assert run_name(long_a, 0) == names[0]  # stable: a resumed sweep finds its runs
    for name in names:
        _check_name(name)  # the schema takes every name (no "/", no control characters)
    short = {"loss.language_weight": 2.5}
    assert run_name(short, 1) == "select__language_weight-2.5__seed-1"  # short names unchanged


def test_weight_zero_is_the_baseline_once(tmp_path):
    values = tiny_sweep_values(tmp_path, tmp_path)
    assert effective_point(values, {"loss.language_weight": 0, "language.guidance": "plg"}) == {
        "loss.language_weight": 0,
        "language.guidance": "none",
    }
    selection = run_config(values, {"loss.language_weight": 2.5}, 1, tmp_path / "s")
    assert (selection.evaluation.split, selection.data.validation_fraction, selection.training.seed) == (
        "validation",
        0.34,
        1,
    )
    final = run_config(values, {"loss.language_weight": 2.5}, 1, tmp_path / "s", final=True)
    assert (final.evaluation.split, final.data.validation_fraction) == ("test", 0.0)
    assert selection.name != final.name


def _event_tags(folder):
    import tensorflow as tf

    tags = set()
    for path in folder.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def _row(weight, guidance, seeds, values):
    point = {"loss.language_weight": weight, "language.guidance": guidance}
    return {
        "point": point,
        "label": f"language_weight={weight} guidance={guidance}",
        "seeds": seeds,
        "values": values,
        **dict(zip(["mean", "std"], mean_std(values))),
    }


def test_paired_differences_subtract_the_baseline_of_the_same_seed():
    baseline = _row(0, "none", [0, 1, 2], [0.76, 0.62, 0.74])
    guided = _row(5, "plg", [0, 1, 2], [0.80, 0.75, 0.70])
    unfinished = _row(1, "elg", [0, 1, 2], [0.70, float("nan"), None])
    differences = paired_differences([guided, baseline, unfinished])
    # Hand-derived: 0.80-0.76, 0.75-0.62, 0.70-0.74 = 0.04, 0.13, -0.04 -> mean 0.13/3, sample std below.
    expected = [0.04, 0.13, -0.04]
    assert differences[1] is None
    assert differences[0]["seeds"] == [0, 1, 2]
    assert differences[0]["mean"] == pytest.approx(sum(expected) / 3, abs=1e-12)
    assert differences[0]["std"] == pytest.approx(np.std(expected, ddof=1), abs=1e-12)
    # Only the seed both finished is paired: 0.70 - 0.76.
    assert differences[2] == {"mean": pytest.approx(-0.06, abs=1e-12), "std": 0.0, "seeds": [0]}
    # The paired spread is far smaller than the unpaired one when seeds move every point together.
    shifted = _row(2.5, "elg", [0, 1, 2], [0.78, 0.64, 0.76])
    difference = paired_differences([baseline, shifted])[1]
    assert difference["mean"] == pytest.approx(0.02) and difference["std"] < 1e-9 < shifted["std"]
    # No ω = 0 point in the grid: nothing to pair with.
    assert paired_differences([guided, shifted]) == [None, None]

    for row, difference in zip([baseline, guided], paired_differences([baseline, guided])):
        row["paired_difference"] = difference
    table = SweepResult("recall@1", [baseline, guided], guided, [], None, 0.0).table()
    assert "paired Δ vs ω=0" in table.splitlines()[0]
    assert "+0.0433 ± 0.0850" in next(line for line in table.splitlines() if "guidance=plg" in line)


def test_the_table_shows_the_embedding_space_diagnostics_mean_over_seeds():
    from tf_langdml.evaluation import EMBEDDING_SPACE_METRICS

    assert DIAGNOSTIC_COLUMNS == EMBEDDING_SPACE_METRICS  # the TensorFlow-free copy of the names
    results = [
        {"recall@1": 0.5, "intra": 0.25, "inter": 0.75, "intra_over_inter": 1 / 3, "rho_spectrum": 0.125},
        {"recall@1": 0.7, "intra": 0.35, "inter": 0.85, "intra_over_inter": 0.35 / 0.85},  # no rho_spectrum
    ]
    summary = diagnostic_summary(results)
    # Hand-derived: intra (0.25 + 0.35) / 2 = 0.3, sample std |0.35 - 0.25| / sqrt(2).
    assert summary["intra"]["mean"] == pytest.approx(0.3, abs=1e-15)
    assert summary["intra"]["std"] == pytest.approx(0.1 / np.sqrt(2), abs=1e-15)
    # The run without rho_spectrum is left out: one value, std 0.
    assert summary["rho_spectrum"] == {"mean": 0.125, "std": 0.0, "values": [0.125, None]}
    row = {**_row(1, "elg", [0, 1], [0.5, 0.7]), "diagnostics": summary}
    bare = _row(0, "none", [0, 1], [0.6, 0.6])  # a row of a sweep.json written before the diagnostics
    table = SweepResult("recall@1", [row, bare], row, [], None, 0.0).table()
    header, first, second = table.splitlines()[:3]
    assert header.split()[-5:] == ["intra", "inter", "intra/inter", "rho", "seeds"]
    assert first.split()[-6:-2] == ["0.3000", "0.8000", f"{(1 / 3 + 0.35 / 0.85) / 2:.4f}", "0.1250"]
    assert second.split()[-6:-2] == ["-", "-", "-", "-"]


def test_a_tiny_sweep_writes_the_table_and_hparams_and_selection_never_reads_test(
    image_folder, tmp_path, minilm_encoder, monkeypatch, capsys
):
    from tf_langdml.data import splits as splits_module
    from tf_langdml.data.image_folder import load_image_folder

    test_classes = set(load_image_folder(image_folder).test_split.class_names)
    read = []  # (phase, class names of every split a pipeline was built over)
    phase = {"now": "selection"}
    original_dataset, original_train = splits_module.Split.dataset, splits_module.make_train_dataset

    def spy_dataset(self):
        read.append((phase["now"], set(self.class_names)))
        return original_dataset(self)

    def spy_train(split, *args, **kwargs):
        read.append((phase["now"], set(split.class_names)))
        return original_train(split, *args, **kwargs)

    monkeypatch.setattr(splits_module.Split, "dataset", spy_dataset)
    monkeypatch.setattr("tf_langdml.data.make_train_dataset", spy_train)
    values = tiny_sweep_values(image_folder, tmp_path)
    grid = parse_grid(["loss.language_weight=0,1.5"], values)
    original_rows = sweep_module._rows

    def rows(*args, **kwargs):
        phase["now"] = "final" if args[5] else "selection"
        return original_rows(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "_rows", rows)
    result = run_sweep(values, grid, seeds=[0], final=True, verbose=1)

    # verbose=1: a line before each of the 3 runs (2 points + the final run of the best), its runs quiet.
    out, err = capsys.readouterr()
    assert out == ""
    lines = [line for line in err.splitlines() if line.startswith("tf_langdml: run ")]
    duration = r"((?:\d+ min )?\d+ s)"  # format_duration below an hour
    pattern = rf"tf_langdml: run (\d)/3 \((.*)\): {duration} elapsed, (no estimate yet|about {duration} left)"
    matches = [re.fullmatch(pattern, line) for line in lines]
    assert len(lines) == 3 and all(matches), lines
    assert [match[1] for match in matches] == ["1", "2", "3"]
    assert [match[2] for match in matches] == [
        "language_weight=0 seed=0",
        "language_weight=1.5 seed=0",
        f"final {result.best['label']} seed=0",
    ]
    assert matches[0][4] == "no estimate yet"
    # Before run 2 the estimate is run 1's time x 2 runs left, and the elapsed time is run 1's time (+ the
    # microseconds before it started): each shown rounded to whole seconds, so they agree within 0.5 + 2 x 0.5.
    assert abs(_seconds(matches[1][5]) - 2 * _seconds(matches[1][3])) <= 1.5

    selection_reads = [names for when, names in read if when == "selection"]
    assert selection_reads and all(not names & test_classes for names in selection_reads)
    assert any(names & test_classes for when, names in read if when == "final")  # the test is able to see it

    folder = tmp_path / "tiny_sweep"
    with open(folder / "sweep.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["point"] for row in table] == ["language_weight=0", "language_weight=1.5"]
    assert table[0]["paired_difference_vs_baseline_mean"] == ""
    for name in DIAGNOSTIC_COLUMNS:  # one run per point: its own diagnostic, standard deviation 0
        assert float(table[1][f"validation_{name}_mean"]) == pytest.approx(
            result.rows[1]["diagnostics"][name]["values"][0], abs=1e-6
        )
        assert float(table[1][f"validation_{name}_std"]) == 0.0
    assert float(table[1]["paired_difference_vs_baseline_mean"]) == pytest.approx(
        float(table[1]["validation_recall@1_mean"]) - float(table[0]["validation_recall@1_mean"]), abs=2e-6
    )
    saved = json.loads((folder / "sweep.json").read_text())
    for row, saved_row in zip(result.rows, saved["rows"]):
        run = json.loads((folder / saved_row["runs"][0] / "metrics.json").read_text())
        assert run["evaluated_on"] == "validation" and run["evaluated_classes"] == 2 and run["training_classes"] == 4
        assert saved_row["values"] == [run["recall@1"]] and float(
            next(line for line in table if line["point"] == row["label"])["validation_recall@1_mean"]
        ) == pytest.approx(run["recall@1"], abs=1e-6)
    assert saved["best"]["label"] in {row["point"] for row in table}
    final_run = json.loads((folder / saved["final"][0]["runs"][0] / "metrics.json").read_text())
    assert final_run["evaluated_on"] == "test" and final_run["evaluated_classes"] == 6
    assert "_hparams_/experiment" in _event_tags(folder / "hparams_config")
    run_tags = _event_tags(folder / saved["rows"][1]["runs"][0] / "logs" / "hparams")
    assert {"_hparams_/session_start_info", "sweep/recall@1"} <= run_tags
    assert "diagnostics/gradient_norm_ratio" in _event_tags(folder / saved["rows"][1]["runs"][0] / "logs" / "train")
    assert "wall time" not in result.table() and "best on validation" in result.table()


def _seconds(text):
    """``3 min 12 s`` -> 192."""
    minutes, _, seconds = text.rpartition(" min ")
    return int(minutes or 0) * 60 + int(seconds.removesuffix(" s"))


def test_a_sweep_killed_between_points_resumes_without_retraining(image_folder, tmp_path):
    import yaml

    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump(tiny_sweep_values(image_folder, tmp_path, "killed")))
    command = [
        sys.executable,
        "-m",
        "tf_langdml",
        "sweep",
        "--config",
        str(config),
        "--quiet",
        "--grid",
        "loss.language_weight=0,1",
        "--set",
        "evaluation.semantic=false",
    ]
    environment = quiet_env()
    folder = tmp_path / "killed_sweep"
    first_run = folder / "select__language_weight-0__seed-0"
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not (first_run / "metrics.json").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the sweep ended before it could be killed"
    assert not (folder / "sweep.csv").exists()
    first_metrics = (first_run / "metrics.json").read_text()

    command.remove("--quiet")  # the resumed sweep shows its progress
    second = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    # The finished first run counts as done, not trained: no estimate from its near-zero time.
    progress = [line for line in second.stderr.splitlines() if line.startswith("tf_langdml: run ")]
    assert [re.sub(r"(\d+ min )?\d+ s elapsed", "T", line) for line in progress] == [
        "tf_langdml: run 1/2 (language_weight=0 seed=0): T, no estimate yet",
        "tf_langdml: run 2/2 (language_weight=1 seed=0): T, no estimate yet",
    ], second.stderr[-3000:]
    assert (first_run / "metrics.json").read_text() == first_metrics
    assert len((first_run / "run_log.jsonl").read_text().splitlines()) == 1  # started once: not retrained
    assert "best on validation" in second.stdout
    with open(folder / "sweep.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2


def test_cli_sweep_errors_before_tensorflow(capsys, tmp_path):
    from tf_langdml.cli import main

    assert main(["sweep", "--grid", "loss.languag_weight=1,2"]) == 2
    assert "did you mean 'loss.language_weight'" in capsys.readouterr().err
    assert main(["sweep", "--grid", "loss.language_weight=1,2", "--seeds", "a"]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_a_sweep_that_fails_on_its_data_leaves_no_folder(tmp_path):
    values = tiny_sweep_values(tmp_path / "missing", tmp_path / "runs")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_sweep(values, parse_grid(["loss.language_weight=0,1"], values), seeds=[0], verbose=0)
    assert not (tmp_path / "runs").exists()
