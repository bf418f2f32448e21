"""``tf-langdml report``: one self-contained HTML page for a run directory or a sweep folder.

A run (``<runs_dir>/<name>/``, it has ``config.yaml``): the metrics table
(``metrics.json``), the loss terms and validation R@1 / MAP@R per epoch
(``history.json``), the latest retrieval grid (``logs/validation``) and S_img | S_lang
heat map (``logs/train``) as written to TensorBoard, the run's config and its training
class names. A sweep (``<runs_dir>/<name>_sweep/``, it has ``sweep.json``): validation
R@1 against ω per guidance (mean ± std over seeds), the paired difference to ω = 0
(:func:`tf_langdml.runs.sweep.paired_differences`), every row with its per-seed values and
the final test rows.

Only the folder's own files are read: no model is built and TensorFlow is not imported
(the event files are read as TFRecord frames and parsed with TensorBoard's protobuf
classes), so a report takes seconds. The pictures are PNG bytes embedded as ``data:``
URIs; the page has no script and loads nothing from elsewhere. Every string from the
files (class names, config values, labels) is HTML-escaped.

Bounded: the files are read by :mod:`tf_langdml.report_files` (regular files only, within
its size, record and file-count bounds; the page says when it stopped early).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import pathlib

from tf_langdml.cache import atomic_file  # no TensorFlow (nor numpy) at import: tf-langdml report stays light
from tf_langdml.report_files import (
    ReportError,
    folder_kind,
    read_config_text,
    read_json,
    read_optional_json,
    read_pictures,
)

MAX_CLASS_NAMES = 500  # listed on the page; the rest are counted
HEAT_MAP_TAG = "similarity/image_vs_language"
RETRIEVAL_TAG_PREFIX = "retrieval/"


# ---------------------------------------------------------------- drawing (matplotlib Agg, no pyplot state)


def _png(figure):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def _figure(columns):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5 * columns, 3.6), dpi=100, layout="constrained")
    return figure, [figure.add_subplot(1, columns, index + 1) for index in range(columns)]


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def history_figure(history: dict) -> bytes | None:
    """PNG: the loss terms per epoch (left) and validation R@1 / MAP@R per epoch (right); None without epochs."""
    epochs = sorted((int(key), row) for key, row in history.items() if str(key).isdigit() and isinstance(row, dict))
    if not epochs:
        return None
    figure, (losses, recalls) = _figure(2)
    for name in ("loss", "dml_loss", "language_loss"):
        points = [(epoch, row[name]) for epoch, row in epochs if _number(row.get(name))]
        if points:
            losses.plot(*zip(*points), marker="o", markersize=3, label=name)
    losses.set(title="training loss (epoch mean)", xlabel="epoch")
    for name in ("val_recall@1", "val_map@r"):
        points = [(epoch, row[name]) for epoch, row in epochs if _number(row.get(name))]
        if points:
            recalls.plot(*zip(*points), marker="o", markersize=3, label=name.removeprefix("val_"))
    recalls.set(title="evaluation split", xlabel="epoch")
    from matplotlib.ticker import MaxNLocator

    for axes in (losses, recalls):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if axes.lines:
            axes.legend(fontsize=8)
        axes.grid(alpha=0.3)
    return _png(figure)


def _weight(row):
    value = row.get("point", {}).get("loss.language_weight")
    return float(value) if _number(value) else None


def _curve_name(row):
    """The row's point without ω: one curve per guidance (and per any other swept key)."""
    others = {key: value for key, value in row.get("point", {}).items() if key != "loss.language_weight"}
    return " ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in others.items()) or "all"


def sweep_curves(rows: list[dict]) -> dict[str, list[tuple]]:
    """``{curve name: [(ω, mean, std, paired Δ or None), ...]}``: the ω = 0 baseline starts every curve.

    Rows without a numeric ``loss.language_weight`` are left out (the table still lists them).
    """
    baseline = next((row for row in rows if _weight(row) == 0), None)
    curves = {}
    for row in rows:
        weight = _weight(row)
        if weight is None or row is baseline:
            continue
        curves.setdefault(_curve_name(row), []).append(
            (weight, row.get("mean"), row.get("std"), row.get("paired_difference"))
        )
    if baseline is not None:
        for points in curves.values():
            points.append((0.0, baseline.get("mean"), baseline.get("std"), {"mean": 0.0, "std": 0.0}))
    if baseline is not None and not curves:
        curves[_curve_name(baseline)] = [(0.0, baseline.get("mean"), baseline.get("std"), None)]
    return {name: sorted(points, key=lambda point: point[0]) for name, points in curves.items()}


def sweep_figure(rows: list[dict], metric: str) -> bytes | None:
    """PNG: validation ``metric`` against ω per curve (mean ± std over seeds) and the paired Δ to ω = 0."""
    curves = sweep_curves(rows)
    if not curves:
        return None
    figure, (values, deltas) = _figure(2)
    weights = [point[0] for points in curves.values() for point in points]
    step = (max(weights) - min(weights)) * 0.012  # curves side by side at each ω, so their error bars do not overlap
    for index, (name, points) in enumerate(curves.items()):
        offset = (index - (len(curves) - 1) / 2) * step
        shown = [(weight + offset, mean, std or 0.0) for weight, mean, std, _ in points if _number(mean)]
        if shown:
            values.errorbar(*zip(*shown), marker="o", capsize=3, label=name)
        paired = [
            (weight + offset, delta["mean"], delta.get("std") or 0.0)
            for weight, _, _, delta in points
            if delta and _number(delta.get("mean"))
        ]
        if paired:
            deltas.errorbar(*zip(*paired), marker="o", capsize=3, label=name)
    values.set(title=f"validation {metric}: mean ± std over seeds", xlabel="ω (loss.language_weight)")
    deltas.set(title="paired Δ vs ω = 0 (same seed): mean ± std", xlabel="ω (loss.language_weight)")
    deltas.axhline(0.0, color="grey", linewidth=0.8)
    for axes in (values, deltas):
        if axes.lines or axes.containers:
            axes.legend(fontsize=8)
        axes.grid(alpha=0.3)
    return _png(figure)


# ---------------------------------------------------------------- HTML

_STYLE = """
body { font-family: sans-serif; margin: 1em auto; padding: 0 1em; max-width: 1250px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.best { background: #eef7ee; }
img { max-width: 100%; border: 1px solid #ddd; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
p.note { color: #666; font-size: 0.9em; }
"""


def _e(value):
    return html.escape(str(value), quote=True)


def _cell(value):
    """A table cell: numbers with 4 decimals (the exact value in ``data-value``), anything else escaped text."""
    if isinstance(value, bool) or value is None:
        return f"<td>{_e('—' if value is None else value)}</td>"
    if isinstance(value, int):
        return f'<td class="n" data-value="{value}">{value}</td>'
    if isinstance(value, float):
        return f'<td class="n" data-value="{_e(repr(value))}">{value:.4f}</td>'
    return f"<td>{_e(value)}</td>"


def _mean_std(mean, std):
    if not _number(mean):
        return "—"
    return f"{mean:.4f} ± {std:.4f}" if _number(std) else f"{mean:.4f}"


def _per_seed(row):
    return " ".join(f"{value:.4f}" if _number(value) else "—" for value in row.get("values") or [])


def _image(png, alt):
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _page(title, body):
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_STYLE}</style></head>\n<body>\n<h1>{_e(title)}</h1>\n{body}\n</body></html>\n"
    )


def run_report(folder: str | os.PathLike) -> str:
    """The HTML page of the run directory ``folder`` (a string)."""
    folder = pathlib.Path(folder)
    notes, parts = [], []
    metrics = read_optional_json(folder / "metrics.json", notes)
    history = read_optional_json(folder / "history.json", notes)
    status = "finished" if isinstance(metrics, dict) else "not finished (no metrics.json yet)"
    evaluated = ""
    if isinstance(metrics, dict) and metrics.get("evaluated_on"):
        evaluated = (
            f"; evaluated on the {metrics.get('evaluated_on')} split "
            f"({metrics.get('evaluated_classes')} classes, {metrics.get('evaluated_images')} images)"
        )
    parts.append(f"<p>Run directory <code>{_e(folder)}</code>: {_e(status + evaluated)}.</p>")

    parts.append("<h2>Metrics</h2>")
    if isinstance(metrics, dict):
        rows = "".join(f"<tr><th>{_e(key)}</th>{_cell(value)}</tr>" for key, value in metrics.items())
        parts.append(f'<table id="metrics"><tr><th>metric</th><th>value</th></tr>{rows}</table>')
    else:
        parts.append("<p>No metrics.json: the run has not finished (run train again to resume it).</p>")

    parts.append("<h2>Curves</h2>")
    curves = history_figure(history) if isinstance(history, dict) else None
    parts.append(_image(curves, "loss and recall per epoch") if curves else "<p>No epoch in history.json yet.</p>")

    scans = {name: read_pictures(folder / "logs" / name) for name in ("validation", "train")}
    for name, scan in scans.items():
        notes += [f"logs/{name}/{note}" for note in scan.notes]
    retrieval = [
        picture for tag, picture in sorted(scans["validation"].pictures.items()) if tag.startswith(RETRIEVAL_TAG_PREFIX)
    ]
    heat_map = scans["train"].pictures.get(HEAT_MAP_TAG)
    parts.append("<h2>Retrieval grid</h2>")
    if retrieval:
        for picture in retrieval:
            parts.append(
                f"<p>{_e(picture.tag)}, epoch {picture.step}: each row is a query (black frame) and its "
                "nearest gallery images, framed green (same class) or red (another class).</p>"
            )
            parts.append(_image(picture.png, picture.tag))
    else:
        parts.append("<p>No retrieval grid in logs/validation (written at each evaluation).</p>")
    parts.append("<h2>S_img | S_lang</h2>")
    if heat_map:
        parts.append(
            f"<p>{_e(heat_map.tag)}, epoch {heat_map.step}: the cosine similarities of one fixed batch's "
            "images (left) and of their classes' language embeddings (right), -1 blue, 0 white, +1 red.</p>"
        )
        parts.append(_image(heat_map.png, heat_map.tag))
    else:
        parts.append("<p>No heat map in logs/train (written for runs with language guidance).</p>")

    names_path = folder / "train_class_names.json"
    if names_path.exists():
        names = read_json(names_path)
        if isinstance(names, list):
            shown = ", ".join(_e(name) for name in names[:MAX_CLASS_NAMES])
            more = f" … and {len(names) - MAX_CLASS_NAMES} more" if len(names) > MAX_CLASS_NAMES else ""
            parts.append(f'<h2>Training classes ({len(names)})</h2><p id="classes">{shown}{_e(more)}</p>')
    parts.append(f'<h2>Config</h2><pre id="config">{_e(read_config_text(folder))}</pre>')
    if notes:
        parts.append("<h2>Notes</h2>" + "".join(f'<p class="note">{_e(note)}</p>' for note in notes))
    return _page(f"tf-langdml run {folder.name}", "\n".join(parts))


def sweep_report(folder: str | os.PathLike) -> str:
    """The HTML page of the sweep folder ``folder`` (a string), from its ``sweep.json``."""
    folder = pathlib.Path(folder)
    path = folder / "sweep.json"
    sweep = read_json(path)
    if (
        not isinstance(sweep, dict)
        or not isinstance(sweep.get("rows"), list)
        or not all(isinstance(row, dict) and isinstance(row.get("point"), dict) for row in sweep["rows"])
    ):
        raise ReportError(f"{path} has no list of rows with points; rerun the sweep command that wrote it.")
    metric, rows = str(sweep.get("metric", "recall@1")), sweep["rows"]
    final_rows = [row for row in sweep.get("final") or [] if isinstance(row, dict)]
    best = sweep.get("best") if isinstance(sweep.get("best"), dict) else {}
    parts = [
        f"<p>Sweep folder <code>{_e(folder)}</code>: {len(rows)} points, selected on validation {_e(metric)} "
        f"with {_e(sweep.get('validation_fraction'))} of the training classes held out; best: "
        f"<b>{_e(best.get('label', '—'))}</b>.</p>"
    ]
    picture = sweep_figure(rows, metric)
    parts.append(f"<h2>Validation {_e(metric)} against ω</h2>")
    parts.append(
        _image(picture, "validation metric and paired difference against omega")
        if picture
        else "<p>No point has a numeric loss.language_weight: see the table.</p>"
    )
    parts.append(
        "<p>Each point: mean ± sample standard deviation over seeds. The paired Δ subtracts the ω = 0 "
        "baseline of the same seed before averaging, so it is free of what a seed does to every point.</p>"
    )

    header = (
        f"<tr><th>point</th><th>validation {_e(metric)}</th><th>paired Δ vs ω=0</th><th>seeds</th>"
        f"<th>per seed</th></tr>"
    )
    lines = []
    for row in rows:
        difference = row.get("paired_difference") if isinstance(row.get("paired_difference"), dict) else None
        values = _per_seed(row)
        delta = "—"
        if difference and _number(difference.get("mean")):
            std = difference.get("std")
            delta = f"{difference['mean']:+.4f}" + (f" ± {std:.4f}" if _number(std) else "")
        mark = ' class="best"' if row.get("label") == best.get("label") else ""
        lines.append(
            f"<tr{mark}><td>{_e(row.get('label', ''))}</td>"
            f'<td class="n">{_mean_std(row.get("mean"), row.get("std"))}</td><td class="n">{delta}</td>'
            f'<td>{_e(" ".join(map(str, row.get("seeds") or [])))}</td><td class="n">{values}</td></tr>'
        )
    parts.append(f'<h2>Points</h2><table id="points">{header}{"".join(lines)}</table>')

    parts.append("<h2>Final test rows</h2>")
    if final_rows:
        lines = [
            f'<tr><td>{_e(row.get("label", ""))}</td><td class="n">{_mean_std(row.get("mean"), row.get("std"))}'
            f'</td><td class="n">{_per_seed(row)}</td><td>{_e(" ".join(map(str, row.get("runs") or [])))}'
            "</td></tr>"
            for row in final_rows
        ]
        parts.append(
            f'<table id="final"><tr><th>point</th><th>test {_e(metric)}</th><th>per seed</th><th>runs</th>'
            f"</tr>{''.join(lines)}</table>"
        )
    else:
        parts.append(
            "<p>No final runs (run the sweep again with --final to score the best point on the test classes).</p>"
        )
    if _number(sweep.get("wall_seconds")):
        parts.append(f'<p class="note">Wall time of the sweep: {sweep["wall_seconds"] / 60:.1f} min.</p>')
    return _page(f"tf-langdml sweep {folder.name}", "\n".join(parts))


def write_report(folder: str | os.PathLike, out: str | os.PathLike | None = None) -> pathlib.Path:
    """Write the report of the run or sweep ``folder`` to ``out`` (default ``<folder>/report.html``), atomically.

    Returns the path written. Raises FileNotFoundError or ReportError (one line each)
    for a folder that is neither a run nor a sweep.
    """
    folder = pathlib.Path(folder)
    kind = folder_kind(folder)
    page = run_report(folder) if kind == "run" else sweep_report(folder)
    out = pathlib.Path(out) if out is not None else folder / "report.html"
    with atomic_file(out) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return out


__all__ = [
    "ReportError",
    "history_figure",
    "run_report",
    "sweep_curves",
    "sweep_figure",
    "sweep_report",
    "write_report",
]
