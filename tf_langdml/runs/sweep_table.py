"""What a sweep measured, without TensorFlow: mean ± std over seeds, paired differences to ω = 0, the table.

:mod:`tf_langdml.runs.sweep` fills a :class:`SweepResult`; the demo
(:mod:`tf_langdml.demo`) reads its statistics too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Sequence

# The embedding-space diagnostics of every run (tf_langdml.evaluation.EMBEDDING_SPACE_METRICS, named here
# because this module stays free of TensorFlow), shown beside the selection metric.
DIAGNOSTIC_COLUMNS = ("intra", "inter", "intra_over_inter", "rho_spectrum")
_DIAGNOSTIC_HEADERS = {"intra": "intra", "inter": "inter", "intra_over_inter": "intra/inter", "rho_spectrum": "rho"}


@dataclasses.dataclass
class SweepResult:
    """What a sweep measured: one row per distinct point, the best one, and the final (test) runs."""

    metric: str
    rows: list  # {"point", "label", "mean", "std", "values", "runs", ...}
    best: dict
    final_rows: list
    folder: pathlib.Path
    wall_seconds: float

    def final_row(self, row: dict) -> dict | None:
        """The final (test) row of ``row``'s point, or None when that point was not retrained."""
        key = point_key(row["point"])
        return next((final for final in self.final_rows if point_key(final["point"]) == key), None)

    def table(self) -> str:
        """The printed table: point, mean ± std over seeds, the paired difference to ω = 0, per-seed values
        (and the final test metric)."""
        paired = any(row.get("paired_difference") for row in self.rows)
        lines = [
            f"{'point':44s} {'validation ' + self.metric:>24s}"
            + (f" {'paired Δ vs ω=0':>18s}" if paired else "")
            + "".join(f" {_DIAGNOSTIC_HEADERS[name]:>11s}" for name in DIAGNOSTIC_COLUMNS)
            + "   seeds"
            + (f"   {'test ' + self.metric:>22s}" if self.final_rows else "")
        ]
        for row in self.rows:
            mark = "*" if row is self.best else " "
            cell = f"{row['mean']:.4f} ± {row['std']:.4f}"
            difference = row.get("paired_difference")
            delta = f"{difference['mean']:+.4f} ± {difference['std']:.4f}" if difference else ""
            seeds = " ".join(f"{value:.4f}" for value in row["values"])
            line = f"{mark}{row['label']:43s} {cell:>24s}" + (f" {delta:>18s}" if paired else "")
            line += "".join(f" {_diagnostic_cell(row, name):>11s}" for name in DIAGNOSTIC_COLUMNS) + f"   {seeds}"
            final = self.final_row(row)
            if final:
                line += f"   {final['mean']:.4f} ± {final['std']:.4f}"
            lines.append(line)
        lines.append(f"* best on validation: {self.best['label']} ({self.metric} {self.best['mean']:.4f})")
        lines.append(
            "intra, inter, intra/inter, rho: the embedding-space diagnostics on validation, mean over seeds "
            "(docs/metrics.md); - where a run has none"
        )
        return "\n".join(lines)


def _diagnostic_cell(row: dict, name: str) -> str:
    mean = (row.get("diagnostics") or {}).get(name, {}).get("mean")
    return f"{mean:.4f}" if _finite(mean) else "-"


def diagnostic_summary(results: Sequence[dict]) -> dict[str, dict]:
    """Per name of :data:`DIAGNOSTIC_COLUMNS`: ``{"mean", "std", "values"}`` over one point's runs (metrics dicts).

    A run without the diagnostic (undefined for its split) has None among the values and
    is left out of the mean and the sample standard deviation.
    """
    summary = {}
    for name in DIAGNOSTIC_COLUMNS:
        values = [result.get(name) for result in results]
        mean, std = mean_std(values)
        summary[name] = {"mean": mean, "std": std, "values": values}
    return summary


def point_key(point: dict) -> str:
    """The point as canonical JSON: rows of the same point compare equal."""
    return json.dumps(point, sort_keys=True)


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    """(mean, sample std) of the finite values; (nan, nan) without any, std 0 with one."""
    values = [value for value in values if _finite(value)]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1))


def paired_differences(rows: Sequence[dict]) -> list[dict | None]:
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
        pairs = [
            (seed, value - reference[seed])
            for seed, value in zip(row["seeds"], row["values"])
            if seed in reference and _finite(value) and _finite(reference[seed])
        ]
        if not pairs:
            differences.append(None)
            continue
        mean, std = mean_std([difference for _, difference in pairs])
        differences.append({"mean": mean, "std": std, "seeds": [seed for seed, _ in pairs]})
    return differences


def _finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value)
