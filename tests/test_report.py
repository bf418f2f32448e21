"""tf-langdml report: the HTML page of a tiny ELG run and of a sweep, its numbers, pictures, escaping and bounds."""

import base64
import html.parser
import io
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from helpers import tiny_run_overrides, tiny_sweep_values, write_colour_folder
from PIL import Image
from tensorboard.compat.proto import event_pb2

from tf_langdml import report, report_files
from tf_langdml.cli import main
from tf_langdml.report import sweep_curves, write_report
from tf_langdml.report_files import ReportError, read_json, read_pictures
from tf_langdml.runs.schema import load_config

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTILE = "<script>alert(1)"
DEMO_SWEEP = os.path.join(REPOSITORY, "docs", "results", "demo_sweep.json")


class Page(html.parser.HTMLParser):
    """What a browser would see: start tags, image sources, table rows (cells' text and data-value), the text."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.tags, self.sources, self.links, self.rows, self.text = [], [], [], {}, []
        self._table, self._row, self._cell = None, None, None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attributes):
        attributes = dict(attributes)
        self.tags.append(tag)
        if tag == "img":
            self.sources.append(attributes["src"])
        self.links += [value for name, value in attributes.items() if name in ("href", "src") and value]
        if tag == "table":
            self._table = attributes.get("id")
            self.rows.setdefault(self._table, [])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = {"text": "", "value": attributes.get("data-value")}

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows[self._table].append(self._row)
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell["text"] += data


def decoded_images(page):
    """Every embedded image, decoded in full (PIL), as arrays; each source must be a data: URI of a PNG."""
    images = []
    for source in page.sources:
        prefix = "data:image/png;base64,"
        assert source.startswith(prefix)
        with Image.open(io.BytesIO(base64.b64decode(source[len(prefix) :], validate=True))) as image:
            assert image.format == "PNG"
            images.append(np.asarray(image.convert("RGB")))
    return images


def assert_self_contained(page):
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert all(link.startswith("data:image/png;base64,") for link in page.links)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, minilm_encoder):
    """A finished ELG run (toy_cnn, 16 px, 2 epochs x 2 steps) whose training classes include a hostile name."""
    from tf_langdml.runs.train import train

    root = tmp_path_factory.mktemp("report")
    folder = write_colour_folder(root / "images", num_classes=8, per_class=4)
    os.rename(folder / "class_1", folder / HOSTILE)  # sorted first among the training classes' names
    overrides = [
        *tiny_run_overrides(folder, root / "runs", "tiny"),
        "language.guidance=elg",
        "loss.language_weight=1.0",
        "optimizer.learning_rate=0.01",
        "training.epochs=2",
        "training.steps_per_epoch=2",
        "training.eval_every=1",
        "training.checkpoint_every=4",
        "evaluation.batch_size=16",
        "evaluation.clustering=false",
    ]
    train(load_config(None, overrides), verbose=0)
    return root / "runs" / "tiny"


@pytest.fixture(scope="module")
def run_page(tiny_run):
    assert main(["report", str(tiny_run)]) == 0
    text = (tiny_run / "report.html").read_text(encoding="utf-8")
    return text, Page(text)


def latest_png(log_folder, tag):
    """The newest PNG of ``tag``, read with TensorFlow's own event reader (independent of report's)."""
    found = (-1, None)
    for name in sorted(os.listdir(log_folder)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(log_folder, name)):
            for value in event.summary.value:
                if value.tag == tag and event.step >= found[0]:
                    found = (event.step, tf.make_ndarray(value.tensor)[2])
    return found


def test_run_page_parses_and_every_picture_decodes(run_page, tiny_run):
    text, page = run_page
    assert_self_contained(page)
    images = decoded_images(page)
    assert len(images) == 3  # the curves, the retrieval grid, the heat map
    step, grid = latest_png(tiny_run / "logs" / "validation", "retrieval/top5")
    assert step == 2 and f"data:image/png;base64,{base64.b64encode(grid).decode()}" in page.sources
    step, heat_map = latest_png(tiny_run / "logs" / "train", "similarity/image_vs_language")
    assert step == 2 and f"data:image/png;base64,{base64.b64encode(heat_map).decode()}" in page.sources
    assert "retrieval/top5, epoch 2" in "".join(page.text)


def test_run_page_numbers_equal_metrics_json(run_page, tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    rows = {row[0]["text"]: row[1] for row in run_page[1].rows["metrics"][1:]}
    assert list(rows) == list(metrics)
    for key, value in metrics.items():
        cell = rows[key]
        if isinstance(value, float):
            assert float(cell["value"]) == value and cell["text"] == f"{value:.4f}", key  # repr round-trips exactly
        elif isinstance(value, int):
            assert int(cell["value"]) == value and cell["text"] == str(value), key
        else:
            assert cell["text"] == ("—" if value is None else str(value)), key


def test_hostile_class_name_is_escaped(run_page, tiny_run):
    text, page = run_page
    assert HOSTILE in json.loads((tiny_run / "train_class_names.json").read_text())
    assert "<script" not in text and "&lt;script&gt;alert(1)" in text
    assert HOSTILE in "".join(page.text) and "script" not in page.tags  # shown as text, never as a tag


def test_report_reads_files_only_no_tensorflow_no_model(tiny_run, tmp_path):
    out = tmp_path / "elsewhere.html"
    code = (
        "import sys, time; from tf_langdml.cli import main; started = time.time(); "
        f"status = main(['report', {str(tiny_run)!r}, '--out', {str(out)!r}]); "
        "print(status, 'tensorflow' in sys.modules, 'keras' in sys.modules, time.time() - started)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    status, tensorflow, keras, seconds = result.stdout.split()[-4:]
    assert (status, tensorflow, keras) == ("0", "False", "False")
    assert float(seconds) < 20  # seconds: measured 1.4 s on 2 cores; 20 s only guards against building a model
    assert decoded_images(Page(out.read_text(encoding="utf-8")))


@pytest.fixture
def demo_sweep(tmp_path):
    """A sweep folder holding the demo's real 3-seed sweep.json (docs/results/demo_sweep.json: 11 points, 1 final)."""
    folder = tmp_path / "demo_sweep"
    folder.mkdir()
    shutil.copy(DEMO_SWEEP, folder / "sweep.json")
    return folder


def test_sweep_page_numbers_equal_sweep_json(demo_sweep):
    saved = json.loads((demo_sweep / "sweep.json").read_text())
    path = write_report(demo_sweep)
    assert path == demo_sweep / "report.html"
    page = Page(path.read_text(encoding="utf-8"))
    assert_self_contained(page)
    (curves,) = decoded_images(page)
    assert curves.shape[1] > 1000  # two panels side by side
    points = page.rows["points"][1:]
    assert [row[0]["text"] for row in points] == [row["label"] for row in saved["rows"]]
    for cells, row in zip(points, saved["rows"]):
        assert cells[1]["text"] == f"{row['mean']:.4f} ± {row['std']:.4f}"
        difference = row["paired_difference"]
        assert cells[2]["text"] == (f"{difference['mean']:+.4f} ± {difference['std']:.4f}" if difference else "—")
        assert cells[3]["text"] == " ".join(map(str, row["seeds"]))
        assert cells[4]["text"] == " ".join(f"{value:.4f}" for value in row["values"])
    (final,) = page.rows["final"][1:]
    assert final[0]["text"] == saved["final"][0]["label"] == saved["best"]["label"]
    assert final[1]["text"] == f"{saved['final'][0]['mean']:.4f} ± {saved['final'][0]['std']:.4f}"


def test_sweep_curves_share_the_baseline_and_follow_omega():
    rows = json.loads(open(DEMO_SWEEP, encoding="utf-8").read())["rows"]
    curves = sweep_curves(rows)
    assert sorted(curves) == ["guidance=elg", "guidance=plg"]
    for guidance, points in curves.items():
        assert [point[0] for point in points] == [0.0, 1.0, 2.5, 5.0, 7.5, 10.0]
        assert points[0][1:3] == (rows[0]["mean"], rows[0]["std"])  # the ω = 0 baseline starts every curve
        expected = [row for row in rows if row["point"]["language.guidance"] == guidance.split("=")[1]]
        assert [point[1] for point in points[1:]] == [row["mean"] for row in expected]
        assert [point[3] for point in points[1:]] == [row["paired_difference"] for row in expected]


def one_line_error(arguments):
    result = subprocess.run(
        [sys.executable, "-m", "tf_langdml", "report", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPOSITORY,
    )
    assert result.returncode == 2 and result.stdout == "", result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_folder_that_is_neither_a_run_nor_a_sweep_is_one_line(tmp_path):
    (tmp_path / "plain").mkdir()
    line = one_line_error([str(tmp_path / "plain")])
    assert line == (
        f"tf-langdml report: {tmp_path / 'plain'} is neither a run directory (no config.yaml) nor a sweep "
        "folder (no sweep.json); give runs/<name> or runs/<name>_sweep."
    )
    assert "does not exist" in one_line_error([str(tmp_path / "missing")])
    (tmp_path / "file.txt").write_text("x")
    assert "is not a folder" in one_line_error([str(tmp_path / "file.txt")])
    (tmp_path / "half_sweep" / "select__a__seed-0").mkdir(parents=True)
    (tmp_path / "half_sweep" / "select__a__seed-0" / "config.yaml").write_text("name: x\n")
    line = one_line_error([str(tmp_path / "half_sweep")])
    assert "no sweep.json: the sweep has not finished" in line and "select__a__seed-0" in line
    assert not list(tmp_path.rglob("report.html"))


def test_hostile_json_files_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "broken_sweep").mkdir()
    (tmp_path / "broken_sweep" / "sweep.json").write_text('{"rows": [1, 2')
    assert "sweep.json is not valid JSON" in one_line_error([str(tmp_path / "broken_sweep")])
    (tmp_path / "broken_sweep" / "sweep.json").write_text('{"rows": [{"label": "<b>"}]}')
    assert "has no list of rows with points" in one_line_error([str(tmp_path / "broken_sweep")])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("name: run\n")
    (tmp_path / "run" / "metrics.json").write_text("[1, 2]")
    assert "metrics.json holds a JSON list, not the object" in one_line_error([str(tmp_path / "run")])
    big = tmp_path / "big.json"
    with open(big, "wb") as handle:  # sparse: its size, not its bytes, is what is refused
        handle.truncate(report_files.MAX_JSON_BYTES + 1)
    with pytest.raises(ReportError, match="big.json is 16777217 bytes, more than the 16777216"):
        read_json(big)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # opening it would block until a writer comes: it must be refused unopened
    with pytest.raises(ReportError, match="fifo.json is not a regular file"):
        read_json(fifo)


def tiny_png(value):
    buffer = io.BytesIO()
    Image.fromarray(np.full((2, 3, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def frame(event):
    """One TFRecord frame (the CRCs are not checked by the reader, so zeros do)."""
    data = event.SerializeToString()
    return struct.pack("<QI", len(data), 0) + data + b"\0\0\0\0"


def image_event(step, png, tag="retrieval/top5", padding=b""):
    event = event_pb2.Event(step=step)
    value = event.summary.value.add(tag=tag)
    value.tensor.dtype = 7  # DT_STRING
    value.tensor.string_val.extend([b"3", b"2", png])
    if padding:
        event.summary.value.add(tag="padding").tensor.string_val.append(padding)
    return event


def test_event_reading_keeps_the_newest_picture_and_is_bounded(tmp_path, monkeypatch):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "events.out.tfevents.1.a").write_bytes(
        frame(image_event(2, tiny_png(20))) + frame(image_event(1, tiny_png(10)))
    )
    scan = read_pictures(logs)
    assert scan.pictures["retrieval/top5"].step == 2 and scan.pictures["retrieval/top5"].png == tiny_png(20)
    assert (scan.pictures["retrieval/top5"].width, scan.pictures["retrieval/top5"].height) == (3, 2)

    # A record larger than the bound is skipped unread; the pictures after it are still found.
    monkeypatch.setattr(report_files, "MAX_RECORD_BYTES", 4096)
    (logs / "events.out.tfevents.2.b").write_bytes(
        frame(image_event(3, tiny_png(30), padding=b"x" * 5000)) + frame(image_event(4, tiny_png(40)))
    )
    scan = read_pictures(logs)
    assert scan.pictures["retrieval/top5"].png == tiny_png(40)
    assert any("skipped a record of" in note for note in scan.notes)

    # A frame claiming 2**62 bytes (a cut or hostile file) ends the file's reading: nothing is allocated for it.
    (logs / "events.out.tfevents.3.c").write_bytes(struct.pack("<QI", 2**62, 0) + b"\0" * 64)
    assert read_pictures(logs).pictures["retrieval/top5"].step == 4

    # Past MAX_EVENT_BYTES of a file, reading stops and the page says so.
    monkeypatch.setattr(report_files, "MAX_EVENT_BYTES", len(frame(image_event(5, tiny_png(50)))))
    (logs / "events.out.tfevents.4.d").write_bytes(
        frame(image_event(5, tiny_png(50))) + frame(image_event(6, tiny_png(60)))
    )
    scan = read_pictures(logs)
    assert scan.pictures["retrieval/top5"].step == 5 and any("read the first" in note for note in scan.notes)

    # Not a PNG, and not an event at all: left out, no exception.
    for path in logs.iterdir():
        path.unlink()
    (logs / "events.out.tfevents.5.e").write_bytes(
        frame(image_event(7, b"GIF89a not a png")) + struct.pack("<QI", 3, 0) + b"\xff\xff\xff" + b"\0" * 4
    )
    scan = read_pictures(logs)
    assert scan.pictures == {} and any("not an event" in note for note in scan.notes)

    os.mkfifo(logs / "events.out.tfevents.6.fifo")
    with pytest.raises(ReportError, match="is not a regular file"):
        read_pictures(logs)


def test_the_report_replaces_the_old_page_whole_or_not_at_all(demo_sweep, monkeypatch):
    (demo_sweep / "report.html").write_text("old page")

    def fail_half_way(self, text, encoding=None):
        with open(self, "w", encoding=encoding) as handle:
            handle.write(text[: len(text) // 2])
        raise OSError(28, "No space left on device", str(self))

    monkeypatch.setattr(report.pathlib.Path, "write_text", fail_half_way)
    with pytest.raises(OSError):
        write_report(demo_sweep)
    assert (demo_sweep / "report.html").read_text() == "old page"
    assert sorted(path.name for path in demo_sweep.iterdir()) == ["report.html", "sweep.json"]  # no partial left


def test_report_help_names_every_flag():
    result = subprocess.run(
        [sys.executable, "-m", "tf_langdml", "report", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPOSITORY,
        check=True,
    )
    assert "RUN_OR_SWEEP" in result.stdout and "default: <folder>/report.html" in result.stdout


@pytest.mark.slow
def test_report_of_a_real_tiny_sweep(tmp_path, minilm_encoder):
    """Two points x one seed and the final run, trained (about 40 s of CPU); the page's numbers equal sweep.json."""
    from tf_langdml.runs.sweep import run_sweep
    from tf_langdml.runs.sweep_grid import parse_grid

    folder = write_colour_folder(tmp_path / "images", num_classes=12, per_class=4)
    values = tiny_sweep_values(folder, tmp_path / "runs")
    values["training"].update(epochs=1, eval_every=1)
    run_sweep(values, parse_grid(["loss.language_weight=0,1.5"], values), seeds=[0], final=True, verbose=0)
    sweep_folder = tmp_path / "runs" / "tiny_sweep"
    assert main(["report", str(sweep_folder)]) == 0
    saved = json.loads((sweep_folder / "sweep.json").read_text())
    page = Page((sweep_folder / "report.html").read_text(encoding="utf-8"))
    assert len(decoded_images(page)) == 1
    assert [[cell["text"] for cell in row[:2]] for row in page.rows["points"][1:]] == [
        [row["label"], f"{row['mean']:.4f} ± {row['std']:.4f}"] for row in saved["rows"]
    ]
    assert page.rows["final"][1][1]["text"] == f"{saved['final'][0]['mean']:.4f} ± {saved['final'][0]['std']:.4f}"
    run = sweep_folder / saved["rows"][1]["runs"][0]
    assert main(["report", str(run)]) == 0 and len(decoded_images(Page((run / "report.html").read_text()))) == 3


def test_a_run_that_has_not_finished_gets_a_page_that_says_so(tmp_path):
    (tmp_path / "run" / "logs" / "validation").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("name: run\n")
    page = Page(write_report(tmp_path / "run").read_text(encoding="utf-8"))
    text = "".join(page.text)
    assert page.sources == [] and "metrics" not in page.rows
    assert "not finished (no metrics.json yet)" in text and "No retrieval grid in logs/validation" in text
    assert "metrics.json is not there yet." in text and "history.json is not there yet." in text
