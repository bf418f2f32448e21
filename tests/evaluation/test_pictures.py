"""The TensorBoard pictures: retrieval grid and S_img | S_lang figure, drawn and read back from event files."""

import dataclasses
import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from helpers import tiny_guided_model

from tf_langdml import keras
from tf_langdml.data import make_train_dataset
from tf_langdml.evaluation import (
    LanguageGuidanceTensorBoard,
    RetrievalEvaluation,
    RetrievalPictures,
    nearest_neighbors,
    pictures,
    retrieval_grid,
    similarity_figure,
)


def frame_colour(picture, row, column):
    """Mean colour of a strip just inside the top edge of a cell's frame, and of the cell's centre."""
    top, left, bottom, right = pictures.grid_cell_box(row, column)
    strip = picture[top + 2 : top + 6, left + 20 : right - 20].reshape(-1, 3).mean(axis=0)
    middle_row, middle_column = (top + bottom) // 2, (left + right) // 2
    centre = picture[middle_row - 5 : middle_row + 5, middle_column - 5 : middle_column + 5]
    return strip, centre.reshape(-1, 3).mean(axis=0)


def is_green(colour):
    return colour[1] > 120 and colour[0] < 60 and colour[2] < 60


def is_red(colour):
    return colour[0] > 150 and colour[1] < 60 and colour[2] < 60


def red_and_blue(region):
    region = region.astype(int)
    red = region[..., 0] - region[..., 2] > 60  # RdBu_r: +1 is (103, 0, 31), -1 is (5, 48, 97)
    blue = region[..., 2] - region[..., 0] > 60
    return red.sum(), blue.sum()


def test_retrieval_grid_frames_same_class_green_and_other_class_red():
    square = lambda value: np.full((64, 64, 3), value, np.uint8)
    grid = retrieval_grid(
        [square(128)],
        ["black footed albatross"],
        [[square(200), square(60)]],
        [["black footed albatross", "a very long class name that cannot fit on two short lines"]],
        [[True, False]],
        scores=[[0.9, 0.2]],
    )
    columns = 3
    assert grid.dtype == np.uint8
    assert grid.shape == (pictures.CELL_HEIGHT, columns * pictures.CELL_WIDTH + pictures.QUERY_GAP, 3)
    query_frame, query_centre = frame_colour(grid, 0, 0)
    same_frame, same_centre = frame_colour(grid, 0, 1)
    other_frame, other_centre = frame_colour(grid, 0, 2)
    assert np.all(query_frame < 40)  # neutral black
    assert is_green(same_frame) and not is_red(same_frame)
    assert is_red(other_frame) and not is_green(other_frame)
    # The frames surround the images themselves.
    np.testing.assert_allclose(query_centre, 128, atol=3)
    np.testing.assert_allclose(same_centre, 200, atol=3)
    np.testing.assert_allclose(other_centre, 60, atol=3)

    figure = pictures._retrieval_plot(
        [square(128)],
        ["black footed albatross"],
        [[square(200), square(60)]],
        [["black footed albatross", "x" * 80]],
        [[True, False]],
        [[0.9, 0.2]],
    )
    titles = [text.get_text() for text in figure.texts]
    assert titles[0] == "query: black footed\nalbatross"
    assert titles[1] == "black footed albatross\ncos 0.900"
    assert titles[2].endswith("…\ncos 0.200")
    assert max(len(line) for line in titles[2].split("\n")) <= pictures.TITLE_WIDTH


def test_short_names_are_wrapped_and_cut():
    assert pictures.short_name("laysan albatross") == "laysan albatross"
    lines = pictures.short_name("the quick brown fox jumps over the lazy dog " * 3, width=16, lines=2).split("\n")
    assert len(lines) == 2 and all(len(line) <= 16 for line in lines) and lines[1].endswith("…")


def test_similarity_figure_has_both_panels_a_colour_bar_and_class_names():
    labels = np.repeat(np.arange(4), 2)
    signs = np.where(labels % 2 == 0, 1.0, -1.0)
    image_similarity = np.outer(signs, signs)  # +1 within the even / odd groups, -1 across
    language_similarity = -image_similarity
    names = ["cardinal", "cardinal", "blue jay", "blue jay", "american crow", "american crow", "fish crow", "fish crow"]
    figure = pictures._similarity_plot(image_similarity, language_similarity, names)
    picture = pictures._to_array(figure)
    assert picture.shape == (pictures.SIMILARITY_SIZE[1], pictures.SIMILARITY_SIZE[0], 3)
    np.testing.assert_array_equal(picture, similarity_figure(image_similarity, language_similarity, names))
    left, right, colour_bar = figure.axes
    assert [left.get_title(), right.get_title()] == ["S_img (image embeddings)", "S_lang (language)"]
    for axes in (left, right):
        assert [label.get_text() for label in axes.get_yticklabels()] == names
        assert [label.get_text() for label in axes.get_xticklabels()] == names
    assert colour_bar.get_ylim() == (-1.0, 1.0)  # one fixed scale
    height = picture.shape[0]
    for axes in (left, right, colour_bar):  # every panel shows both ends of the scale
        box = axes.get_window_extent()
        region = picture[int(height - box.y1) + 3 : int(height - box.y0) - 3, int(box.x0) + 3 : int(box.x1) - 3]
        red, blue = red_and_blue(region)
        assert red > 100 and blue > 100

    # A large batch: every n-th row is labelled; no language table: an empty right panel.
    big = similarity_figure(np.eye(100), None, [f"class {index}" for index in range(100)])
    assert big.shape == picture.shape
    figure = pictures._similarity_plot(np.eye(100), None, [f"class {index}" for index in range(100)])
    labels = [label.get_text() for label in figure.axes[0].get_yticklabels()]
    assert labels == [f"class {index}" for index in range(0, 100, 3)]
    assert figure.axes[1].get_title() == "S_lang: no language table" and not figure.axes[1].images


def read_images(folder, tag):
    images = []
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    encoded = tf.make_ndarray(value.tensor)  # width, height, PNG
                    images.append((event.step, tf.io.decode_png(encoded[2]).numpy()))
    return images


def test_retrieval_pictures_and_heat_map_during_fit(colour_data, tmp_path):
    train_split, test_split = colour_data.train_split, colour_data.test_split
    # Language rows v, -v, w, -w: S_lang of the fixed batch holds +1 and -1.
    table = np.array([[[1.0, 0.0]], [[-1.0, 0.0]], [[0.0, 1.0]], [[0.0, -1.0]]], np.float32)
    model = tiny_guided_model(table, optimizer=keras.optimizers.SGD(0.05), language_weight=1.0)
    train = make_train_dataset(train_split, batch_size=8, examples_per_class=2, seed=0, image_size=16)
    fixed_batch = next(iter(train))
    log_dir = str(tmp_path / "logs")
    evaluation = RetrievalEvaluation(test_split, every=1, batch_size=16, image_size=16, log_dir=log_dir, verbose=0)
    drawn = RetrievalPictures(evaluation, log_dir, image_size=32)
    board = LanguageGuidanceTensorBoard(log_dir, fixed_batch=fixed_batch, every=2, class_names=train_split.class_names)
    model.fit(train, steps_per_epoch=1, epochs=2, verbose=0, callbacks=[evaluation, drawn, board])

    # One grid per evaluation, in the metrics' folder, at the evaluation's step.
    images = read_images(os.path.join(log_dir, "validation"), "retrieval/top5")
    assert [step for step, _ in images] == [epoch for epoch, _ in evaluation.results] == [1, 2]
    assert drawn.writer is evaluation.writer
    for _, picture in images:
        assert picture.shape == (8 * pictures.CELL_HEIGHT, 6 * pictures.CELL_WIDTH + pictures.QUERY_GAP, 3)
        assert picture.shape[1] >= 800
    # The same 8 queries every time: all 4 test classes, 2 each.
    (_, first_queries, _), (_, last_queries, found) = drawn.pictures
    np.testing.assert_array_equal(first_queries, last_queries)
    labels = test_split.labels
    assert len(set(first_queries)) == 8 and sorted(np.bincount(labels[first_queries])) == [2, 2, 2, 2]
    # The neighbours are the leave-one-out kNN of the last evaluation's embeddings.
    np.testing.assert_array_equal(found, nearest_neighbors(evaluation.last_embeddings, k=5)[0][first_queries])
    # Every frame says whether the retrieval is of the query's class.
    last = images[-1][1]
    same = labels[found] == labels[first_queries][:, None]
    assert same.any() and not same.all()
    for row in range(8):
        assert np.all(frame_colour(last, row, 0)[0] < 40)
        for column in range(5):
            strip = frame_colour(last, row, column + 1)[0]
            assert is_green(strip) if same[row, column] else is_red(strip), (row, column)

    # The heat map at epoch 2: the figure's size, and S_lang's +1 / -1 in red and blue.
    heat_maps = read_images(os.path.join(log_dir, "train"), "similarity/image_vs_language")
    assert [step for step, _ in heat_maps] == [2]
    heat_map = heat_maps[0][1]
    assert heat_map.shape == (pictures.SIMILARITY_SIZE[1], pictures.SIMILARITY_SIZE[0], 3)
    red, blue = red_and_blue(heat_map[:, heat_map.shape[1] // 2 :])  # S_lang and the colour bar
    assert red > 1000 and blue > 1000
    assert board.class_names == train_split.class_names


def test_retrieval_pictures_must_follow_the_evaluation(colour_data, tmp_path):
    model = tiny_guided_model(embed_dim=4, optimizer=keras.optimizers.SGD(0.05))
    train = make_train_dataset(colour_data.train_split, batch_size=8, examples_per_class=2, seed=0, image_size=16)
    evaluation = RetrievalEvaluation(colour_data.test_split, image_size=16, log_dir=str(tmp_path), verbose=0)
    drawn = RetrievalPictures(evaluation, str(tmp_path), image_size=16)
    with pytest.raises(RuntimeError, match="after its RetrievalEvaluation"):
        model.fit(train, steps_per_epoch=1, epochs=1, verbose=0, callbacks=[drawn, evaluation])
    with pytest.raises(TypeError, match="RetrievalEvaluation"):
        RetrievalPictures(object(), str(tmp_path))
    with pytest.raises(ValueError, match="log_dir"):
        RetrievalPictures(RetrievalEvaluation(colour_data.test_split), None)


def test_a_gallery_split_queries_its_queries_against_its_gallery(colour_data, tmp_path):
    split = colour_data.test_split
    gallery = np.arange(len(split.labels)) % 4 >= 2  # per class of 4: 2 queries, 2 gallery images
    split = dataclasses.replace(split, gallery=gallery)
    drawn = RetrievalPictures(RetrievalEvaluation(split, verbose=0), str(tmp_path), num_queries=4, k=3)
    drawn.queries = drawn.choose_queries()
    assert not gallery[drawn.queries].any() and sorted(split.labels[drawn.queries]) == [0, 1, 2, 3]
    embeddings = np.random.default_rng(0).normal(size=(len(split.labels), 8))
    found, scores = drawn.neighbors(embeddings)
    assert found.shape == (4, 3) and gallery[found].all()
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    expected = np.flatnonzero(gallery)[np.argsort(-(unit[drawn.queries] @ unit[gallery].T), axis=1)[:, :3]]
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", unit[drawn.queries], unit[found]), atol=1e-5)
