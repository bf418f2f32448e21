"""load_image_folder on a generated folder, and the train / eval pipelines built on it."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from tf_langdml.data import load_image_folder, make_eval_dataset, make_train_dataset

CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross", "004.Groove_billed_Ani"]


def write_image(path, mode, fmt, seed, size=(40, 30)):
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(array).convert(mode).save(path, format=fmt)


@pytest.fixture
def image_root(tmp_path):
    kinds = [("RGB", "JPEG", ".jpg"), ("RGB", "PNG", ".png"), ("L", "JPEG", ".jpeg"), ("CMYK", "JPEG", ".JPG")]
    for class_index, name in enumerate(CLASSES):
        folder = tmp_path / name
        folder.mkdir()
        for image_index, (mode, fmt, extension) in enumerate(kinds):
            write_image(folder / f"img_{image_index}{extension}", mode, fmt, seed=10 * class_index + image_index)
    good = io.BytesIO()
    write_image(good, "RGB", "JPEG", seed=99)
    (tmp_path / CLASSES[0] / "truncated.jpg").write_bytes(good.getvalue()[:200])
    (tmp_path / CLASSES[1] / "not_an_image.png").write_bytes(b"plain text, not a PNG")
    (tmp_path / CLASSES[2] / "notes.txt").write_text("annotations")
    (tmp_path / ".hidden").mkdir()
    return tmp_path


def test_loads_splits_by_class_and_skips_bad_files(image_root):
    with pytest.warns(UserWarning, match="Skipped 3 file"):
        data = load_image_folder(image_root)
    assert data.train_class_names == ["black footed albatross", "laysan albatross"]
    assert data.test_class_names == ["sooty albatross", "groove billed ani"]
    assert data.train_split.raw_class_names == tuple(CLASSES[:2])
    assert sorted(os.path.basename(path) for path in data.skipped_files) == [
        "not_an_image.png",
        "notes.txt",
        "truncated.jpg",
    ]
    for split in (data.train_split, data.test_split):
        assert split.labels.tolist() == [0] * 4 + [1] * 4
    images = list(data.train.as_numpy_iterator())
    assert len(images) == 8 and images[0][1] == 0 and images[-1][2] == 7


def test_explicit_test_classes(image_root):
    with pytest.warns(UserWarning):
        data = load_image_folder(image_root, test_classes=[CLASSES[0]])
    assert data.test_class_names == ["black footed albatross"]
    assert len(data.train_class_names) == 3
    with pytest.raises(ValueError, match=r"\['999.Dodo'\] are not class folders"):  # before any image is read
        load_image_folder(image_root, test_classes=["999.Dodo"])


def test_class_without_readable_images_is_an_error_naming_the_folder(image_root):
    empty = image_root / "005.Empty_Class"
    empty.mkdir()
    (empty / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ValueError, match="005.Empty_Class' has no readable image"):
        load_image_folder(image_root)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(image_root / "missing")


def test_train_pipeline_gives_class_balanced_augmented_batches(image_root):
    with pytest.warns(UserWarning):
        data = load_image_folder(image_root, test_classes=[CLASSES[3]])
    dataset = make_train_dataset(
        data.train_split, batch_size=6, examples_per_class=2, seed=1, image_size=32, with_sample_ids=True
    )
    batches = list(dataset.take(4).as_numpy_iterator())
    for images, labels, sample_ids in batches:
        assert images.shape == (6, 32, 32, 3) and images.dtype == np.float32
        assert 0 <= images.min() and images.max() <= 255
        assert sorted(set(labels)) == [0, 1, 2] and (labels.reshape(3, 2)[:, 0] == labels.reshape(3, 2)[:, 1]).all()
        np.testing.assert_array_equal(data.train_split.labels[sample_ids], labels)
    again = list(
        make_train_dataset(data.train_split, 6, 2, seed=1, image_size=32, with_sample_ids=True)
        .take(4)
        .as_numpy_iterator()
    )
    resumed = list(
        make_train_dataset(data.train_split, 6, 2, seed=1, image_size=32, with_sample_ids=True, start_batch=2)
        .take(2)
        .as_numpy_iterator()
    )
    for first, second in zip(batches, again):
        np.testing.assert_array_equal(first[0], second[0])
    for first, second in zip(batches[2:], resumed):
        np.testing.assert_array_equal(first[0], second[0])
        np.testing.assert_array_equal(first[2], second[2])


def test_eval_pipeline_covers_the_split_in_order_deterministically(image_root):
    with pytest.warns(UserWarning):
        data = load_image_folder(image_root)
    first = list(make_eval_dataset(data.test_split, batch_size=3, image_size=24, resize=28).as_numpy_iterator())
    second = list(make_eval_dataset(data.test_split, batch_size=3, image_size=24, resize=28).as_numpy_iterator())
    labels = np.concatenate([labels for _, labels in first])
    np.testing.assert_array_equal(labels, data.test_split.labels)
    assert first[0][0].shape == (3, 24, 24, 3)
    for (a, _), (b, _) in zip(first, second):
        np.testing.assert_array_equal(a, b)


# -- gallery marking and explicit test classes ----------------------------------------------------


@pytest.fixture
def gallery_root(tmp_path):
    """4 classes x (2 images + 2 in gallery/); class 3 has no gallery/ sub-folder. All tiny, all readable."""
    root = tmp_path / "images"
    for class_index, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for image_index in range(2):
            write_image(
                root / name / f"q{image_index}.png", "RGB", "PNG", seed=class_index * 10 + image_index, size=(8, 8)
            )
        if class_index < 3:
            (root / name / "gallery").mkdir()
            for image_index in range(2):
                write_image(
                    root / name / "gallery" / f"g{image_index}.png",
                    "RGB",
                    "PNG",
                    seed=class_index * 10 + 5 + image_index,
                    size=(8, 8),
                )
    (root / CLASSES[0] / "other").mkdir()  # other sub-folders are ignored, as before
    write_image(root / CLASSES[0] / "other" / "x.png", "RGB", "PNG", seed=77, size=(8, 8))
    return root


def test_gallery_sub_folders_mark_the_gallery_of_their_split(gallery_root):
    data = load_image_folder(gallery_root)
    test = data.test_split  # classes 2 (with gallery/) and 3 (without)
    assert [os.path.relpath(path, gallery_root) for path in test.sources] == [
        f"{CLASSES[2]}/q0.png",
        f"{CLASSES[2]}/q1.png",
        f"{CLASSES[2]}/gallery/g0.png",
        f"{CLASSES[2]}/gallery/g1.png",
        f"{CLASSES[3]}/q0.png",
        f"{CLASSES[3]}/q1.png",
    ]
    np.testing.assert_array_equal(test.gallery, [False, False, True, True, False, False])
    assert test.labels.tolist() == [0, 0, 0, 0, 1, 1]
    # Training uses every image of its classes; its mask is kept (for validation classes held out of it).
    assert len(data.train_split.labels) == 8 and data.train_split.gallery.sum() == 4
    # Without gallery/ sub-folders nothing is marked: leave-one-out.
    plain = load_image_folder(gallery_root, test_classes=[CLASSES[3]])
    assert plain.test_split.gallery is None


def test_a_gallery_list_is_equivalent_to_gallery_sub_folders(gallery_root, tmp_path):
    from_folders = load_image_folder(gallery_root)
    flat = tmp_path / "flat"
    listed = []
    for path in from_folders.test_split.sources.tolist() + from_folders.train_split.sources.tolist():
        relative = os.path.relpath(path, gallery_root)
        target = flat / relative.replace("/gallery/", "/g_")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(open(path, "rb").read())
        if "/gallery/" in relative:
            listed.append(os.path.relpath(target, flat))
    gallery_list = tmp_path / "gallery.txt"
    gallery_list.write_text("# gallery images\n\n" + "\n".join(listed) + "\n")
    from_list = load_image_folder(flat, gallery_list=gallery_list)
    for split, expected in [
        (from_list.test_split, from_folders.test_split),
        (from_list.train_split, from_folders.train_split),
    ]:
        by_name = dict(
            zip([os.path.relpath(p, flat).replace("/g_", "/gallery/") for p in split.sources], split.gallery)
        )
        assert by_name == dict(zip([os.path.relpath(p, gallery_root) for p in expected.sources], expected.gallery))
    gallery_list.write_text(f"{listed[0]}\n{CLASSES[0]}/nope.png\nmissing/x.jpg\n")
    with pytest.raises(
        ValueError, match=r"names 2 path\(s\).*\['001.Black_footed_Albatross/nope.png', 'missing/x.jpg'\]"
    ):
        load_image_folder(flat, gallery_list=gallery_list)
    with pytest.raises(FileNotFoundError, match="gallery_list file .*absent.txt"):
        load_image_folder(flat, gallery_list=tmp_path / "absent.txt")


def test_a_test_split_of_only_gallery_images_is_refused(gallery_root, tmp_path):
    gallery_list = tmp_path / "all.txt"
    gallery_list.write_text(f"{CLASSES[3]}/q0.png\n{CLASSES[3]}/q1.png\n")
    with pytest.raises(ValueError, match="needs query images"):
        load_image_folder(gallery_root, test_classes=[CLASSES[3]], gallery_list=gallery_list)


def test_test_classes_from_a_list_or_a_file_and_unknown_names_refused_by_name(gallery_root, tmp_path):
    chosen = [CLASSES[0], CLASSES[2]]
    from_list = load_image_folder(gallery_root, test_classes=chosen)
    assert from_list.test_split.raw_class_names == tuple(chosen)
    assert from_list.train_split.raw_class_names == (CLASSES[1], CLASSES[3])
    names = tmp_path / "test_classes.txt"
    names.write_text(f"# held-out classes\n{CLASSES[2]}\n\n  {CLASSES[0]}  \n")
    from_file = load_image_folder(gallery_root, test_classes=names)
    assert from_file.test_split.raw_class_names == tuple(chosen)
    np.testing.assert_array_equal(from_file.test_split.sources, from_list.test_split.sources)
    names.write_text(f"{CLASSES[2]}\n002.Laysan_Albatros\n999.Dodo\n")
    with pytest.raises(
        ValueError,
        match=r"test_classes \['002.Laysan_Albatros', '999.Dodo'\] are not class folders"
        r".*test_classes.txt.*; did you mean '002.Laysan_Albatross' for "
        r"'002.Laysan_Albatros'\?$",
    ):
        load_image_folder(gallery_root, test_classes=names)
    with pytest.raises(FileNotFoundError, match="test_classes file 'Sooty' does not exist.*pass a list"):
        load_image_folder(gallery_root, test_classes="Sooty")
    with pytest.raises(ValueError, match="covers every class"):
        load_image_folder(gallery_root, test_classes=CLASSES)


def test_libjpeg_lines_are_dropped_and_everything_else_on_fd_2_is_kept(capfd):
    import os

    from tf_langdml.data.image_folder import libjpeg_messages_dropped

    with libjpeg_messages_dropped():
        os.write(
            2,
            b"Improper call to JPEG library in state 201\nkeep this line\nCorrupt JPEG data: 3 extraneous "
            b"bytes before marker 0xd9\nPremature end of JPEG file\nand this one\n",
        )
    assert capfd.readouterr().err == "keep this line\nand this one\n"
    with pytest.raises(RuntimeError, match="raised inside"), libjpeg_messages_dropped():  # fd 2 is restored anyway
        os.write(2, b"Not a JPEG file: starts with 0x89 0x50\nbefore the error\n")
        raise RuntimeError("raised inside")
    os.write(2, b"after the block\n")
    assert capfd.readouterr().err == "before the error\nafter the block\n"
