"""folder_items (tf-langdml index --gallery) opens only regular files and counts what it skips by kind."""

import os

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
