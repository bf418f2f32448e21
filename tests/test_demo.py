"""The offline demo: its code path on a reduced budget; the full demo is a slow test."""

import os
import re
import subprocess
import sys
import time

import pytest

from tf_langdml.demo import results_table, run_demo


def test_demo_code_path_on_a_reduced_budget(tmp_path, capsys, minilm_encoder):
    overrides = ["training.epochs=1", "training.steps_per_epoch=2", "training.eval_every=1", "data.image_size=32",
                 "language.classifier_image_size=64", "evaluation.clustering=false"]
    results = run_demo(overrides=overrides, runs_dir=tmp_path, verbose=0)
    assert list(results) == ["baseline", "elg", "plg"]
    for variant, metrics in results.items():
        assert metrics["optimizer_steps"] == 2 and 0.0 <= metrics["recall@1"] <= 1.0
        assert (tmp_path / f"demo_{variant}" / "metrics.json").exists()
    assert (tmp_path / "demo_plg" / "pseudo_labels.json").exists()
    output = capsys.readouterr().out
    assert "R@1" in output and "mAP@R" in output and "NMI" in output and "tensorboard --logdir" in output
    assert re.search(r"^baseline\s+[0-9.]+", output, flags=re.M)


def test_results_table_has_one_row_per_variant():
    table = results_table({"baseline": {"recall@1": 0.5, "map@r": 0.25, "nmi": 0.75},
                           "elg": {"recall@1": 0.6, "map@r": 0.3, "nmi": 0.8}})
    lines = table.splitlines()
    assert len(lines) == 4 and lines[2].startswith("baseline") and "0.5000" in lines[2] and "nan" in lines[2]


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
