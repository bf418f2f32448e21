"""Searchable exports: the chunked exact top-k, the search signatures, `tf-langdml index` / `search`, versions."""

import base64
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from helpers import quiet_env, run_saved_model_cli, write_fake_run
from PIL import Image

from tf_langdml.cli import main
from tf_langdml.export import ASSET_NAME, export_embedder
from tf_langdml.gallery import Gallery, folder_items, read_gallery
from tf_langdml.inference import embed_split
from tf_langdml.models import build_embedder
from tf_langdml.runs.serving import gallery_split
from tf_langdml.runs.trained_embedder import restore_embedder
from tf_langdml.top_k import GROUP_ROWS, GROUPED_SELECTION_FACTOR, _top_k_by_groups, top_k_in_chunks

SIZE = 16


def brute_force(queries, gallery, k):
    """Reference: every score in float64, one stable sort (descending score, then ascending row)."""
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    scores = queries.astype(np.float64) @ gallery.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order, scores


def assert_same_neighbours(scores, indices, queries, gallery, tolerance=1e-5):
    """Scores, order and ids as a full float64 sort gives them; ids may differ only among tied scores.

    Every returned item's true score must be its rank's score (within ``tolerance``),
    the ids of a row are distinct, and at a rank whose score is unique (no other item
    within ``tolerance``) the id must be the reference's.
    """
    count, k = gallery.shape[0], indices.shape[1]
    expected_scores, expected_indices, full = brute_force(queries, gallery, min(k + 1, count))
    np.testing.assert_allclose(scores, expected_scores[:, :k], atol=tolerance)
    np.testing.assert_allclose(np.take_along_axis(full, indices, axis=1), expected_scores[:, :k], atol=tolerance)
    assert all(len(set(row)) == k for row in indices)
    padded = np.pad(expected_scores, ((0, 0), (1, 1)), constant_values=np.nan)
    gaps = np.minimum(np.abs(padded[:, 1:-1] - padded[:, :-2]), np.abs(padded[:, 1:-1] - padded[:, 2:]))
    unique = np.where(np.isnan(gaps), np.inf, gaps)[:, :k] > tolerance
    np.testing.assert_array_equal(indices[unique], expected_indices[:, :k][unique])


def random_gallery(count=3000, dim=16, duplicates=40, seed=0):
    """Gaussian unit vectors; the last ``duplicates`` rows repeat earlier rows exactly (exact ties)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    vectors[count - duplicates :] = vectors[rng.choice(count - duplicates, duplicates, replace=False)]
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("k", [1, 5, 1500, 3000])
def test_chunked_top_k_equals_a_full_sort(graph, k):
    gallery = random_gallery()
    queries = np.concatenate([np.random.default_rng(1).standard_normal((5, 16)), gallery[[2990, 2995, 7]]]).astype(
        np.float32
    )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)  # inner products of unit vectors = cosine
    search = tf.function(top_k_in_chunks) if graph else top_k_in_chunks
    # 8 queries x 1024 rows per chunk: three chunks, the last one partial; k = 1500 exceeds one chunk.
    scores, indices = search(queries, tf.constant(gallery), tf.constant(k), 1)
    assert scores.shape == indices.shape == (8, k)
    assert_same_neighbours(scores.numpy(), indices.numpy(), queries, gallery)


def test_exact_ties_rank_the_lower_row_first_across_chunks():
    vector = np.eye(4, dtype=np.float32)[0]
    gallery = np.tile(np.eye(4, dtype=np.float32)[1], (2500, 1))
    gallery[[3, 1100, 2400]] = vector  # one copy in each of three chunks
    scores, indices = top_k_in_chunks(vector[None], tf.constant(gallery), 4, 1)
    assert list(indices.numpy()[0]) == [3, 1100, 2400, 0]
    assert list(scores.numpy()[0]) == [1.0, 1.0, 1.0, 0.0]


def tied_score_matrices():
    """(name, scores) that stress the group selection: few distinct values (ties everywhere), all equal, every
    best entry in one group, and widths that end in a partial group."""
    rng = np.random.default_rng(3)
    few_levels = rng.integers(0, 4, (6, 10 * GROUP_ROWS + 17)).astype(np.float32)
    # Ties under unequal maxima: the best groups do not come in column order, and the k-th value is tied
    # across them (a selection that kept the groups in order of their maxima would break ties wrongly).
    unequal_maxima = rng.integers(0, 3, (6, 12 * GROUP_ROWS + 9)).astype(np.float32)
    for row in unequal_maxima:
        lifted = rng.choice(12, 6, replace=False) * GROUP_ROWS + rng.integers(0, GROUP_ROWS, 6)
        row[lifted] = rng.integers(3, 6, 6)
    one_group = rng.uniform(-1, 0, (3, 8 * GROUP_ROWS)).astype(np.float32)
    one_group[:, 3 * GROUP_ROWS : 3 * GROUP_ROWS + 20] = rng.uniform(0.5, 1, (3, 20))
    return [
        ("few levels", few_levels),
        ("ties under unequal maxima", unequal_maxima),
        ("all equal", np.full((2, 5 * GROUP_ROWS + 1), 0.25, np.float32)),
        ("best in one group", one_group),
        ("uniform, partial group", rng.uniform(-1, 1, (4, 3 * GROUP_ROWS + 5)).astype(np.float32)),
    ]


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_group_selection_returns_top_k_s_values_and_positions_ties_included(graph):
    """The claim in _top_k_by_groups' docstring, against tf.math.top_k itself: bit-equal values, equal positions,
    for every k from 1 to the number of groups + 1 (past it the groups hold every column)."""
    select = tf.function(_top_k_by_groups) if graph else _top_k_by_groups
    for name, scores in tied_score_matrices():
        groups = -(-scores.shape[1] // GROUP_ROWS)
        for k in sorted({1, 2, 5, 10, 21, groups, groups + 1} & set(range(1, groups + 2))):
            values, positions = select(tf.constant(scores), tf.constant(k))
            expected_values, expected_positions = tf.math.top_k(scores, k)
            np.testing.assert_array_equal(values.numpy(), expected_values.numpy(), err_msg=f"{name}, k {k}")
            np.testing.assert_array_equal(positions.numpy(), expected_positions.numpy(), err_msg=f"{name}, k {k}")


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_grouped_chunks_equal_a_stable_sort_of_a_gallery_full_of_exact_ties(graph):
    """Chunks of 2,048 rows (32 groups) over 5,000 rows drawn from 12 sign vectors: every score is tied with
    hundreds of others across groups and chunks, and the last chunk ends in a partial group. Coordinates are
    +-1/4 in 16 dimensions (unit length), so every inner product is a multiple of 1/16 and exact in float32
    whatever the matmul's summation order; the rows must come out exactly as a stable descending sort ranks
    them, for k that select by groups and k that do not."""
    rng = np.random.default_rng(5)
    distinct = rng.choice(np.float32([-0.25, 0.25]), (12, 16))
    gallery = distinct[rng.integers(0, 12, 5000)]
    queries = np.concatenate([distinct[:3], rng.choice(np.float32([-0.25, 0.25]), (5, 16))])
    chunk_elements = len(queries) * 2048
    search = tf.function(top_k_in_chunks) if graph else top_k_in_chunks
    grouped_k = 2048 // (GROUP_ROWS * GROUPED_SELECTION_FACTOR)  # the largest k that selects by groups
    for k in (1, grouped_k, grouped_k + 1, 700):
        scores, indices = search(queries, tf.constant(gallery), tf.constant(k), chunk_elements)
        _, expected_indices, _ = brute_force(queries, gallery, k)
        np.testing.assert_array_equal(indices.numpy(), expected_indices, err_msg=f"k {k}")
        assert_same_neighbours(scores.numpy(), indices.numpy(), queries, gallery)


def test_k_outside_one_to_gallery_size_is_refused_by_value():
    gallery = tf.constant(random_gallery(50, 4, 0))
    for k in (0, 51):
        with pytest.raises(
            tf.errors.InvalidArgumentError,
            match=rf"k must be between 1 and the number of gallery "
            rf"items; got k = {k} for a gallery of 50 items",
        ):
            top_k_in_chunks(np.ones((1, 4), np.float32), gallery, k)


def test_gallery_checks_its_items():
    with pytest.raises(ValueError, match=r"occur more than once, e.g. \['a'\]"):
        Gallery(np.ones((3, 2)), ["a", "b", "a"], ["x", "x", "y"])
    with pytest.raises(ValueError, match="one of each per item"):
        Gallery(np.ones((3, 2)), ["a", "b"], ["x", "x", "y"])
    with pytest.raises(ValueError, match="NaN or Inf"):
        Gallery(np.full((1, 2), np.nan), ["a"], ["x"])
    embedder = build_embedder("toy_cnn", weights=None, embed_dim=8, input_shape=(SIZE, SIZE, 3))
    with pytest.raises(ValueError, match="4 dimensions but the embedder outputs 8"):
        export_embedder(
            embedder, "/nonexistent/never/written", gallery=Gallery(np.ones((2, 4)), ["a", "b"], ["x", "y"])
        )


def png_bytes(colour, seed, size=24):
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.asarray(colour) + rng.integers(-25, 26, (size, size, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def random_export(tmp_path_factory):
    """A toy embedder exported with a 3000-item random gallery (40 exact duplicates), small chunks."""
    embedder = build_embedder("toy_cnn", weights=None, embed_dim=16, input_shape=(SIZE, SIZE, 3))
    gallery = Gallery(
        random_gallery(),
        [f"item/{index:04d}.jpg" for index in range(3000)],
        [f"class {index % 7}" for index in range(3000)],
    )
    path = export_embedder(embedder, tmp_path_factory.mktemp("saved") / "random", gallery=gallery, chunk_elements=1000)
    return embedder, gallery, path


def test_search_embeddings_signature_equals_brute_force(random_export):
    _, gallery, path = random_export
    loaded = tf.saved_model.load(str(path))
    queries = np.concatenate([np.random.default_rng(2).standard_normal((6, 16)), gallery.embeddings[[2999, 5]]])
    outputs = loaded.signatures["search_embeddings"](embeddings=tf.constant(queries, tf.float32), k=tf.constant(10))
    indices = outputs["indices"].numpy()
    assert_same_neighbours(outputs["scores"].numpy(), indices, queries, gallery.embeddings)
    assert (outputs["item_ids"].numpy().astype(str) == gallery.item_ids[indices]).all()
    assert (outputs["class_names"].numpy().astype(str) == gallery.class_names[indices]).all()
    # A query that is a gallery item finds itself (score 1) first; its duplicate, if any, ties with it.
    assert outputs["item_ids"].numpy()[7, 0] == b"item/0005.jpg" or outputs["scores"].numpy()[7, 1] >= 1 - 1e-6
    assert abs(outputs["scores"].numpy()[6, 0] - 1) <= 1e-6
    with pytest.raises(tf.errors.InvalidArgumentError, match="k must be between 1 and the number of gallery items"):
        loaded.signatures["search_embeddings"](embeddings=tf.constant(queries[:1], tf.float32), k=tf.constant(3001))


def test_search_signature_embeds_image_bytes_like_serving_default(random_export):
    _, gallery, path = random_export
    loaded = tf.saved_model.load(str(path))
    images = tf.constant([png_bytes((200, 30, 30), 0), png_bytes((20, 30, 220), 1)])
    embeddings = loaded.signatures["serving_default"](images=images)["embeddings"].numpy()
    found = loaded.signatures["search"](images=images, k=tf.constant(4))
    assert_same_neighbours(found["scores"].numpy(), found["indices"].numpy(), embeddings, gallery.embeddings)
    metadata = json.loads((path / "assets" / ASSET_NAME).read_text())
    assert metadata["gallery"]["items"] == 3000 and metadata["gallery"]["classes"] == 7


def test_a_tf_serving_rest_body_through_saved_model_cli(random_export, tmp_path):
    """The README's columnar REST body, decoded as TF Serving does ({"b64": ...} -> bytes), run by saved_model_cli."""
    _, gallery, path = random_export
    photo = png_bytes((90, 200, 90), 3)
    body = json.dumps(
        {"signature_name": "search", "inputs": {"images": [{"b64": base64.b64encode(photo).decode("ascii")}], "k": 3}}
    )
    request = json.loads(body)["inputs"]
    np.save(tmp_path / "images.npy", np.array([base64.b64decode(item["b64"]) for item in request["images"]]))
    np.save(tmp_path / "k.npy", np.array(request["k"], np.int32))  # a JSON number for an int32 scalar input
    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures["search"]
    assert signature.structured_input_signature[1] == {
        "images": tf.TensorSpec([None], tf.string, "images"),
        "k": tf.TensorSpec([], tf.int32, "k"),
    }
    assert {name: (spec.dtype, spec.shape.as_list()) for name, spec in signature.structured_outputs.items()} == {
        "item_ids": (tf.string, [None, None]),
        "class_names": (tf.string, [None, None]),
        "scores": (tf.float32, [None, None]),
        "indices": (tf.int32, [None, None]),
    }
    run_saved_model_cli(
        path, "search", f"images={tmp_path / 'images.npy'};k={tmp_path / 'k.npy'}", "--outdir", tmp_path / "out"
    )
    served_ids = np.load(tmp_path / "out" / "item_ids.npy", allow_pickle=True)
    served_scores = np.load(tmp_path / "out" / "scores.npy")
    expected = signature(images=tf.constant([photo]), k=tf.constant(3))
    assert served_ids.shape == (1, 3) and list(served_ids[0]) == list(expected["item_ids"].numpy()[0])
    np.testing.assert_allclose(served_scores, expected["scores"].numpy(), atol=1e-6)


# -- tf-langdml index / search on a fabricated finished run ---------------------------------------------------------

COLOURS = {
    "red_apple": (210, 30, 30),
    "green_frog": (30, 200, 40),
    "blue_whale": (30, 40, 210),
    "grey_mouse": (128, 128, 128),
}


def write_folder(root, classes, per_class, seed):
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for image in range(per_class):
            (root / name / f"{seed}_{image}.png").write_bytes(png_bytes(COLOURS[name], seed * 100 + index * 10 + image))
    return root


def fake_run(folder, run_dir, seed=0):
    """A finished run directory over ``folder`` (toy_cnn, random weights for ``seed``) without training."""
    return write_fake_run(
        run_dir,
        folder,
        image_size=SIZE,
        seed=seed,
        train_class_names=["green frog"],
        overrides=["evaluation.batch_size=8"],
    )


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """Run + gallery A (3 classes x 3) indexed as version 1, then gallery B (2 more images each of 2 classes) added."""
    base = tmp_path_factory.mktemp("index")
    train_folder = write_folder(base / "train_folder", ["red_apple", "green_frog"], 2, 0)
    run = fake_run(train_folder, base / "run")
    gallery_a = write_folder(base / "gallery_a", ["red_apple", "green_frog", "blue_whale"], 3, 1)
    (gallery_a / "blue_whale" / "gallery").mkdir()  # deeper folders belong to their class folder
    (gallery_a / "blue_whale" / "gallery" / "deep.png").write_bytes(png_bytes(COLOURS["blue_whale"], 77))
    (gallery_a / "red_apple" / "notes.txt").write_text("not an image")
    gallery_b = write_folder(base / "gallery_b", ["grey_mouse", "red_apple"], 2, 2)
    saved = base / "saved_models"
    common = ["--run", str(run), "--name", "shop", "--saved-models", str(saved)]
    assert main(["index", "--gallery", str(gallery_a), *common]) == 0
    assert main(["index", "--gallery", str(gallery_b), "--add", *common]) == 0
    return run, gallery_a, gallery_b, saved / "shop"


def test_index_writes_versions_and_add_appends_in_a_new_one(indexed):
    run, gallery_a, gallery_b, model_dir = indexed
    assert sorted(path.name for path in model_dir.iterdir()) == ["1", "2"]
    first, metadata = read_gallery(model_dir / "1")
    both, metadata_2 = read_gallery(model_dir / "2")
    assert list(first.item_ids) == [
        "blue_whale/1_0.png",
        "blue_whale/1_1.png",
        "blue_whale/1_2.png",
        "blue_whale/gallery/deep.png",
        "green_frog/1_0.png",
        "green_frog/1_1.png",
        "green_frog/1_2.png",
        "red_apple/1_0.png",
        "red_apple/1_1.png",
        "red_apple/1_2.png",
    ]
    assert list(first.class_names[:4]) == ["blue whale"] * 4
    assert len(both) == 14 and list(both.item_ids[:10]) == list(first.item_ids)
    np.testing.assert_array_equal(both.embeddings[:10], first.embeddings)  # the old items are kept, not re-embedded
    assert list(both.item_ids[10:]) == [
        "grey_mouse/2_0.png",
        "grey_mouse/2_1.png",
        "red_apple/2_0.png",
        "red_apple/2_1.png",
    ]
    assert [source["items"] for source in metadata_2["gallery"]["source"]] == [10, 4]
    assert metadata["gallery"]["source"][0]["folder"] == str(gallery_a.resolve())
    # The policy the gallery was embedded in and the export computes in: the run's (no run_log.jsonl here).
    assert metadata_2["precision"] == "float32"
    assert [(source["precision"], source["precision_from"]) for source in metadata_2["gallery"]["source"]] == [
        ("float32", "the run's training.precision, resolved here")
    ] * 2
    # The gallery embeddings are the run's embedder's, as the evaluation pipeline computes them.
    run_config, embedder = restore_embedder(run)
    split, ids, _ = gallery_split(str(gallery_b), run_config)
    expected = embed_split(embedder, split, 8, SIZE, verbose=0)
    np.testing.assert_allclose(
        both.embeddings[10:], expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6
    )


def test_index_add_refuses_repeated_items_and_another_run_and_writes_nothing(indexed, tmp_path, capsys):
    run, gallery_a, gallery_b, model_dir = indexed
    common = ["--name", "shop", "--saved-models", str(model_dir.parent)]
    assert main(["index", "--run", str(run), "--gallery", str(gallery_b), "--add", *common]) == 2
    assert "4 item id(s)" in capsys.readouterr().err
    other = fake_run(gallery_a, tmp_path / "other_run", seed=1)
    assert main(["index", "--run", str(other), "--gallery", str(tmp_path), "--add", *common]) == 2
    assert "another run's embedder or config" in capsys.readouterr().err
    assert main(["index", "--run", str(run), "--gallery", str(tmp_path / "missing"), *common]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert sorted(path.name for path in model_dir.iterdir()) == ["1", "2"]  # nothing half written


def test_search_command_prints_the_neighbours_and_json(indexed, capsys):
    _, gallery_a, gallery_b, model_dir = indexed
    query = gallery_a / "blue_whale" / "1_0.png"
    assert main(["search", "--model", str(model_dir), str(query), "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(query) and len(lines) == 4
    assert lines[1].split() == ["1", "1.0000", "blue", "whale", "blue_whale/1_0.png"]  # the item itself, score 1
    assert (
        main(
            ["search", "--model", str(model_dir / "1"), str(query), str(gallery_b / "grey_mouse" / "2_1.png"), "--json"]
        )
        == 0
    )
    results = json.loads(capsys.readouterr().out)
    assert [result["image"] for result in results] == [str(query), str(gallery_b / "grey_mouse" / "2_1.png")]
    assert [len(result["neighbours"]) for result in results] == [5, 5]
    assert all("grey_mouse" not in neighbour["item_id"] for neighbour in results[1]["neighbours"])  # version 1
    assert results[0]["neighbours"][0] == {
        "rank": 1,
        "item_id": "blue_whale/1_0.png",
        "class_name": "blue whale",
        "score": pytest.approx(1.0, abs=1e-5),
    }


def test_search_command_names_bad_images_and_k(indexed, tmp_path, capsys):
    _, gallery_a, _, model_dir = indexed
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    good = gallery_a / "red_apple" / "1_0.png"
    assert main(["search", "--model", str(model_dir), str(good), str(broken)]) == 2
    error = capsys.readouterr().err
    assert "nothing was embedded" in error and f"{broken}:" in error and f"{good}:" not in error
    assert main(["search", "--model", str(model_dir), str(good), "--k", "15"]) == 2
    assert "k = 15 for a gallery of 14 items" in capsys.readouterr().err
    assert main(["search", "--model", str(tmp_path), str(good)]) == 2
    assert "neither a SavedModel folder" in capsys.readouterr().err


def test_folder_items_reads_every_depth_below_the_class(tmp_path):
    write_folder(tmp_path, ["red_apple"], 1, 0)
    (tmp_path / "red_apple" / "a" / "b").mkdir(parents=True)
    (tmp_path / "red_apple" / "a" / "b" / "x.jpg").write_bytes(b"")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "loose.png").write_bytes(b"")
    paths, ids, classes = folder_items(tmp_path)
    assert ids == ["red_apple/0_0.png", "red_apple/a/b/x.jpg"] and classes == ["red_apple", "red_apple"]
    (tmp_path / "empty" / "only_text").mkdir(parents=True)
    (tmp_path / "empty" / "only_text" / "notes.txt").write_text("no image")
    (tmp_path / "empty" / "loose.png").write_bytes(b"")  # not inside a class folder
    with pytest.raises(ValueError, match="has no image in any <class>/ sub-folder"):
        folder_items(tmp_path / "empty")


def test_search_memory_stays_within_one_chunk(tmp_path):
    """The claim 'no batch x N intermediate': 256 queries against 400,000 rows, in a fresh process.

    Full scores would be 256 x 400,000 float32 = 410 MB (and top_k over them more); one
    chunk at the default chunk_elements is 16 MB. The peak RSS may grow by 150 MB at most
    above the loaded gallery, warm-up included.
    """
    script = """
import resource, sys
import tf_langdml
import numpy as np, tensorflow as tf
from tf_langdml.top_k import top_k_in_chunks
rng = np.random.default_rng(0)
gallery = tf.Variable(rng.standard_normal((400_000, 32), dtype=np.float32))
queries = tf.constant(rng.standard_normal((256, 32), dtype=np.float32))
search = tf.function(top_k_in_chunks)
search(queries[:2], gallery[:5000], 3)  # trace and warm up the kernels on a small gallery
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
scores, indices = search(queries, gallery, 10)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024, int(indices.shape[1]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=quiet_env())
    assert result.returncode == 0, result.stderr[-2000:]
    growth_mb, k = result.stdout.split()
    assert int(k) == 10
    assert float(growth_mb) < 150, f"peak RSS grew by {growth_mb} MB during the search"


def test_a_split_of_the_run_s_dataset_as_gallery(indexed):
    run, _, _, _ = indexed
    config, _ = restore_embedder(run)
    split, ids, description = gallery_split("test", config)  # the run's folder: green_frog train, red_apple test
    assert ids == ["red_apple/0_0.png", "red_apple/0_1.png"] and split.class_names == ("red apple",)
    assert description == {"split": "test", "dataset": "folder"}
    with pytest.raises(ValueError, match="has no validation split"):
        gallery_split("validation", config)
