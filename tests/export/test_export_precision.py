"""Exports computing in bfloat16 (precision="mixed_bfloat16"): fresh-process round trip, dtypes, assets, CLI;
`index`: the run's policy for the gallery and the export, --precision, the batch-size rule."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from helpers import quiet_env, write_fake_run
from PIL import Image

import tf_langdml.export
import tf_langdml.inference
import tf_langdml.runs.serving
from tf_langdml._keras import keras
from tf_langdml.cli import main
from tf_langdml.data import decode_rgb, eval_preprocess
from tf_langdml.data.splits import Split
from tf_langdml.export import ASSET_NAME, export_embedder, with_precision
from tf_langdml.gallery import Gallery
from tf_langdml.inference import gallery_batch_size
from tf_langdml.models import build_embedder
from tf_langdml.models.layers import L2Normalize
from tf_langdml.runs.run_dir import log_event
from tf_langdml.runs.schema import load_config
from tf_langdml.runs.serving import index_batch_size

SIZE = 32
DIM = 16

# The tolerance against the float32 embedder, from bfloat16's 8-bit significand (7 stored bits + the implicit
# one): rounding to nearest gives a relative error of at most u = 2^-9 per rounded value. Along toy_cnn's path
# the values are rounded k = 16 times: the float32 input cast to bfloat16 (1), the normalisation x / 127.5 - 1
# (2), three conv blocks of kernel cast + conv output + BatchNorm output (3 x 3; ReLU is exact), the average
# pool (1), and the projection's kernel cast, matmul and bias add (3). To first order, and taking each layer as
# not amplifying a relative error (no cancellation), the pre-normalisation vector is off by at most k u
# relatively, and normalising at most doubles that (|a/|a| - b/|b|| <= 2 |a - b| / |a|): every entry of the
# unit embedding is within 2 k u = 1/16 of the float32 one. Measured here: <= 0.0024 per entry on the 16 random
# images (0.0045 in 2-norm), 0.0038 on the 2 JPEGs, so the first-order bound holds with a wide margin.
BFLOAT16_U = 2.0**-9
ROUNDINGS = 16
BFLOAT16_TOLERANCE = 2 * ROUNDINGS * BFLOAT16_U
# The float32 export differs from the in-memory float32 model by <= 1e-5 (tests/export/test_export.py); a
# bfloat16 export that differed by no more than 10x that would not be computing in bfloat16.
NOT_FLOAT32 = 1e-4


def jpeg_bytes(seed, shape=(40, 50)):
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(128, 40, shape + (3,)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def preprocessed(encoded):
    return tf.stack(
        [eval_preprocess(decode_rgb(tf.constant(item)), round(SIZE * 256 / 224), SIZE) for item in encoded]
    ).numpy()


FRESH_PROCESS = """
import json, sys
import numpy as np, tensorflow as tf
folder, path = sys.argv[1], sys.argv[2]
loaded = tf.saved_model.load(path)
encoded = [open(f"{folder}/{index}.jpg", "rb").read() for index in range(2)]
embed = loaded.signatures["embed_images"]
floats = embed(images=tf.constant(np.load(f"{folder}/images.npy")))["embeddings"]
served = loaded.signatures["serving_default"](images=tf.constant(encoded))["embeddings"]
found = loaded.signatures["search"](images=tf.constant(encoded), k=tf.constant(3))
np.savez(f"{folder}/outputs.npz", floats=floats.numpy(), served=served.numpy(), scores=found["scores"].numpy(),
         indices=found["indices"].numpy())
graph = embed.graph.as_graph_def()
computed = sorted({(node.op, tf.dtypes.as_dtype(node.attr["T"].type).name) for function in graph.library.function
                   for node in function.node_def if node.op in ("Conv2D", "MatMul", "FusedBatchNormV3")})
json.dump({"computed": computed, "inputs": {name: spec.dtype.name for name, spec in embed.structured_input_signature[1].items()},
           "outputs": [value.dtype.name for value in (floats, served, found["scores"])]},
          open(f"{folder}/graph.json", "w"))
"""


@pytest.fixture(scope="module")
def bfloat16_export(tmp_path_factory):
    """A toy embedder exported in bfloat16 with an 8-item gallery, reloaded and run in a fresh process."""
    folder = tmp_path_factory.mktemp("bfloat16")
    tf.keras.utils.set_random_seed(0)
    embedder = build_embedder("toy_cnn", weights=None, embed_dim=DIM, input_shape=(SIZE, SIZE, 3))
    encoded = [jpeg_bytes(0), jpeg_bytes(1, (64, 30))]
    for index, data in enumerate(encoded):
        (folder / f"{index}.jpg").write_bytes(data)
    images = np.random.default_rng(0).uniform(0, 255, (16, SIZE, SIZE, 3)).astype(np.float32)
    np.save(folder / "images.npy", images)
    # The gallery: the two JPEGs embedded in float32 (rows 0, 1), then 6 random unit vectors.
    others = np.random.default_rng(1).normal(size=(6, DIM)).astype(np.float32)
    gallery = Gallery(
        np.concatenate([embedder(preprocessed(encoded), training=False).numpy(), others]),
        [f"item/{index}" for index in range(8)],
        ["photo"] * 2 + ["random"] * 6,
    )
    path = export_embedder(embedder, folder / "saved" / "bf16", gallery=gallery, precision="mixed_bfloat16")
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(folder), str(path)], capture_output=True, text=True, env=quiet_env()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {
        "embedder": embedder,
        "path": path,
        "images": images,
        "encoded": encoded,
        "gallery": gallery,
        "outputs": dict(np.load(folder / "outputs.npz")),
        "graph": json.loads((folder / "graph.json").read_text()),
    }


def test_bfloat16_export_reloaded_in_a_fresh_process_is_within_the_bfloat16_tolerance(bfloat16_export):
    embedder, images, outputs = bfloat16_export["embedder"], bfloat16_export["images"], bfloat16_export["outputs"]
    float32 = embedder(images, training=False).numpy()
    float32_served = embedder(preprocessed(bfloat16_export["encoded"]), training=False).numpy()
    for reloaded, expected in ((outputs["floats"], float32), (outputs["served"], float32_served)):
        difference = np.abs(reloaded - expected).max()
        assert NOT_FLOAT32 < difference <= BFLOAT16_TOLERANCE, difference
        np.testing.assert_allclose(np.linalg.norm(reloaded, axis=1), 1.0, atol=1e-5)  # normalised in float32
    # The same bfloat16 computation in memory, traced as the export is: the same graph, so the same numbers
    # (graph rewrites fuse conv + BatchNorm and skip a bfloat16 rounding that eager calls make, so an eager
    # call of the clone is only within the bfloat16 tolerance).
    clone = with_precision(embedder, "mixed_bfloat16")
    traced = tf.function(lambda batch: tf.math.l2_normalize(tf.cast(clone(batch, training=False), tf.float32), -1))
    np.testing.assert_allclose(outputs["floats"], traced(tf.constant(images)).numpy(), atol=1e-6)
    eager = tf.math.l2_normalize(tf.cast(clone(images, training=False), tf.float32), -1).numpy()
    assert np.abs(eager - float32).max() <= BFLOAT16_TOLERANCE


def test_the_export_computes_in_bfloat16_with_float32_variables_inputs_and_outputs(bfloat16_export):
    graph = bfloat16_export["graph"]
    assert ["Conv2D", "bfloat16"] in graph["computed"] and ["MatMul", "bfloat16"] in graph["computed"]
    assert ["Conv2D", "float32"] not in graph["computed"] and ["MatMul", "float32"] not in graph["computed"]
    assert graph["inputs"] == {"images": "float32"} and graph["outputs"] == ["float32"] * 3
    embedder = bfloat16_export["embedder"]
    clone = with_precision(embedder, "mixed_bfloat16")
    layers = [layer for layer in clone.layers + clone.get_layer("toy_cnn").layers if not isinstance(layer, keras.Model)]
    computing = {layer.name: layer.compute_dtype for layer in layers}
    assert computing["toy_conv0"] == computing["toy_bn2"] == computing["projection"] == "bfloat16"
    assert computing["images"] == computing["l2_normalize"] == "float32"  # float32 in, float32 out
    assert {variable.dtype for variable in clone.weights} == {tf.float32}
    for cloned, original in zip(clone.get_weights(), embedder.get_weights()):
        np.testing.assert_array_equal(cloned, original)
    assert with_precision(embedder, "float32") is embedder  # the default exports the model as it is


def test_search_keeps_the_gallery_and_the_scores_in_float32(bfloat16_export):
    outputs, gallery = bfloat16_export["outputs"], bfloat16_export["gallery"]
    # Rows 0 and 1 are the two photos embedded in float32; the bfloat16 queries still find them first.
    np.testing.assert_array_equal(outputs["indices"][:, 0], [0, 1])
    expected = np.take_along_axis(outputs["served"] @ gallery.embeddings.T, outputs["indices"], axis=1)
    np.testing.assert_allclose(outputs["scores"], expected, atol=1e-6)
    assert outputs["scores"].dtype == np.float32 and np.all(outputs["scores"][:, 0] > 1 - BFLOAT16_TOLERANCE**2)


def test_assets_record_the_precision(bfloat16_export):
    metadata = json.loads((bfloat16_export["path"] / "assets" / ASSET_NAME).read_text())
    assert metadata["precision"] == "mixed_bfloat16"
    assert "bfloat16" in metadata["precision_note"] and "float32" in metadata["precision_note"]


def fake_run(base):
    """A finished run directory over a 2-class folder of 2 PNGs each (the index command's gallery too)."""
    folder = base / "photos"
    for label, name in enumerate(["red_apple", "green_frog"]):
        (folder / name).mkdir(parents=True)
        for image in range(2):
            buffer = io.BytesIO()
            pixels = np.random.default_rng(10 * label + image).integers(0, 256, (24, 24, 3)).astype(np.uint8)
            Image.fromarray(pixels).save(buffer, format="PNG")
            (folder / name / f"{image}.png").write_bytes(buffer.getvalue())
    run = write_fake_run(base / "run", folder, image_size=SIZE, overrides=["evaluation.batch_size=4"])
    return run, folder


@pytest.fixture
def recorded_calls(tmp_path, monkeypatch):
    """export_embedder and embed_split replaced by recorders (no SavedModel is written, nothing is embedded),
    and the gallery folder read as 4 items without decoding them (the real reading: tests/export/test_search.py)."""
    calls = {"export": [], "embed": []}

    def four_items(gallery, config):
        split = Split(
            sources=np.array(["a", "b", "c", "d"]),
            labels=np.array([0, 0, 1, 1]),
            class_names=("x", "y"),
            raw_class_names=("x", "y"),
        )
        return split, ["a", "b", "c", "d"], {"folder": gallery}

    def recording_export(embedder, model_dir, *args, precision="float32", gallery=None, gallery_source=None, **kwargs):
        calls["export"].append((embedder, precision, gallery_source))
        path = tmp_path / "saved" / str(len(calls["export"]))
        (path / "assets").mkdir(parents=True)
        metadata = {"gallery": {"items": len(gallery or []), "source": gallery_source}}
        (path / "assets" / ASSET_NAME).write_text(json.dumps(metadata))
        return path

    def recording_embed(embedder, split, batch_size, *args, **kwargs):
        calls["embed"].append((embedder, batch_size))
        return np.ones((len(split.labels), 8), np.float32)

    monkeypatch.setattr(tf_langdml.export, "export_embedder", recording_export)
    monkeypatch.setattr(tf_langdml.inference, "embed_split", recording_embed)
    monkeypatch.setattr(tf_langdml.runs.serving, "gallery_split", four_items)
    return calls


def computing(embedder):
    """The compute dtypes of the embedder's layers other than its float32 input and L2 normalisation layers."""
    kept_float32 = (keras.Model, keras.layers.InputLayer, L2Normalize)
    return {layer.compute_dtype for layer in tf_langdml.export._layers(embedder) if not isinstance(layer, kept_float32)}


def test_cli_export_and_index_pass_the_precision_on(tmp_path, recorded_calls):
    # What export_embedder does with it is tested above; here only that it gets there.
    run, folder = fake_run(tmp_path)
    common = ["--run", str(run), "--name", "m", "--saved-models", str(tmp_path / "saved")]
    assert main(["export", *common]) == 0
    assert main(["export", *common, "--precision", "mixed_bfloat16"]) == 0
    assert [precision for _, precision, _ in recorded_calls["export"]] == ["float32", "mixed_bfloat16"]


def test_index_embeds_the_gallery_in_the_runs_recorded_policy_unless_told(tmp_path, recorded_calls, capsys):
    run, folder = fake_run(tmp_path)
    log_event(run, {"event": "start", "precision": "mixed_bfloat16", "precision_reason": "set explicitly"})
    common = ["--run", str(run), "--name", "m", "--saved-models", str(tmp_path / "saved"), "--gallery", str(folder)]
    assert main(["index", *common]) == 0
    assert "embedded and served in mixed_bfloat16 (the run's, from run_log.jsonl)" in capsys.readouterr().out
    assert main(["index", *common, "--precision", "float32"]) == 0
    assert "embedded and served in float32 (--precision)" in capsys.readouterr().out
    # The gallery is embedded by the very model that is exported (queries and gallery alike), in that policy.
    (run_embedded, _), (told_embedded, _) = recorded_calls["embed"]
    (run_exported, run_precision, run_source), (told_exported, told_precision, told_source) = recorded_calls["export"]
    assert run_embedded is run_exported and told_embedded is told_exported
    assert computing(run_embedded) == {"bfloat16"} and computing(told_embedded) == {"float32"}
    assert (run_precision, told_precision) == ("mixed_bfloat16", "float32")
    assert (run_source[-1]["precision"], told_source[-1]["precision"]) == ("mixed_bfloat16", "float32")
    assert run_source[-1]["precision_from"] == "the run's, from run_log.jsonl"


def test_a_mixed_float16_run_is_indexed_in_float32_saying_so(tmp_path, recorded_calls, capsys):
    run, folder = fake_run(tmp_path)
    log_event(run, {"event": "start", "precision": "mixed_float16", "precision_reason": "a GPU"})
    common = ["--run", str(run), "--name", "m", "--saved-models", str(tmp_path / "saved"), "--gallery", str(folder)]
    assert main(["index", *common]) == 0
    assert (
        "embedded and served in float32 (the run's mixed_float16 is not offered for exports;" in capsys.readouterr().out
    )
    ((embedded, _),) = recorded_calls["embed"]
    assert computing(embedded) == {"float32"} and recorded_calls["export"][0][1] == "float32"


@pytest.mark.parametrize(
    "flags,line",
    [
        (
            ["--precision", "float16"],
            "tf-langdml index: Unknown precision 'float16'; expected one of ['float32', 'mixed_bfloat16'].",
        ),
        (["--precision", "mixed_float16"], "tf-langdml index: precision='mixed_float16' is not offered for exports"),
        (["--batch-size", "0"], "tf-langdml index: --batch-size must be a positive number of images; got 0."),
    ],
)
def test_index_refuses_a_bad_precision_or_batch_in_one_line_before_any_work(
    flags, line, tmp_path, recorded_calls, capsys
):
    # Before any work: the run directory is not even looked at (it does not exist), nothing is embedded.
    argv = ["index", "--run", str(tmp_path / "no_run"), "--name", "m", "--saved-models", str(tmp_path / "saved")]
    assert main([*argv, "--gallery", str(tmp_path), *flags]) == 2
    error = capsys.readouterr().err
    assert error.startswith(line) and error.count("\n") == 1, error
    assert recorded_calls == {"export": [], "embed": []}


def test_the_gallery_batch_follows_the_cores_the_memory_and_the_gallery(monkeypatch):
    # PIXELS_PER_CORE 2^17, BYTES_PER_PIXEL 512, MEMORY_SHARE 4. By cores: 2 x 2^17 / 224^2 = 262,144 / 50,176 =
    # 5.2 -> 5; / 96^2 = 9,216 -> 28.4 -> 28; 8 cores at 224: 20.9 -> 20. By memory: an image at 224 may take
    # 512 x 50,176 = 25,690,112 bytes, so 16 GiB / 4 allows 167 images and 512 MiB / 4 allows 5.2 -> 5.
    assert gallery_batch_size(224, 10_000, cores=2, available_bytes=16 * 2**30) == 5
    assert gallery_batch_size(96, 10_000, cores=2, available_bytes=16 * 2**30) == 28
    assert gallery_batch_size(224, 10_000, cores=8, available_bytes=16 * 2**30) == 20
    assert gallery_batch_size(224, 10_000, cores=64, available_bytes=2**29) == 5  # 167 by cores, 5 by memory
    assert gallery_batch_size(224, 3, cores=2, available_bytes=16 * 2**30) == 3  # no larger than the gallery
    assert gallery_batch_size(224, 0, cores=2, available_bytes=0) == 1  # never below 1
    config = load_config(None, ["evaluation.batch_size=48"])
    assert index_batch_size(config, 100, 7) == (7, "--batch-size")
    monkeypatch.setattr(tf_langdml.inference, "visible_gpus", lambda: ["GPU:0"])
    assert index_batch_size(config, 100)[0] == 48 and index_batch_size(config, 20)[0] == 20


def test_other_precisions_are_refused_before_anything_is_written(tmp_path, capsys):
    embedder = build_embedder("toy_cnn", weights=None, embed_dim=4, input_shape=(SIZE, SIZE, 3))
    with pytest.raises(ValueError, match=r"mixed_float16.*overflows.*\['float32', 'mixed_bfloat16'\]"):
        export_embedder(embedder, tmp_path / "m", precision="mixed_float16")
    with pytest.raises(
        ValueError, match=r"Unknown precision 'bfloat16'; expected one of \['float32', 'mixed_bfloat16'\]"
    ):
        export_embedder(embedder, tmp_path / "m", precision="bfloat16")
    assert not (tmp_path / "m").exists()
    with pytest.raises(SystemExit):
        main(["export", "--run", str(tmp_path), "--name", "m", "--precision", "float16"])
    assert "invalid choice: 'float16'" in capsys.readouterr().err
