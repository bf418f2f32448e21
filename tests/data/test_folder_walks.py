"""Folder walks open only regular files; FIFOs, devices, bad links and non-UTF-8 names are skipped and counted."""

import os
import signal

import pytest
from data.hostile_folder import HOSTILE, NOT_UTF8_NAME, make_hostile_folder, walk_in_limited_process

from tf_langdml.data.image_folder import not_regular_summary, scan_folder
from tf_langdml.data.preprocessing import read_regular_file, source_formats


def test_training_folder_skips_and_counts_every_kind(tmp_path):
    make_hostile_folder(str(tmp_path))  # in root/a and in root/a/gallery
    # The split feeds a pipeline: a non-UTF-8 path among its sources would fail the tensor conversion.
    walked = walk_in_limited_process(
        f"[(list(split.sources), next(iter(tf_langdml.data.make_eval_dataset(split, 2, image_size=8)))[0].shape.as_list())"
        f" for split in [tf_langdml.data.load_image_folder({str(tmp_path)!r}, test_classes=['b']).train_split]][0]"
    )
    sources, batch_shape = walked["value"]
    assert [os.path.relpath(path, tmp_path) for path in sources] == ["a/0.png", "a/1.png"]
    assert batch_shape == [2, 8, 8, 3]
    (warning,) = [text for text in walked["warnings"] if text.startswith("Skipped")]
    assert warning.startswith(f"Skipped 10 file(s) under {str(tmp_path)!r}")
    assert "not regular files, never opened: 2 FIFOs, 2 devices, 2 dangling links, 2 link loops;" in warning
    names = ", ".join(repr(os.path.join(folder, NOT_UTF8_NAME)) for folder in (b"a", b"a/gallery"))
    assert f"2 with a name that is not UTF-8 (rename them): {names}." in warning


def test_scan_folder_sorts_entries_by_kind_without_opening_them(tmp_path):
    hostile = make_hostile_folder(str(tmp_path))[0]
    files, folders, others = scan_folder(hostile)
    assert [os.path.basename(path) for path in files] == ["0.png", "1.png"]
    assert [os.path.basename(path) for path in folders] == ["gallery"]
    by_name = {os.path.basename(path): kind for kind, paths in others.items() for path in paths}
    assert by_name == {**HOSTILE, os.fsdecode(NOT_UTF8_NAME): "name not UTF-8"}
    assert (
        not_regular_summary({"FIFO": ["x", "y"], "socket": ["z"]})
        == "not regular files, never opened: 2 FIFOs, 1 socket"
    )
    assert scan_folder(os.path.join(hostile, "missing")) == ([], [], {})


def _alarm(seconds):
    def interrupt(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s")

    signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(seconds)


def test_reading_a_header_refuses_what_is_not_a_regular_file(tmp_path):
    hostile = make_hostile_folder(str(tmp_path))[0]
    _alarm(20)  # an opened FIFO blocks until a writer comes; this turns a hang into a failure
    try:
        for name in ("fifo.png", "zero.png"):
            with pytest.raises(ValueError, match=rf"{name}' is not a regular file.*only image files are read"):
                source_formats([os.path.join(hostile, name)])
        with pytest.raises(ValueError, match="is not a regular file"):
            read_regular_file(hostile, 8)
        png = os.path.join(hostile, "0.png")
        assert read_regular_file(png, 8) == b"\x89PNG\r\n\x1a\n"
        with open(png, "rb") as handle:
            assert read_regular_file(png) == handle.read()
    finally:
        signal.alarm(0)
