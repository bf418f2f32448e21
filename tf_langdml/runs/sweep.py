"""Choosing hyper-parameters on validation classes: a grid of runs, mean ± std over seeds, the best point.

``tf-langdml sweep --config C --grid KEY=V1,V2 [--grid ...] --seeds 0,1,2 [--final]``
(or :func:`run_sweep`). Every grid point (the Cartesian product of the ``--grid``
lists) is trained once per seed as an ordinary run directory under
``<runs_dir>/<name>_sweep/``:

- selection runs train on the training classes minus the validation classes
  (``data.validation_fraction``; :data:`DEFAULT_VALIDATION_FRACTION` when the config
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

import copy
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import pathlib
import time

from tf_langdml.runs.schema import (NAME_MAX, ConfigError, apply_overrides, config_from_dict, config_to_dict,
                                    did_you_mean, load_yaml, read_yaml, set_key)

DEFAULT_VALIDATION_FRACTION = 0.3
SWEEP_FILES = ("sweep.csv", "sweep.json")
_SELECTION_KEYS = ("data.validation_fraction", "evaluation.split", "training.seed", "name", "runs_dir")


def _flat_keys(values, prefix=""):
    keys = []
    for key, value in values.items():
        if isinstance(value, dict) and key != "dml_arguments":
            keys += _flat_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def parse_grid(grid_arguments, base_values):
    """``["loss.language_weight=0,2.5", ...]`` -> ``{key: [values]}`` (values parsed as YAML scalars), in order.

    Every key must be a config key (``ConfigError`` with "did you mean"), every value
    must be valid for it (checked by building the config), and the keys the sweep sets
    itself (the seed, the validation split, the run's name) are refused.
    """
    from tf_langdml.runs.schema import ExperimentConfig

    known = _flat_keys(config_to_dict(ExperimentConfig()))
    grid = {}
    for argument in grid_arguments or ():
        if "=" not in argument:
            raise ConfigError(f"--grid takes KEY=V1,V2,... (for example loss.language_weight=0,2.5,5); got {argument!r}.")
        key, raw = (part.strip() for part in argument.split("=", 1))
        if key not in known and not key.startswith("loss.dml_arguments."):
            raise ConfigError(f"--grid: unknown config key {key!r}{did_you_mean(key, known)}")
        if key in _SELECTION_KEYS:
            hint = "use --seeds" if key == "training.seed" else "the sweep sets it"
            raise ConfigError(f"--grid: {key!r} cannot be swept ({hint}).")
        if key in grid:
            raise ConfigError(f"--grid: {key!r} is given twice; put all its values in one --grid {key}=V1,V2.")
        texts = [text.strip() for text in raw.split(",")]
        if not raw.strip() or not all(texts):
            raise ConfigError(f"--grid {key}: empty value in {raw!r}; give comma-separated values, e.g. {key}=1,2.")
        values = []
        for text in texts:
            value = load_yaml(text, f"--grid {key}", key)  # the config loader: YAML 1.2 floats, no aliases or tags
            try:
                config_from_dict(_with_point(base_values, {key: value}, check_guidance=False))
            except ConfigError as error:
                raise ConfigError(f"--grid {key}={text}: {error}") from error
            if value in values:
                raise ConfigError(f"--grid {key}: {text!r} is listed twice.")
            values.append(value)
        grid[key] = values
    if not grid:
        raise ConfigError("A sweep needs at least one --grid KEY=V1,V2,... (for example loss.language_weight=0,2.5,5).")
    return grid


def parse_seeds(text):
    """``"0,1,2"`` -> ``[0, 1, 2]`` (distinct integers)."""
    try:
        seeds = [int(part) for part in str(text).split(",")]
    except ValueError as error:
        raise ConfigError(f"--seeds takes comma-separated integers (for example 0,1,2); got {text!r}.") from error
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice: {text!r}.")
    return seeds


def _set(values, key, value):
    set_key(values, key, value, what="--grid")


def _with_point(base_values, point, check_guidance=True):
    """The base config's nested dicts with the point's values set; ω = 0 means guidance none."""
    values = copy.deepcopy(base_values)
    for key, value in point.items():
        _set(values, key, value)
    weight = values.get("loss", {}).get("language_weight", 0.0)
    if weight == 0:
        _set(values, "language.guidance", "none")
    elif not check_guidance and values.get("language", {}).get("guidance", "none") == "none":
        _set(values, "language.guidance", "elg")  # only to check a value of ω on its own
    return values


def effective_point(base_values, point):
    """The point as it runs: ω = 0 turns ``language.guidance`` to none (the baseline)."""
    values = _with_point(base_values, point)
    effective = {}
    for key in point:
        target = values
        for part in key.split("."):
            target = target[part]
        effective[key] = target
    return effective


def point_label(point):
    """``language_weight=2.5 guidance=elg``: the point's last key parts and values."""
    return " ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in point.items())


def _slug(point):
    parts = []
    for key, value in point.items():
        text = json.dumps(value) if not isinstance(value, str) else value
        parts.append(f"{key.rsplit('.', 1)[-1]}-{text}".replace("/", "_").replace("\\", "_").replace(" ", ""))
    return "__".join(parts)


def run_name(point, seed, final=False):
    """``select__<point>__seed-<seed>`` (``final__`` for final runs), at most NAME_MAX characters.

    A point whose slug would make the name longer keeps the slug's start and appends
    8 hex digits of its SHA-256, so long grids still give distinct, stable names.
    """
    prefix, suffix, slug = "final" if final else "select", f"__seed-{seed}", _slug(point)
    name = f"{prefix}__{slug}{suffix}"
    if len(name) > NAME_MAX:
        digest = hashlib.sha256(slug.encode("utf-8")).hexdigest()[:8]
        slug = f"{slug[:NAME_MAX - len(prefix) - len(suffix) - 2 - 9]}-{digest}"
        name = f"{prefix}__{slug}{suffix}"
    return name


def run_config(base_values, point, seed, sweep_dir, final=False, validation_fraction=None):
    """The :class:`~tf_langdml.runs.schema.ExperimentConfig` of one run of the sweep.

    Selection (``final=False``): trained without the validation classes, scored on them.
    Final: the full training split, scored on the test classes.
    """
    values = _with_point(base_values, point)
    _set(values, "data.validation_fraction", 0.0 if final else _fraction(base_values, validation_fraction))
    _set(values, "evaluation.split", "test" if final else "validation")
    _set(values, "training.seed", int(seed))
    _set(values, "runs_dir", str(sweep_dir))
    _set(values, "name", run_name(effective_point(base_values, point), seed, final))
    return config_from_dict(values)


def _fraction(base_values, validation_fraction):
    """The share of training classes held out: the argument, else the config's, else the default."""
    if validation_fraction is not None:
        return validation_fraction
    return base_values.get("data", {}).get("validation_fraction") or DEFAULT_VALIDATION_FRACTION


@dataclasses.dataclass
class SweepResult:
    """What a sweep measured: one row per distinct point, the best one, and the final (test) runs."""

    metric: str
    rows: list  # {"point", "label", "mean", "std", "values", "runs", ...}
    best: dict
    final_rows: list
    folder: pathlib.Path
    wall_seconds: float

    def final_row(self, row):
        """The final (test) row of ``row``'s point, or None when that point was not retrained."""
        key = _point_key(row["point"])
        return next((final for final in self.final_rows if _point_key(final["point"]) == key), None)

    def table(self):
        """The printed table: point, mean ± std over seeds, the paired difference to ω = 0, per-seed values
        (and the final test metric)."""
        paired = any(row.get("paired_difference") for row in self.rows)
        lines = [f"{'point':44s} {'validation ' + self.metric:>24s}"
                 + (f" {'paired Δ vs ω=0':>18s}" if paired else "") + "   seeds"
                 + (f"   {'test ' + self.metric:>22s}" if self.final_rows else "")]
        for row in self.rows:
            mark = "*" if row is self.best else " "
            cell = f"{row['mean']:.4f} ± {row['std']:.4f}"
            difference = row.get("paired_difference")
            delta = f"{difference['mean']:+.4f} ± {difference['std']:.4f}" if difference else ""
            seeds = " ".join(f"{value:.4f}" for value in row["values"])
            line = f"{mark}{row['label']:43s} {cell:>24s}" + (f" {delta:>18s}" if paired else "") + f"   {seeds}"
            final = self.final_row(row)
            if final:
                line += f"   {final['mean']:.4f} ± {final['std']:.4f}"
            lines.append(line)
        lines.append(f"* best on validation: {self.best['label']} ({self.metric} {self.best['mean']:.4f})")
        return "\n".join(lines)


def _point_key(point):
    return json.dumps(point, sort_keys=True)


def _mean_std(values):
    values = [value for value in values if _finite(value)]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1))


def paired_differences(rows):
    """Each row's values minus the ω = 0 row's, seed by seed: ``{"mean", "std", "seeds"}`` per row.

    Returns a list parallel to ``rows``: None for the baseline row itself, for every row
    when the grid has no ω = 0 point, and for a row with no seed that both finished.
    """
    baselines = [row for row in rows if row["point"].get("loss.language_weight", None) == 0]
    if not baselines:
        return [None] * len(rows)
    reference = dict(zip(baselines[0]["seeds"], baselines[0]["values"]))
    differences = []
    for row in rows:
        if row is baselines[0]:
            differences.append(None)
            continue
        pairs = [(seed, value - reference[seed]) for seed, value in zip(row["seeds"], row["values"])
                 if seed in reference and _finite(value) and _finite(reference[seed])]
        if not pairs:
            differences.append(None)
            continue
        mean, std = _mean_std([difference for _, difference in pairs])
        differences.append({"mean": mean, "std": std, "seeds": [seed for seed, _ in pairs]})
    return differences


def _finite(value):
    return value is not None and not math.isnan(value)


def _hparam_value(value):
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
    import shutil

    import tensorflow as tf

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
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    def write():
        hp.hparams({key: _hparam_value(value) for key, value in point.items()})
        value = metrics.get(metric)
        tf.summary.scalar(f"sweep/{metric}", float("nan") if value is None else float(value), step=0)

    _write_events_once(pathlib.Path(folder) / "logs" / "hparams", write)


def _write_hparams_config(sweep_dir, grid, metric):
    """``<sweep>/hparams_config/``: the grid's keys and values and the metric, for the HParams dashboard."""
    from tensorboard.plugins.hparams import api as hp

    hparams = [hp.HParam(key, hp.Discrete(sorted({_hparam_value(value) for value in values}, key=str)))
               for key, values in grid.items()]
    metrics = [hp.Metric(f"sweep/{metric}", display_name=f"validation {metric}")]
    _write_events_once(pathlib.Path(sweep_dir) / "hparams_config",
                       lambda: hp.hparams_config(hparams=hparams, metrics=metrics))


def run_label(config, effective):
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
    from tf_langdml.runs.run_dir import read_metrics
    from tf_langdml.runs.train import train

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
        key = _point_key(effective)
        if key not in seen:
            seen.add(key)
            distinct.append((point, effective))
    return distinct


def _rows(base_values, points, seeds, sweep_dir, metric, final, validation_fraction, verbose, after_each=None,
          progress=None):
    distinct = _distinct(base_values, points)
    # Seed-major order: every point's first seed before any point's second, so a sweep
    # stopped early still has the whole curve (with fewer seeds).
    configs = {(index, seed): run_config(base_values, point, seed, sweep_dir, final, validation_fraction)
               for seed in seeds for index, (point, _) in enumerate(distinct)}
    runs = [(config, distinct[index][1]) for (index, _), config in configs.items()]
    results = dict(zip(configs, _train_all(runs, metric, verbose, after_each, progress)))
    rows = []
    for index, (point, effective) in enumerate(distinct):
        point_results = [results[index, seed] for seed in seeds]
        point_configs = [configs[index, seed] for seed in seeds]
        rows.append(_row(effective, point_configs, point_results, seeds, metric))
    return rows


def _row(effective, configs, results, seeds, metric):
    values = [result.get(metric) for result in results]
    mean, std = _mean_std(values)
    return {"point": effective, "label": point_label(effective), "mean": mean, "std": std,
            "values": values, "seeds": list(seeds), "runs": [config.name for config in configs]}


def run_sweep(base_values, grid, seeds=(0,), metric="recall@1", final=False, validation_fraction=None, verbose=1):
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
            config's ``data.validation_fraction``, else :data:`DEFAULT_VALIDATION_FRACTION`).

    Returns:
        :class:`SweepResult`; also written to ``sweep.csv`` and ``sweep.json``.
    """
    if final not in (False, True, "all"):
        raise ConfigError(f"final must be False, True (the best point) or 'all'; got {final!r}.")
    started = time.time()
    base = config_from_dict(_with_point(base_values, {}))  # the base must be a valid config
    sweep_dir = pathlib.Path(base.runs_dir) / f"{base.name}_sweep"  # created by its first run (train)
    keys = list(grid)
    points = [dict(zip(keys, combination)) for combination in itertools.product(*(grid[key] for key in keys))]
    for point in points:  # every config is checked before the first run starts
        for seed in seeds:
            run_config(base_values, point, seed, sweep_dir, False, validation_fraction)
    progress = None
    if verbose:
        from tf_langdml.runs.progress import RunProgress

        selection_runs = len(_distinct(base_values, points)) * len(seeds)
        final_runs = {False: 0, True: len(seeds), "all": selection_runs}[final]
        progress = RunProgress(selection_runs + final_runs)
    # Written once the first run has passed its data checks and created the folder (idempotent afterwards).
    rows = _rows(base_values, points, seeds, sweep_dir, metric, False, validation_fraction, verbose,
                 after_each=lambda: _write_hparams_config(sweep_dir, grid, metric), progress=progress)
    for row, difference in zip(rows, paired_differences(rows)):
        row["paired_difference"] = difference
    best = max(rows, key=lambda row: -math.inf if math.isnan(row["mean"]) else row["mean"])
    final_rows = []
    if final:
        chosen = [best["point"]] if final is True else [row["point"] for row in rows]
        final_rows = _rows(base_values, chosen, seeds, sweep_dir, metric, True, validation_fraction, verbose,
                           progress=progress)
    result = SweepResult(metric, rows, best, final_rows, sweep_dir, time.time() - started)
    _write_results(result, base_values, validation_fraction)
    return result


def _write_results(result, base_values, validation_fraction):
    from tf_langdml.cache import atomic_file, write_json

    fraction = _fraction(base_values, validation_fraction)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["point", f"validation_{result.metric}_mean", f"validation_{result.metric}_std", "seeds",
                     f"validation_{result.metric}_per_seed", "paired_difference_vs_baseline_mean",
                     "paired_difference_vs_baseline_std", f"test_{result.metric}_mean", f"test_{result.metric}_std",
                     "best"])
    for row in result.rows:
        final = result.final_row(row)
        difference = row.get("paired_difference")
        writer.writerow([row["label"], f"{row['mean']:.6f}", f"{row['std']:.6f}", " ".join(map(str, row["seeds"])),
                         " ".join(f"{value:.6f}" for value in row["values"]),
                         *((f"{difference['mean']:.6f}", f"{difference['std']:.6f}") if difference else ("", "")),
                         f"{final['mean']:.6f}" if final else "", f"{final['std']:.6f}" if final else "",
                         int(row is result.best)])
    with atomic_file(result.folder / "sweep.csv") as temporary:
        temporary.write_text(buffer.getvalue(), encoding="utf-8")
    write_json(result.folder / "sweep.json", {
        "metric": result.metric, "validation_fraction": fraction, "rows": result.rows, "best": result.best,
        "final": result.final_rows, "wall_seconds": result.wall_seconds})


def sweep_from_arguments(config_path, overrides, grid_arguments, seeds="0", metric="recall@1", final=False,
                         validation_fraction=None):
    """(base_values, grid, seeds): the command line's sweep, checked before TensorFlow is imported."""
    base_values = apply_overrides(read_yaml(config_path) if config_path else {}, overrides)
    config_from_dict(_with_point(base_values, {}))
    grid = parse_grid(grid_arguments, base_values)
    seeds = parse_seeds(seeds)
    if validation_fraction is not None and not 0 < validation_fraction < 1:
        raise ConfigError(f"--validation-fraction must be in (0, 1); got {validation_fraction}.")
    return base_values, grid, seeds


__all__ = ["DEFAULT_VALIDATION_FRACTION", "SweepResult", "effective_point", "paired_differences", "parse_grid",
           "parse_seeds", "run_config", "run_sweep", "sweep_from_arguments"]
