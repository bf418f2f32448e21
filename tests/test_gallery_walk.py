"""folder_items (tf-langdml index --gallery) opens only regular files and counts what it skips by kind."""

import os

import pytest
from data.hostile_folder import NOT_UTF8_NAME, make_hostile_folder, walk_in_limited_process


def test_gallery_walk_skips_and_counts_every_kind(tmp_path):
    hostile, gallery = make_hostile_folder(str(tmp_path))  # in root/a and in root/a/gallery
    os.symlink(str(tmp_path), os.path.join(gallery, "up"))  # a link back up: never descended
    walked = walk_in_limited_process(f"tf_langdml.gallery.folder_items({str(tmp_path)!r})")
    paths, ids, classes = walked["value"]
    assert ids == ["a/0.png", "a/1.png", "b/0.png", "b/1.png"] and classes == ["a", "a", "b", "b"]
    assert paths == [os.path.join(str(tmp_path), item) for item in ids]
    (warning,) = walked["warnings"]
    assert warning.startswith(f"Skipped 10 entr(ies) under gallery folder {str(tmp_path)!r}: ")
    assert "not regular files, never opened: 2 FIFOs, 2 devices, 2 dangling links, 2 link loops;" in warning
    names = ", ".join(repr(os.path.join(folder, NOT_UTF8_NAME)) for folder in (b"a", b"a/gallery"))
    assert warning.endswith(f"2 with a name that is not UTF-8 (rename them): {names}.")


def test_search_refuses_a_fifo_or_a_device_link_before_opening_or_loading(tmp_path, capsys):
    """search_saved_model and `tf-langdml search` read only regular files, before the model is loaded."""
    import signal

    from tf_langdml.cli import main
    from tf_langdml.gallery import search_saved_model

    fifo, zero = tmp_path / "x.png", tmp_path / "zero.png"
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")

    def hung(signum, frame):
        raise TimeoutError("the read blocked on a FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)  # opening a FIFO without a writer blocks; the alarm interrupts it, failing this test only
    try:
        for path in (fifo, zero):
            with pytest.raises(ValueError, match="not a regular file"):
                search_saved_model(tmp_path / "no_model", [str(path)], k=1)  # refused before the (missing) model
            assert main(["search", "--model", str(tmp_path / "no_model"), str(path)]) == 2
            assert f"not a regular image file: {path}" in capsys.readouterr().err
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
