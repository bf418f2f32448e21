"""Export for TF Serving: round trip in a fresh process, both signatures, versions, REST body, bad bytes."""

import base64
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from helpers import quiet_env, run_process, run_saved_model_cli, saved_model_cli_path
from PIL import Image

from tf_langdml.data import decode_rgb, eval_preprocess
from tf_langdml.export import ASSET_NAME, export_embedder, next_version
from tf_langdml.models import build_embedder

SIZE = 32


def jpeg_bytes(seed=0, shape=(40, 50)):
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(128, 40, shape + (3,)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


# The real backbones run with `make test-slow`: ResNet50 (a 100 MB SavedModel written and reloaded in fresh
# processes) and EfficientNet-Lite0 with its ImageNet weights (about 85 s of the default suite's 20-minute
# budget); toy_cnn (conv + BatchNorm) runs every export path here in the default suite.
@pytest.fixture(
    scope="module",
    params=[
        "toy_cnn",
        pytest.param("efficientnet_lite0", marks=pytest.mark.slow),
        pytest.param("resnet50", marks=pytest.mark.slow),
    ],
)
def exported(request, tmp_path_factory):
    weights = "imagenet" if request.param == "efficientnet_lite0" else None
    embedder = build_embedder(request.param, weights=weights, embed_dim=16, input_shape=(SIZE, SIZE, 3))
    model_dir = tmp_path_factory.mktemp("saved_models") / request.param
    path = export_embedder(embedder, model_dir, class_names=["cat", "dog"], config={"name": "test"})
    return embedder, model_dir, path


def in_memory(embedder, encoded):
    images = tf.stack(
        [eval_preprocess(decode_rgb(tf.constant(item)), round(SIZE * 256 / 224), SIZE) for item in encoded]
    )
    return embedder(images, training=False).numpy(), images.numpy()


def test_reloaded_in_a_fresh_process_reproduces_the_embeddings(exported, tmp_path):
    embedder, _, path = exported
    encoded = [jpeg_bytes(0), jpeg_bytes(1, (64, 30))]
    expected, images = in_memory(embedder, encoded)
    np.save(tmp_path / "images.npy", images)
    script = f"""
import json, sys
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load({str(path)!r})
encoded = [open(p, "rb").read() for p in sys.argv[1:]]
served = loaded.signatures["serving_default"](images=tf.constant(encoded))["embeddings"].numpy()
floats = loaded.signatures["embed_images"](images=tf.constant(np.load({str(tmp_path / "images.npy")!r})))["embeddings"].numpy()
np.save({str(tmp_path / "served.npy")!r}, served); np.save({str(tmp_path / "floats.npy")!r}, floats)
"""
    for index, data in enumerate(encoded):
        (tmp_path / f"{index}.jpg").write_bytes(data)
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "0.jpg"), str(tmp_path / "1.jpg")],
        capture_output=True,
        text=True,
        env=quiet_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The SavedModel's graph vs eager calls: same float32 ops, fused differently (up to 3 ulps seen).
    # Through a 50-layer ResNet that can grow to ~1e-6 on unit-vector entries; 1e-5 leaves room.
    assert np.abs(np.load(tmp_path / "served.npy") - expected).max() <= 1e-5
    assert np.abs(np.load(tmp_path / "floats.npy") - expected).max() <= 1e-5
    # float32 l2_normalize then norm, 16 terms: <= ~2 x (16/2 + 2) x 2^-24 ~ 1.2e-6.
    np.testing.assert_allclose(np.linalg.norm(np.load(tmp_path / "served.npy"), axis=1), 1.0, atol=1e-5)


def test_metadata_asset(exported):
    _, _, path = exported
    metadata = json.loads((path / "assets" / ASSET_NAME).read_text())
    assert metadata["embed_dim"] == 16 and metadata["image_size"] == SIZE
    assert metadata["class_names"] == ["cat", "dog"] and metadata["config"] == {"name": "test"}
    assert "centre crop" in metadata["preprocessing"]["serving_default"]
    assert metadata["precision"] == "float32"  # the default (tests/export/test_export_precision.py: bfloat16)


def test_saved_model_cli_lists_both_signatures_and_embeds_a_jpeg(exported, tmp_path):
    _, _, path = exported
    shown = run_process([saved_model_cli_path(), "show", "--dir", path, "--all"])
    for text in (
        "signature_def['serving_default']",
        "signature_def['embed_images']",
        "dtype: DT_STRING",
        "dtype: DT_FLOAT",
        f"shape: (-1, {SIZE}, {SIZE}, 3)",
        "shape: (-1, 16)",
    ):
        assert text in shown.stdout, text
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg_bytes(3, (20, 24)))
    np.save(tmp_path / "request.npy", np.array([photo.read_bytes()]))  # a batch of one JPEG string (dtype S)
    run = run_saved_model_cli(path, "serving_default", f"images={tmp_path / 'request.npy'}")
    assert "embeddings" in run.stdout


def test_rest_request_body_as_tf_serving_decodes_it(exported):
    embedder, _, path = exported
    encoded = jpeg_bytes(4)
    body = json.dumps({"instances": [{"b64": base64.b64encode(encoded).decode("ascii")}]})
    # TF Serving's REST API: each {"b64": ...} becomes the decoded bytes of one string tensor element.
    instances = [base64.b64decode(item["b64"]) for item in json.loads(body)["instances"]]
    loaded = tf.saved_model.load(str(path))
    served = loaded.signatures["serving_default"](images=tf.constant(instances))["embeddings"].numpy()
    np.testing.assert_allclose(served, in_memory(embedder, [encoded])[0], atol=1e-5)  # as above: graph vs eager


def test_bytes_that_are_not_an_image_fail_with_a_decoding_error(exported):
    _, _, path = exported
    loaded = tf.saved_model.load(str(path))
    serve = loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="(?i)image"):
        serve(images=tf.constant([b"definitely not an image"]))
    assert serve(images=tf.constant([jpeg_bytes(5)]))["embeddings"].shape == (1, 16)  # the model still serves


def test_versions_number_up_and_are_never_overwritten(tmp_path):
    embedder = build_embedder("toy_cnn", weights=None, embed_dim=4, input_shape=(SIZE, SIZE, 3))
    assert next_version(tmp_path / "m") == 1
    assert export_embedder(embedder, tmp_path / "m").name == "1"
    assert export_embedder(embedder, tmp_path / "m").name == "2"
    assert export_embedder(embedder, tmp_path / "m", version=7).name == "7"
    assert next_version(tmp_path / "m") == 8
    with pytest.raises(FileExistsError, match="never overwritten"):
        export_embedder(embedder, tmp_path / "m", version=2)


def test_a_failed_export_leaves_nothing(tmp_path, monkeypatch):
    embedder = build_embedder("toy_cnn", weights=None, embed_dim=4, input_shape=(SIZE, SIZE, 3))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        export_embedder(embedder, tmp_path / "m")
    assert list((tmp_path / "m").iterdir()) == []


def test_saving_traces_each_served_function_once_and_keeps_no_keras_layers(tmp_path, monkeypatch):
    from tf_langdml import serving_modules
    from tf_langdml.gallery import Gallery

    traces = {"_decode_batch": 0, "_embed": 0, "_neighbours": 0}

    def counting(name, original):
        def counted(self, *args):
            traces[name] += 1  # Python runs only while a function is traced
            return original(self, *args)

        return counted

    for name in traces:
        monkeypatch.setattr(
            serving_modules.GalleryModule, name, counting(name, getattr(serving_modules.GalleryModule, name))
        )
    embedder = build_embedder("toy_cnn", weights=None, embed_dim=4, input_shape=(SIZE, SIZE, 3))
    gallery = Gallery(np.eye(4, dtype=np.float32)[:3], ["a", "b", "c"], ["x", "y", "x"])
    path = export_embedder(embedder, tmp_path / "model", gallery=gallery)
    # Decoding serves serving_default and search, embedding three signatures, the top-k two: one trace each.
    assert traces == {"_decode_batch": 1, "_embed": 1, "_neighbours": 1}
    loaded = tf.saved_model.load(str(path))
    assert sorted(loaded.signatures) == ["embed_images", "search", "search_embeddings", "serving_default"]
    assert not hasattr(loaded, "embedder") and not hasattr(loaded, "_embedder")
    assert len(loaded.embedder_variables) == len(embedder.variables)
