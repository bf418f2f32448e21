"""The offline demo: its code path on a reduced budget; the full demo is a slow test."""

import json
import pathlib
import re
import subprocess
import sys
import time

import pytest
from helpers import deterministic_run_overrides, h5_arrays, quiet_env, write_colour_folder

import tf_langdml.runs.train as train_module
from tf_langdml.cache import json_safe
from tf_langdml.cli import main
from tf_langdml.demo import (
    COLUMNS,
    DEMO_SWEEP,
    VARIANTS,
    chosen_with_lines,
    demo_configs,
    read_demo_sweep,
    results_table,
    run_demo,
    seed_rows,
    seeds_table,
)
from tf_langdml.runs.train import RUN_INFO_KEYS, evaluate


def test_demo_code_path_on_a_reduced_budget(tmp_path, capsys, minilm_encoder):
    # The budget: fewer steps and pixels, and toy_cnn for the demo's EfficientNet-Lite0 embedder (building and
    # tracing it six times, for three runs and three evaluations, was most of this test's time). The demo's
    # ImageNet weights still load here, in PLG's EfficientNet-Lite0 classifier; the demo's own backbone runs
    # in test_the_full_demo_finishes_within_15_minutes (make test-slow).
    overrides = [
        "training.epochs=1",
        "training.steps_per_epoch=2",
        "training.eval_every=1",
        "data.image_size=32",
        "model.backbone=toy_cnn",
        "model.weights=null",
        "language.classifier_image_size=64",
        "evaluation.clustering=false",
    ]
    results = run_demo(overrides=overrides, runs_dir=tmp_path, verbose=0)
    assert list(results) == ["baseline", "elg", "plg"]
    assert (tmp_path / "demo_plg" / "pseudo_labels.json").exists()
    output = capsys.readouterr().out
    assert "R@1" in output and "mAP@R" in output and "NMI" in output and "tensorboard --logdir" in output
    rows = {line.split()[0]: line.split()[1:] for line in output.splitlines() if re.match(r"(baseline|elg|plg) ", line)}
    assert list(rows) == ["baseline", "elg", "plg"]
    for variant, metrics in results.items():
        folder = tmp_path / f"demo_{variant}"
        saved = json.loads((folder / "metrics.json").read_text())
        assert saved == metrics
        assert (saved["optimizer_steps"], saved["epochs"], saved["steps_per_epoch"]) == (2, 1, 2)
        # Every metric again, from the run's saved embedder on its test split: the same weights and
        # ops give the same embeddings, so the same numbers to the last bit.
        recomputed = json_safe(evaluate(folder, verbose=0))
        assert recomputed == {key: value for key, value in saved.items() if key not in RUN_INFO_KEYS}
        assert saved["evaluated_on"] == "test" and saved["evaluated_classes"] == 142
        # The printed table shows metrics.json's values to 4 decimals ("nan": not computed, e.g. NMI here).
        expected = [f"{float('nan') if saved.get(key) is None else saved[key]:.4f}" for key, _ in COLUMNS]
        assert rows[variant] == expected and expected[2] == "nan"


def test_results_table_has_one_row_per_variant():
    table = results_table(
        {"baseline": {"recall@1": 0.5, "map@r": 0.25, "nmi": 0.75}, "elg": {"recall@1": 0.6, "map@r": 0.3, "nmi": 0.8}}
    )
    lines = table.splitlines()
    assert len(lines) == 4 and lines[2].startswith("baseline") and "0.5000" in lines[2] and "nan" in lines[2]


SWEEP_RESULTS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "results" / "demo_sweep.json"


def test_the_demo_uses_the_omega_that_its_sweep_chose_on_validation_classes():
    """docs/results/demo_sweep.json is the sweep's own sweep.json (docs/choosing.md has the command)."""
    sweep = json.loads(SWEEP_RESULTS.read_text())
    assert sweep["metric"] == "recall@1" and sweep["validation_fraction"] == 0.3
    configs = demo_configs()
    for guidance in ("elg", "plg"):
        rows = [row for row in sweep["rows"] if row["point"]["language.guidance"] == guidance]
        assert sorted(row["point"]["loss.language_weight"] for row in rows) == [1, 2.5, 5, 7.5, 10]
        assert all(len(row["values"]) == 3 and None not in row["values"] for row in rows)  # 3 seeds each
        best = max(rows, key=lambda row: row["mean"])
        assert VARIANTS[guidance]["loss"]["language_weight"] == best["point"]["loss.language_weight"]
        assert configs[guidance].loss.language_weight == best["point"]["loss.language_weight"]
        assert configs[guidance].language.guidance == guidance
    assert configs["baseline"].loss.language_weight == 0 and configs["baseline"].language.guidance == "none"
    # The sweep's selection runs held out validation classes; the demo trains on every training class.
    assert all(
        config.data.validation_fraction == 0 and config.evaluation.split == "test" for config in configs.values()
    )


def test_the_shipped_sweep_numbers_equal_docs_results_demo_sweep_json():
    """The package's copy (DEMO_SWEEP, installed with tf_langdml) is the demo's rows of docs/results, value for value."""
    shipped, docs = read_demo_sweep(), json.loads(SWEEP_RESULTS.read_text())
    assert DEMO_SWEEP.parent.name == "demo_emoji"  # setup.cfg ships demo_emoji/*.json with the package
    assert (shipped["metric"], shipped["validation_fraction"]) == (docs["metric"], docs["validation_fraction"])
    assert list(shipped["rows"]) == list(VARIANTS) and shipped["final"] == docs["final"]
    for variant, row in shipped["rows"].items():
        weight = 0 if variant == "baseline" else VARIANTS[variant]["loss"]["language_weight"]
        guidance = VARIANTS[variant]["language"]["guidance"]
        assert row["point"] == {"loss.language_weight": weight, "language.guidance": guidance}
        assert row in docs["rows"]  # the whole row: values, seeds, mean, std, paired difference, run names


# A sweep file of the shipped layout with numbers chosen so every printed digit can be checked by hand.
HAND_SWEEP = {
    "metric": "recall@1",
    "validation_fraction": 0.3,
    "rows": {
        "baseline": {
            "point": {"loss.language_weight": 0, "language.guidance": "none"},
            "mean": 0.6,
            "std": 0.1,
            "values": [0.5, 0.6, 0.7],
            "seeds": [0, 1, 2],
            "paired_difference": None,
        },
        "elg": {
            "point": {"loss.language_weight": 2.5, "language.guidance": "elg"},
            "paired_difference": {"mean": 0.0125, "std": 0.25, "seeds": [0, 1, 2]},
        },
        "plg": {
            "point": {"loss.language_weight": 5, "language.guidance": "plg"},
            "paired_difference": {"mean": -0.05, "std": 0.03, "seeds": [0, 1, 2]},
        },
    },
    "final": [
        {
            "point": {"loss.language_weight": 5, "language.guidance": "plg"},
            "label": "language_weight=5 guidance=plg",
            "mean": 0.55,
            "std": 0.02,
            "seeds": [0, 1, 2],
        }
    ],
}


def test_the_chosen_with_lines_print_the_sweeps_paired_differences_and_the_baselines_seed_spread():
    lines = chosen_with_lines(HAND_SWEEP)
    assert lines[0] == (
        "One seed is not a comparison. The demo's ω were chosen by a sweep over seeds 0, 1, 2 on "
        "validation classes (30% of the training classes); its paired recall@1 difference to the "
        "baseline, seed by seed (docs/choosing.md):"
    )
    assert lines[1:] == [
        "  elg (ω = 2.5): +0.0125 ± 0.2500",
        "  plg (ω = 5): -0.0500 ± 0.0300",
        "One run can move recall@1 by several points: in that sweep the baseline alone had a seed std of 0.1000 "
        "(0.5000 to 0.7000 over seeds 0, 1, 2).",
        "Its test runs of plg (ω = 5): recall@1 0.5500 ± 0.0200 over seeds 0, 1, 2.",
        "Compare the variants on this machine: tf-langdml demo --seeds 0,1,2 (three runs per variant).",
    ]
    # Under a several-seed table the lines are the same, without "not a comparison" and the advice.
    several = chosen_with_lines(HAND_SWEEP, one_seed=False)
    assert several[0].startswith("The demo's ω were chosen") and several[1:] == lines[1:-1]
    # The shipped file: the demo's numbers as docs/results has them, to the printed 4 decimals.
    docs = {
        (row["point"]["language.guidance"], row["point"]["loss.language_weight"]): row
        for row in json.loads(SWEEP_RESULTS.read_text())["rows"]
    }
    shipped = "\n".join(chosen_with_lines())
    for guidance, weight in (("elg", 2.5), ("plg", 5)):
        difference = docs[guidance, weight]["paired_difference"]
        assert f"{guidance} (ω = {weight:g}): {difference['mean']:+.4f} ± {difference['std']:.4f}" in shipped
    assert f"seed std of {docs['none', 0]['std']:.4f}" in shipped


# Synthetic test R@1 per (variant, seed); the expected numbers below are worked out by hand.
SYNTHETIC = {
    ("baseline", 0): 0.5,
    ("baseline", 1): 0.6,
    ("baseline", 2): 0.7,
    ("elg", 0): 0.55,
    ("elg", 1): 0.6,
    ("elg", 2): 0.8,
    ("plg", 0): 0.5,
    ("plg", 1): 0.5,
    ("plg", 2): 0.5,
}
# mean, sample std over 3 seeds; paired: variant - baseline per seed, then mean and sample std.
#   baseline 0.6 ± sqrt((0.01 + 0 + 0.01) / 2) = 0.1
#   elg      0.65 ± sqrt((0.01 + 0.0025 + 0.0225) / 2) = sqrt(0.0175) = 0.13229; Δ = 0.05, 0, 0.1: 0.05 ± 0.05
#   plg      0.5 ± 0;                                                    Δ = 0, -0.1, -0.2: -0.1 ± 0.1
EXPECTED_ROWS = {
    "baseline": ["0.6000", "±", "0.1000", "0.5000", "/", "0.6000", "/", "0.7000"],
    "elg": ["0.6500", "±", "0.1323", "0.5500", "/", "0.6000", "/", "0.8000", "+0.0500", "±", "0.0500"],
    "plg": ["0.5000", "±", "0.0000", "0.5000", "/", "0.5000", "/", "0.5000", "-0.1000", "±", "0.1000"],
}


def test_seed_rows_mean_std_and_paired_difference_by_hand():
    results = {variant: [{"recall@1": SYNTHETIC[variant, seed]} for seed in (0, 1, 2)] for variant in VARIANTS}
    rows = {row["variant"]: row for row in seed_rows(results, [0, 1, 2])}
    # float64 sums and differences of three numbers below 1: each result is within a few 1e-16 of the exact value.
    tolerance = 1e-12
    expected = {"baseline": (0.6, 0.1, None), "elg": (0.65, 0.0175**0.5, (0.05, 0.05)), "plg": (0.5, 0.0, (-0.1, 0.1))}
    for variant, (mean, std, paired) in expected.items():
        assert rows[variant]["mean"] == pytest.approx(mean, abs=tolerance)
        assert rows[variant]["std"] == pytest.approx(std, abs=tolerance)
        difference = rows[variant]["paired_difference"]
        if paired is None:
            assert difference is None
        else:
            assert (difference["mean"], difference["std"]) == pytest.approx(paired, abs=tolerance)
            assert difference["seeds"] == [0, 1, 2]
    table = seeds_table(list(rows.values())).splitlines()
    assert table[0].split() == ["variant", "R@1", "mean", "±", "std", "per", "seed", "paired", "Δ", "vs", "baseline"]
    assert {line.split()[0]: line.split()[1:] for line in table[2:]} == EXPECTED_ROWS


@pytest.fixture
def fake_train(monkeypatch):
    """train() replaced by a function returning SYNTHETIC's R@1 for the config's variant and seed; records the calls."""
    calls = []

    def train(config, verbose=1):
        variant = {"none": "baseline"}.get(config.language.guidance, config.language.guidance)
        calls.append((config.name, variant, config.training.seed, config.loss.language_weight, config.runs_dir))
        return {"recall@1": SYNTHETIC[variant, config.training.seed], "map@r": 0.25}

    monkeypatch.setattr(train_module, "train", train)
    return calls


DURATION = r"(?:\d+ h \d\d min|\d+ min \d\d s|\d+ s)"  # format_duration's three forms
PROGRESS_LINE = re.compile(
    rf"tf_langdml: run (\d+)/(\d+) \((\w+) seed=(\d+)\): {DURATION} elapsed, "
    rf"(no estimate yet|about {DURATION} left)"
)


def test_demo_over_three_seeds_names_runs_per_seed_shows_progress_and_prints_mean_std_and_paired_difference(
    tmp_path, capsys, fake_train
):
    # A finished seed-0 baseline (the one-seed demo's run): read back, so it does not count as trained.
    (tmp_path / "demo_baseline").mkdir()
    (tmp_path / "demo_baseline" / "metrics.json").write_text("{}")
    results = run_demo(runs_dir=tmp_path, seeds=[0, 1, 2])
    names = [call[0] for call in fake_train]
    assert names == [
        "demo_baseline",
        "demo_elg",
        "demo_plg",
        "demo_baseline_seed-1",
        "demo_elg_seed-1",
        "demo_plg_seed-1",
        "demo_baseline_seed-2",
        "demo_elg_seed-2",
        "demo_plg_seed-2",
    ]
    assert [call[2] for call in fake_train] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [call[3] for call in fake_train[:3]] == [0.0, 2.5, 5.0] and {call[4] for call in fake_train} == {
        str(tmp_path)
    }
    assert results == {
        variant: [{"recall@1": SYNTHETIC[variant, seed], "map@r": 0.25} for seed in (0, 1, 2)] for variant in VARIANTS
    }
    captured = capsys.readouterr()
    progress = [PROGRESS_LINE.fullmatch(line) for line in captured.err.splitlines() if "tf_langdml: run " in line]
    assert all(progress) and [match.groups()[:4] for match in progress] == [
        (str(i + 1), "9", variant, str(seed))
        for i, (seed, variant) in enumerate((seed, variant) for seed in (0, 1, 2) for variant in VARIANTS)
    ]
    # No estimate before a run has trained (run 1 is read back; run 2 is the first that trains).
    assert [match.group(5) == "no estimate yet" for match in progress] == [True, True] + [False] * 7
    out = captured.out.splitlines()
    header = next(index for index, line in enumerate(out) if line.startswith("Unseen emoji classes"))
    assert re.fullmatch(
        rf"Unseen emoji classes \(test split\), R@1 over seeds 0, 1, 2 on this machine "
        rf"\({DURATION} for 9 runs, 8 trained now\):",
        out[header],
    )
    assert {line.split()[0]: line.split()[1:] for line in out[header + 3 : header + 6]} == EXPECTED_ROWS
    assert out[header + 7 : header + 7 + len(chosen_with_lines(one_seed=False))] == chosen_with_lines(one_seed=False)
    saved = json.loads((tmp_path / "demo_seeds-0-1-2_results.json").read_text())
    assert saved["seeds"] == [0, 1, 2] and saved["runs"] == results
    assert [row["variant"] for row in saved["rows"]] == list(VARIANTS)
    assert saved["rows"][2]["paired_difference"]["mean"] == pytest.approx(-0.1, abs=1e-12)  # see EXPECTED_ROWS


def test_one_seed_demo_keeps_its_run_names_and_prints_the_chosen_with_lines_under_its_table(
    tmp_path, capsys, fake_train
):
    results = run_demo(runs_dir=tmp_path)
    assert [call[:3] for call in fake_train] == [
        ("demo_baseline", "baseline", 0),
        ("demo_elg", "elg", 0),
        ("demo_plg", "plg", 0),
    ]
    assert results == {variant: {"recall@1": SYNTHETIC[variant, 0], "map@r": 0.25} for variant in VARIANTS}
    out = capsys.readouterr().out.splitlines()
    table = out.index("Unseen emoji classes (test split), 1-NN retrieval across the two designs, seed 0:")
    assert [line.split()[:3] for line in out[table + 3 : table + 6]] == [
        ["baseline", "0.5000", "0.2500"],
        ["elg", "0.5500", "0.2500"],
        ["plg", "0.5000", "0.2500"],
    ]
    lines = chosen_with_lines()
    assert out[table + 7 : table + 7 + len(lines)] == lines and out[table + 7 + len(lines)].startswith("TensorBoard:")
    assert json.loads((tmp_path / "demo_results.json").read_text()) == results
    # Another single seed: its own run names and summary file, so seed 0's are kept.
    assert run_demo(runs_dir=tmp_path, seeds=[1]) == {
        variant: {"recall@1": SYNTHETIC[variant, 1], "map@r": 0.25} for variant in VARIANTS
    }
    assert [call[0] for call in fake_train[3:]] == ["demo_baseline_seed-1", "demo_elg_seed-1", "demo_plg_seed-1"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo_results.json", "demo_seed-1_results.json"]


def test_demo_seeds_flag_through_the_command_line(tmp_path, capsys, fake_train, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")  # main() sets it; restored after the test
    code = main(["demo", "--seeds", "2,0", "--runs-dir", str(tmp_path), "--set", "training.epochs=1"])
    assert code == 0
    assert [call[:3] for call in fake_train] == [
        ("demo_baseline_seed-2", "baseline", 2),
        ("demo_elg_seed-2", "elg", 2),
        ("demo_plg_seed-2", "plg", 2),
        ("demo_baseline", "baseline", 0),
        ("demo_elg", "elg", 0),
        ("demo_plg", "plg", 0),
    ]
    assert "R@1 over seeds 2, 0 on this machine" in capsys.readouterr().out
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo_seeds-2-0_results.json"]  # (train is faked)


@pytest.mark.parametrize(
    "seeds, message",
    [
        ("0,x", "tf-langdml demo: --seeds takes comma-separated integers (for example 0,1,2); got '0,x'."),
        ("1,1", "tf-langdml demo: --seeds lists a seed twice: '1,1'."),
    ],
)
def test_a_bad_seeds_value_is_one_line_and_exit_2_before_tensorflow(tmp_path, seeds, message):
    script = (
        "import sys; from tf_langdml.cli import main; code = main(sys.argv[1:]); "
        "assert 'tensorflow' not in sys.modules; sys.exit(code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "demo", "--seeds", seeds, "--runs-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (result.returncode, result.stderr.strip(), result.stdout) == (2, message, "")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_demo_over_two_seeds_on_a_reduced_budget(tmp_path, capsys, minilm_encoder):
    """A real 2-seed demo (6 runs; 5 min 38 s on a busy 2-core machine).

    Seed 0 reuses the one-seed runs; the printed means are the runs' own R@1.
    """
    overrides = [
        "training.epochs=1",
        "training.steps_per_epoch=2",
        "training.eval_every=1",
        "data.image_size=32",
        "language.classifier_image_size=64",
        "evaluation.clustering=false",
    ]
    one_seed = run_demo(overrides=overrides, runs_dir=tmp_path, verbose=0)
    capsys.readouterr()
    results = run_demo(overrides=overrides, runs_dir=tmp_path, verbose=0, seeds=[0, 1])
    captured = capsys.readouterr()
    assert {variant: per_seed[0] for variant, per_seed in results.items()} == one_seed  # seed 0 read back
    progress = [PROGRESS_LINE.fullmatch(line) for line in captured.err.splitlines() if "tf_langdml: run " in line]
    assert all(progress) and len(progress) == 6
    assert re.search(rf"on this machine \({DURATION} for 6 runs, 3 trained now\):", captured.out)
    for variant in VARIANTS:
        for seed, name in ((0, f"demo_{variant}"), (1, f"demo_{variant}_seed-1")):
            saved = json.loads((tmp_path / name / "metrics.json").read_text())
            assert saved == results[variant][seed]
            assert json.loads(json.dumps(saved))["recall@1"] == results[variant][seed]["recall@1"]
        (config_seed,) = {
            line
            for line in (tmp_path / f"demo_{variant}_seed-1" / "config.yaml").read_text().splitlines()
            if line.strip().startswith("seed:")
        }
        assert config_seed.split() == ["seed:", "1"]
    # The printed means are the runs' R@1 (two seeds: mean = (a + b) / 2, sample std = |a - b| / sqrt(2)).
    rows = {
        line.split()[0]: line.split()[1:]
        for line in captured.out.splitlines()
        if re.match(r"(baseline|elg|plg) +\d", line)
    }
    for variant in VARIANTS:
        a, b = (results[variant][seed]["recall@1"] for seed in (0, 1))
        assert rows[variant][:3] == [f"{(a + b) / 2:.4f}", "±", f"{abs(a - b) / 2**0.5:.4f}"]


@pytest.mark.slow
def test_the_full_demo_finishes_within_15_minutes(tmp_path):
    start = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "tf_langdml", "demo", "--runs-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=quiet_env(),
    )
    elapsed = time.time() - start
    assert result.returncode == 0, result.stderr[-3000:]
    print(result.stdout)
    assert elapsed <= 15 * 60, f"the demo took {elapsed / 60:.1f} minutes"


@pytest.mark.slow  # three training subprocesses, 93 s on a busy 2-core machine
def test_deterministic_runs_are_identical_on_one_instruction_set_and_differ_on_another(tmp_path):
    """What the README may claim: training.deterministic gives the same bits on the same CPU type, not across types.

    Another CPU type is stood in for by capping oneDNN (which TensorFlow's matmul and
    convolution kernels call, whatever TF_ENABLE_ONEDNN_OPTS says) to SSE4.1: the
    kernels it picks at run time for the CPU's instruction set are the difference
    between an AVX2 and an AVX-512 machine.
    """
    import numpy as np

    write_colour_folder(tmp_path / "images", size=20, noise=40)
    weights = {}
    for label, isa in (("first", None), ("second", None), ("sse41", "SSE41")):
        overrides = deterministic_run_overrides(tmp_path / "images", tmp_path / label)
        env = quiet_env(ONEDNN_MAX_CPU_ISA=isa) if isa else quiet_env(drop=["ONEDNN_MAX_CPU_ISA"])
        result = subprocess.run(
            [sys.executable, "-m", "tf_langdml", "train", "--quiet", "--yes"] + [f"--set={item}" for item in overrides],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        weights[label] = h5_arrays(tmp_path / label / "run" / "embedder.weights.h5")
    names = sorted(weights["first"])
    assert len(names) > 2
    assert all(np.array_equal(weights["first"][name], weights["second"][name]) for name in names)
    assert not all(np.array_equal(weights["first"][name], weights["sse41"][name]) for name in names)
