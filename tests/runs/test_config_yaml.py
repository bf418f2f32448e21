"""The config's YAML loader: what it refuses (aliases, tags, depth, huge files) and the YAML 1.2 floats it reads.

Every refusal is one ConfigError line naming the file or --set key and the config key; schema-level, no TensorFlow.
"""

import os
import pathlib
import stat
import threading
import time

import pytest
import yaml

from tf_langdml.runs.schema import (
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    ConfigError,
    config_from_dict,
    config_from_yaml,
    config_to_yaml,
    load_config,
    load_yaml,
    read_yaml,
)


def refused(match, path=None, overrides=()):
    """The one-line ConfigError that load_config raises, matched against ``match``."""
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path, overrides)
    assert "\n" not in str(info.value)
    return str(info.value)


def alias_bomb(levels, leaves=10):
    """A circle-loss config whose ``margin`` expands to ``leaves ** levels`` numbers (the reproduced bomb)."""
    lines = ["loss:", "  dml: circle", "  dml_arguments:", f"    l0: &l0 [{','.join(['1'] * leaves)}]"]
    for level in range(1, levels):
        lines.append(f"    l{level}: &l{level} [{','.join([f'*l{level - 1}'] * leaves)}]")
    lines.append(f"    margin: *l{levels - 1}")
    return "\n".join(lines) + "\n"


def count_leaves(value):
    return sum(count_leaves(item) for item in value) if isinstance(value, list) else 1


def test_the_alias_bomb_is_real_for_a_plain_safe_loader():
    # Three levels through yaml.safe_load: 10**3 leaves from a few lines; nine levels are 10**9 (MemoryError).
    assert count_leaves(yaml.safe_load(alias_bomb(3))["loss"]["dml_arguments"]["margin"]) == 10**3


def test_a_billion_laughs_file_is_refused_at_its_first_anchor_in_well_under_a_second(tmp_path):
    text = alias_bomb(9)  # 10**9 leaves once expanded
    assert len(text.encode()) == 519
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    start = time.perf_counter()
    message = refused(
        r"^Config file .*bomb.yaml: 'loss.dml_arguments.l0' \(line 4, column 9\) uses a YAML anchor "
        r"\(&l0\); anchors and aliases are refused .*: write the value out\.$",
        path,
    )
    assert time.perf_counter() - start < 1.0, message  # the refusal reads ~100 bytes; 1 s is a generous bound


@pytest.mark.parametrize(
    "text, match",
    [
        (
            "loss:\n  dml_arguments:\n    gamma: &g [*g]\n",
            r"'loss.dml_arguments.gamma' \(line 3, column 12\) uses a YAML anchor \(&g\)",
        ),
        (
            "loss:\n  dml_arguments:\n    gamma: *g\n",
            r"'loss.dml_arguments.gamma' \(line 3, column 12\) uses a YAML alias \(\*g\)",
        ),
        ("name: &n x\nruns_dir: *n\n", r"'name' \(line 1, column 7\) uses a YAML anchor \(&n\)"),
    ],
)
def test_self_references_and_plain_aliases_are_refused_in_files(tmp_path, text, match):
    path = tmp_path / "self.yaml"
    path.write_text(text)
    start = time.perf_counter()
    refused(match, path)
    assert time.perf_counter() - start < 1.0  # no recursion, no expansion


@pytest.mark.parametrize(
    "override, match",
    [
        (
            "loss.dml_arguments={gamma: &g [*g]}",
            r"^--set loss.dml_arguments: 'loss.dml_arguments.gamma' .* YAML anchor \(&g\)",
        ),
        (
            "loss.dml_arguments.gamma=&g [1, 1]",
            r"^--set loss.dml_arguments.gamma: 'loss.dml_arguments.gamma' .* YAML anchor",
        ),
        ("loss.dml_arguments.gamma=*g", r"^--set loss.dml_arguments.gamma: .* YAML alias \(\*g\)"),
    ],
)
def test_anchors_and_aliases_are_refused_in_set_values(override, match):
    start = time.perf_counter()
    refused(match, overrides=[override])
    assert time.perf_counter() - start < 1.0


def test_the_bomb_through_set_is_refused_too():
    flow = ", ".join(line.strip() for line in alias_bomb(9).split("dml_arguments:\n")[1].splitlines())
    refused(
        r"^--set loss.dml_arguments: 'loss.dml_arguments.l0' .*YAML anchor \(&l0\)",
        overrides=["loss.dml=circle", f"loss.dml_arguments={{{flow}}}"],
    )


@pytest.mark.parametrize(
    "value, tag",
    [
        ("!!python/object/apply:os.system ['touch {marker}']", "!!python/object/apply:os.system"),
        ("!!python/name:os.system", "!!python/name:os.system"),
        ("!!binary aGVsbG8=", "!!binary"),
        ("!!set {a, b}", "!!set"),
        ("!!timestamp 2026-12-05", "!!timestamp"),
        ("!custom 3", "!custom"),
    ],
)
def test_tags_are_refused_naming_the_key_in_files_and_set(tmp_path, value, tag):
    marker = tmp_path / "ran"
    value = value.replace("{marker}", str(marker))
    path = tmp_path / "tagged.yaml"
    path.write_text(f"loss:\n  dml_arguments:\n    margin: {value}\n")
    escaped = tag.replace("!", "!").replace(".", r"\.")
    refused(
        rf"^Config file .*tagged.yaml: 'loss.dml_arguments.margin' \(line 3, column 13\) has the YAML tag "
        rf"{escaped}; .*remove the tag\.$",
        path,
    )
    refused(
        rf"^--set loss.dml_arguments.margin: 'loss.dml_arguments.margin' .*has the YAML tag {escaped};",
        overrides=[f"loss.dml_arguments.margin={value}"],
    )
    assert not marker.exists()


def test_the_plain_tags_are_accepted():
    config = load_config(None, ["name=!!str 5", "training.epochs=!!int 3", "loss.shift=!!float 2"])
    assert (config.name, config.training.epochs, config.loss.shift) == ("5", 3, 2.0)


@pytest.mark.parametrize("text", ["1e-4", "3E-5", "1e+3", ".5e-3", "1.0e-5", "-2e3", "+4E0", "1_0e-1", "3e-4"])
def test_yaml_1_2_floats_are_numbers_in_files_and_set(tmp_path, text):
    expected = float(text.replace("_", ""))
    assert load_config(None, [f"optimizer.learning_rate={text.lstrip('-')}"]).optimizer.learning_rate == float(
        text.lstrip("-").replace("_", "")
    )
    assert load_config(None, [f"loss.shift={text}"]).loss.shift == expected
    path = tmp_path / "floats.yaml"
    path.write_text(f"optimizer:\n  learning_rate: {text.lstrip('-')}  # the docs' notation\nloss:\n  shift: {text}\n")
    config = load_config(path)
    assert config.loss.shift == expected and isinstance(config.loss.shift, float)
    assert load_yaml(f"x: {text}")["x"] == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("'1e-4'", "1e-4"),
        ("2026-12-05", "2026-12-05"),
        ("1e", "1e"),
        ("e5", "e5"),
        ("1.2.3", "1.2.3"),
        ("0x1F", 31),
        ("1_000", 1000),
        ("1.5", 1.5),
        ("-.inf", float("-inf")),
    ],
)
def test_what_is_not_a_yaml_1_2_float_keeps_its_type(text, expected):
    assert load_yaml(f"x: {text}")["x"] == expected


@pytest.mark.parametrize("name", ["1e5", "3E-5", "2026-12-05", "yes", "null", "0x10", "1_0", ".5e-3", "true"])
def test_names_that_look_like_numbers_round_trip_through_config_yaml(name):
    config = config_from_dict({"name": name})
    text = config_to_yaml(config)
    assert config_from_yaml(text) == config
    assert yaml.safe_load(text)["name"] == name  # a plain YAML 1.1 reader (run_dir's comparison) agrees


def test_config_yaml_never_holds_an_alias():
    config = config_from_dict(
        {
            "loss": {"dml": "s2sd", "dml_arguments": {"dims": [64, 64], "target_arguments": {}}},
            "data": {"background": [1, 2, 3]},
        }
    )
    text = config_to_yaml(config)
    assert "&" not in text and "*" not in text
    assert config_from_yaml(text) == config


def test_deep_nesting_is_refused_without_a_recursion_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("name: " + "[" * 100_000 + "]" * 100_000 + "\n")
    refused(
        rf"^Config file .*deep.yaml: 'name\[0\](\[0\])*' \(line 1, column \d+\) is nested more than {MAX_DEPTH} "
        r"levels deep",
        path,
    )
    refused(r"^--set name: .* is nested more than", overrides=["name=" + "{a: " * 5000 + "1" + "}" * 5000])


def test_an_integer_of_thousands_of_digits_is_refused_without_a_traceback(tmp_path):
    # Python refuses int("9" * 5000) with a ValueError of its own (the 4300-digit limit).
    refused(
        r"^--set training.seed: 'training.seed' \(line 1, column 1\) is an integer of 5000 digits",
        overrides=["training.seed=" + "9" * 5000],
    )
    path = tmp_path / "long.yaml"
    path.write_text("training:\n  epochs: " + "1" * 50 + "\n")
    refused(r"'training.epochs' \(line 2, column 11\) is an integer of 50 digits", path)


def test_a_syntax_error_is_one_line_with_its_position(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  batch_size: [unclosed\n")
    message = refused(r"^Config file .*bad.yaml is not valid YAML: .*\(line \d+, column \d+\)\.$", path)
    assert "\n" not in message
    refused(r"^--set name is not valid YAML: .*special characters", overrides=["name=a\0b"])
    refused(
        r"^--set training.epochs is not valid YAML: expected a single document", overrides=["training.epochs=2\n---\n3"]
    )


def test_a_file_larger_than_the_cap_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"name: x\n" + b"#" * MAX_CONFIG_BYTES + b"\n")
    refused(rf"^Config file .*big.yaml is larger than {MAX_CONFIG_BYTES} bytes", path)
    path.write_bytes(b"name: x\n" + b"#" * (MAX_CONFIG_BYTES - 20) + b"\n")  # under the cap: read
    assert load_config(path).name == "x"


def test_not_a_regular_file_is_refused_without_blocking(tmp_path):
    refused(r"^Config file .* is not a regular file", tmp_path)  # a directory
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    outcome = []

    def read():
        try:
            read_yaml(fifo)
        except ConfigError as error:
            outcome.append(str(error))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(10)  # opening a FIFO without a writer would block forever
    assert not thread.is_alive() and "is not a regular file" in outcome[0]


def test_a_symlink_to_a_config_is_read():
    link = pathlib.Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    assert link.is_symlink() and load_config(link).name == "demo"


def test_not_utf8_and_unreadable_files_are_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    refused(r"^Config file .*latin1.yaml is not UTF-8 text \(byte 9\); save it as UTF-8\.$", path)
    if os.geteuid() != 0:  # root reads any file
        locked = tmp_path / "locked.yaml"
        locked.write_text("name: x\n")
        locked.chmod(0)
        try:
            refused(r"^Config file .*locked.yaml cannot be read \(Permission denied\)", locked)
        finally:
            locked.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_a_top_level_list_and_a_nul_in_the_path_are_one_line_errors(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- name: x\n")
    refused(
        r"^Config file .*list.yaml must be a mapping of sections at the top level .*; got list\.$",
        path,
        ["training.epochs=3"],
    )  # with --set too (it used to be an AttributeError)
    refused(r"^Config file path .* is not a valid path", str(tmp_path / "a\0b.yaml"))
