"""Choosing hyper-parameters on validation classes: a grid of runs, mean ± std over seeds, the best point.

``tf-langdml sweep --config C --grid KEY=V1,V2 [--grid ...] --seeds 0,1,2 [--final]``
(or :func:`run_sweep`; the plan, checked without TensorFlow, is :mod:`~tf_langdml.runs.sweep_grid`,
the statistics :mod:`~tf_langdml.runs.sweep_table`). Every grid point (the Cartesian product of the ``--grid``
lists) is trained once per seed as an ordinary run directory under
``<runs_dir>/<name>_sweep/``:

- selection runs train on the training classes minus the validation classes
  (``data.validation_fraction``; ``DEFAULT_VALIDATION_FRACTION`` when the config
  has none) and are scored on the validation classes only (``evaluation.split:
  validation``): their dataset has no test split at all;
- the table (``sweep.csv``, ``sweep.json``, printed) gives per point the mean ± sample
  standard deviation over seeds of ``metric`` (validation R@1 by default) and names the
  best point (highest mean);
- when the grid holds ω = 0, every other row also gets its paired difference to that
  baseline: per seed, the point's value minus the baseline's value *of the same seed*,
  then mean ± std of those differences. Seeds move all points together (a seed with a
  hard split or an unlucky initialisation lowers every point), so the paired spread is
  the one that says whether a point beats the baseline;
- ``final=True`` retrains the best point (``final="all"``: every point) on the full
  training split and scores it on the test classes: the only runs of a sweep that
  read the test split.

A point with ``loss.language_weight`` 0 is the baseline whatever ``language.guidance``
says: it runs with ``language.guidance: none``, once, and is one row of the table.
Runs are ordinary resumable run directories, so a killed sweep restarted with the same
command retrains nothing that finished and resumes the run it was in. Nothing is written
before the first run has loaded its data (a sweep that fails on its config or data leaves
no folder), and each run is locked while it trains, so a second sweep of the same name
is refused at the run the first one is training. Before each run a line on stderr
says ``run i/N (language_weight=2.5 seed=0): <elapsed> elapsed, about <estimate> left``
(:class:`~tf_langdml.runs.progress.RunProgress`; runs a resumed sweep finds complete
count as done but not in the estimate). Each finished
run also gets ``logs/hparams/`` (TensorBoard's HParams dashboard: ``tensorboard
--logdir <runs_dir>/<name>_sweep``).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import pathlib
import shutil
import time
from collections.abc import Sequence

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

from tf_langdml.cache import atomic_file, write_json
from tf_langdml.runs.progress import RunProgress
from tf_langdml.runs.run_dir import read_metrics
from tf_langdml.runs.schema import ConfigError, ExperimentConfig, config_from_dict, did_you_mean
from tf_langdml.runs.sweep_grid import effective_point, point_label, run_config, validation_fraction_of, with_point
from tf_langdml.runs.sweep_table import (
    DIAGNOSTIC_COLUMNS,
    SweepResult,
    diagnostic_summary,
    mean_std,
    paired_differences,
    point_key,
)
from tf_langdml.runs.train import train

SWEEP_FILES = ("sweep.csv", "sweep.json")


def _hparam_value(value: object) -> bool | str | float:
    """A value TensorBoard's HParams accepts, the same type for every value of a key (numbers as floats)."""
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return json.dumps(value)


def _write_events_once(target, write):
    """A TensorBoard event folder ``target`` holding what ``write()`` logs, written once and whole.

    Written into ``<target>.partial`` and renamed, so a kill leaves no half-written
    folder; an existing ``target`` is kept (a resumed sweep writes nothing twice).
    """
    target = pathlib.Path(target)
    if target.exists():
        return
    temporary = target.with_name(target.name + ".partial")
    shutil.rmtree(temporary, ignore_errors=True)
    writer = tf.summary.create_file_writer(str(temporary))
    with writer.as_default():
        write()
    writer.close()
    temporary.rename(target)


def _write_hparams(folder, point, metrics, metric):
    """``<run>/logs/hparams/``: the point's values and its metric for TensorBoard's HParams dashboard."""

    def write():
        hp.hparams({key: _hparam_value(value) for key, value in point.items()})
        value = metrics.get(metric)
        tf.summary.scalar(f"sweep/{metric}", float("nan") if value is None else float(value), step=0)

    _write_events_once(pathlib.Path(folder) / "logs" / "hparams", write)


def _write_hparams_config(sweep_dir, grid, metric):
    """``<sweep>/hparams_config/``: the grid's keys and values and the metric, for the HParams dashboard."""
    hparams = [
        hp.HParam(key, hp.Discrete(sorted({_hparam_value(value) for value in values}, key=str)))
        for key, values in grid.items()
    ]
    metrics = [hp.Metric(f"sweep/{metric}", display_name=f"validation {metric}")]
    _write_events_once(
        pathlib.Path(sweep_dir) / "hparams_config", lambda: hp.hparams_config(hparams=hparams, metrics=metrics)
    )


def run_label(config: ExperimentConfig, effective: dict) -> str:
    """``language_weight=2.5 guidance=elg seed=0`` (``final ...`` for a final run): a run of the sweep, as printed."""
    final = "final " if config.evaluation.split != "validation" else ""
    return f"{final}{point_label(effective)} seed={config.training.seed}"


def _train_all(runs, metric, verbose, after_each=None, progress=None):
    """Train (or read back) every ``(config, effective point)``; a finished selection run gets its HParams entry.

    ``after_each()`` runs after each run returns (the sweep's own files are written only
    once a run got past its config and data checks). ``progress``: a
    :class:`~tf_langdml.runs.progress.RunProgress` that prints ``run i/N (label): ...``
    before each run (with ``verbose``); a run that was already complete counts as done,
    not trained, so it does not shorten the estimate.
    """
    results = []
    for config, effective in runs:
        complete = read_metrics(pathlib.Path(config.runs_dir) / config.name) is not None
        if progress is not None:
            progress.start(run_label(config, effective))
        results.append(train(config, verbose=1 if verbose > 1 else 0))
        if after_each is not None:
            after_each()
        if metric not in results[-1]:  # after the first run, not after the whole sweep
            numeric = [name for name, value in results[-1].items() if isinstance(value, (int, float))]
            raise ConfigError(f"--metric {metric!r} is not among the runs' metrics{did_you_mean(metric, numeric)}")
        if config.evaluation.split == "validation":
            _write_hparams(pathlib.Path(config.runs_dir) / config.name, effective, results[-1], metric)
        if progress is not None:  # the run's own files count in its time: the estimate covers all of it
            progress.finish(trained=not complete)
    return results


def _distinct(base_values, points):
    """``[(point, effective point)]`` without repeats: every ω = 0 point is one baseline."""
    distinct, seen = [], set()
    for point in points:
        effective = effective_point(base_values, point)
        key = point_key(effective)
        if key not in seen:
            seen.add(key)
            distinct.append((point, effective))
    return distinct


def _rows(
    base_values, points, seeds, sweep_dir, metric, final, validation_fraction, verbose, after_each=None, progress=None
):
    distinct = _distinct(base_values, points)
    # Seed-major order: every point's first seed before any point's second, so a sweep
    # stopped early still has the whole curve (with fewer seeds).
    configs = {
        (index, seed): run_config(base_values, point, seed, sweep_dir, final, validation_fraction)
        for seed in seeds
        for index, (point, _) in enumerate(distinct)
    }
    runs = [(config, distinct[index][1]) for (index, _), config in configs.items()]
    results = dict(zip(configs, _train_all(runs, metric, verbose, after_each, progress)))
    rows = []
    for index, (_point, effective) in enumerate(distinct):
        point_results = [results[index, seed] for seed in seeds]
        point_configs = [configs[index, seed] for seed in seeds]
        rows.append(_row(effective, point_configs, point_results, seeds, metric))
    return rows


def _row(effective, configs, results, seeds, metric):
    values = [result.get(metric) for result in results]
    mean, std = mean_std(values)
    return {
        "point": effective,
        "label": point_label(effective),
        "mean": mean,
        "std": std,
        "values": values,
        "seeds": list(seeds),
        "runs": [config.name for config in configs],
        "diagnostics": diagnostic_summary(results),
    }


def run_sweep(
    base_values: dict,
    grid: dict[str, list],
    seeds: Sequence[int] = (0,),
    metric: str = "recall@1",
    final: bool | str = False,
    validation_fraction: float | None = None,
    verbose: int = 1,
) -> SweepResult:
    """Run (or resume) the sweep of ``grid`` over ``seeds`` on the config ``base_values`` (nested dicts).

    Args:
        base_values: the base config as nested dicts (a YAML file's contents with any
            ``--set`` overrides applied).
        grid: ``{key: [values]}`` (:func:`parse_grid`).
        seeds: the training seeds of every point.
        metric: the selection criterion, a key of ``metrics.json`` (higher is better).
        final: False; True: retrain the best point on the full training split and score
            it on the test classes; "all": every point.
        validation_fraction: the share of training classes held out (default: the
            config's ``data.validation_fraction``, else ``DEFAULT_VALIDATION_FRACTION``).

    Returns:
        :class:`SweepResult`; also written to ``sweep.csv`` and ``sweep.json``.
    """
    if final not in (False, True, "all"):
        raise ConfigError(f"final must be False, True (the best point) or 'all'; got {final!r}.")
    started = time.time()
    base = config_from_dict(with_point(base_values, {}))  # the base must be a valid config
    sweep_dir = pathlib.Path(base.runs_dir) / f"{base.name}_sweep"  # created by its first run (train)
    keys = list(grid)
    points = [dict(zip(keys, combination)) for combination in itertools.product(*(grid[key] for key in keys))]
    for point in points:  # every config is checked before the first run starts
        for seed in seeds:
            run_config(base_values, point, seed, sweep_dir, False, validation_fraction)
    progress = None
    if verbose:
        selection_runs = len(_distinct(base_values, points)) * len(seeds)
        final_runs = {False: 0, True: len(seeds), "all": selection_runs}[final]
        progress = RunProgress(selection_runs + final_runs)
    # Written once the first run has passed its data checks and created the folder (idempotent afterwards).
    rows = _rows(
        base_values,
        points,
        seeds,
        sweep_dir,
        metric,
        False,
        validation_fraction,
        verbose,
        after_each=lambda: _write_hparams_config(sweep_dir, grid, metric),
        progress=progress,
    )
    for row, difference in zip(rows, paired_differences(rows)):
        row["paired_difference"] = difference
    best = max(rows, key=lambda row: -math.inf if math.isnan(row["mean"]) else row["mean"])
    final_rows = []
    if final:
        chosen = [best["point"]] if final is True else [row["point"] for row in rows]
        final_rows = _rows(
            base_values, chosen, seeds, sweep_dir, metric, True, validation_fraction, verbose, progress=progress
        )
    result = SweepResult(metric, rows, best, final_rows, sweep_dir, time.time() - started)
    _write_results(result, base_values, validation_fraction)
    return result


def _csv_number(value):
    return "" if value is None or math.isnan(value) else f"{value:.6f}"


def _write_results(result, base_values, validation_fraction):
    fraction = validation_fraction_of(base_values, validation_fraction)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "point",
            f"validation_{result.metric}_mean",
            f"validation_{result.metric}_std",
            "seeds",
            f"validation_{result.metric}_per_seed",
            "paired_difference_vs_baseline_mean",
            "paired_difference_vs_baseline_std",
            f"test_{result.metric}_mean",
            f"test_{result.metric}_std",
            "best",
            *(f"validation_{name}_{part}" for name in DIAGNOSTIC_COLUMNS for part in ("mean", "std")),
        ]
    )
    for row in result.rows:
        final = result.final_row(row)
        difference = row.get("paired_difference")
        writer.writerow(
            [
                row["label"],
                f"{row['mean']:.6f}",
                f"{row['std']:.6f}",
                " ".join(map(str, row["seeds"])),
                " ".join(f"{value:.6f}" for value in row["values"]),
                *((f"{difference['mean']:.6f}", f"{difference['std']:.6f}") if difference else ("", "")),
                f"{final['mean']:.6f}" if final else "",
                f"{final['std']:.6f}" if final else "",
                int(row is result.best),
                *(
                    _csv_number(row["diagnostics"][name][part])
                    for name in DIAGNOSTIC_COLUMNS
                    for part in ("mean", "std")
                ),
            ]
        )
    with atomic_file(result.folder / "sweep.csv") as temporary:
        temporary.write_text(buffer.getvalue(), encoding="utf-8")
    write_json(
        result.folder / "sweep.json",
        {
            "metric": result.metric,
            "validation_fraction": fraction,
            "rows": result.rows,
            "best": result.best,
            "final": result.final_rows,
            "wall_seconds": result.wall_seconds,
        },
    )
