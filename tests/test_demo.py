"""The offline demo: its code path on a reduced budget; the full demo is a slow test."""

import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

from tf_langdml.cache import json_safe
from tf_langdml.demo import COLUMNS, VARIANTS, demo_configs, results_table, run_demo
from tf_langdml.runs.train import RUN_INFO_KEYS, evaluate


def test_demo_code_path_on_a_reduced_budget(tmp_path, capsys, minilm_encoder):
    overrides = ["training.epochs=1", "training.steps_per_epoch=2", "training.eval_every=1", "data.image_size=32",
                 "language.classifier_image_size=64", "evaluation.clustering=false"]
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
    table = results_table({"baseline": {"recall@1": 0.5, "map@r": 0.25, "nmi": 0.75},
                           "elg": {"recall@1": 0.6, "map@r": 0.3, "nmi": 0.8}})
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
    assert all(config.data.validation_fraction == 0 and config.evaluation.split == "test"
               for config in configs.values())


@pytest.mark.slow
def test_the_full_demo_finishes_within_15_minutes(tmp_path):
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "tf_langdml", "demo", "--runs-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=1800,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    elapsed = time.time() - start
    assert result.returncode == 0, result.stderr[-3000:]
    print(result.stdout)
    assert elapsed <= 15 * 60, f"the demo took {elapsed / 60:.1f} minutes"
