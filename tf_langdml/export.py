"""SavedModel export of a trained embedder for TF Serving (DESIGN §6).

``export_embedder(embedder, "saved_models/<name>")`` writes ``saved_models/<name>/<version>/``:

- ``serving_default``: ``images`` = a batch of encoded JPEG / PNG / GIF / BMP strings ->
  ``embeddings`` (L2-normalised float32), with the eval preprocessing in the graph
  (decode to RGB, resize the shorter side to 256/224 x size, centre crop);
- ``embed_images``: ``images`` = float32 (batch, size, size, 3) already preprocessed RGB
  in [0, 255] -> ``embeddings``;
- ``assets/tf_langdml_export.json``: embed_dim, image size, the preprocessing, the
  training split's class names and the run's config when given.

The version folder is written under a temporary name and renamed, so it appears
complete or not at all; an existing version is never overwritten. The text encoder and
the language table are training-time only and are not exported.
"""

import json
import pathlib
import shutil
import tempfile

import tensorflow as tf

from tf_langdml.cache import atomic_directory
from tf_langdml.data.preprocessing import decode_rgb, eval_preprocess, eval_resize

ASSET_NAME = "tf_langdml_export.json"


class _EmbedderModule(tf.Module):
    """The embedder plus its two serving functions (and the metadata asset)."""

    def __init__(self, embedder, image_size, metadata_path):
        super().__init__()
        self.embedder = embedder
        self.image_size = image_size
        self.metadata = tf.saved_model.Asset(str(metadata_path))

    def _embed(self, images):
        return tf.math.l2_normalize(tf.cast(self.embedder(images, training=False), tf.float32), axis=-1)

    @tf.function
    def embed_images(self, images):
        return {"embeddings": self._embed(images)}

    @tf.function
    def serving_default(self, images):
        size = self.image_size

        def preprocess(encoded):
            return eval_preprocess(decode_rgb(encoded), size=size)

        batch = tf.map_fn(preprocess, images, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        return {"embeddings": self._embed(batch)}


def next_version(model_dir):
    """1 + the largest integer version folder in ``model_dir`` (1 when there is none)."""
    model_dir = pathlib.Path(model_dir)
    versions = [int(path.name) for path in model_dir.iterdir() if path.is_dir() and path.name.isdigit()] if model_dir.exists() else []
    return max(versions, default=0) + 1


def export_embedder(embedder, model_dir, version=None, class_names=None, config=None, image_size=None):
    """Write ``<model_dir>/<version>/`` (next integer when ``version`` is None); return its path.

    Raises:
        FileExistsError: the version exists (versions are never overwritten).
    """
    if image_size is None:
        image_size = int(embedder.input_shape[1])
    if not image_size:
        raise ValueError("The embedder has no fixed input size; pass image_size=.")
    model_dir = pathlib.Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir) if version is None else int(version)
    if version < 1:
        raise ValueError(f"version must be a positive integer; got {version}.")
    final = model_dir / str(version)
    if final.exists():
        raise FileExistsError(f"{final} exists; exported versions are never overwritten. Pass another version= "
                              "(or none for the next number).")
    with atomic_directory(final, exist_ok=False) as temporary:
        metadata = {
            "embed_dim": int(embedder.output_shape[-1]),
            "image_size": image_size,
            "preprocessing": {
                "serving_default": f"decode JPEG/PNG/GIF/BMP to RGB, resize the shorter side to "
                                   f"{eval_resize(image_size)} (bilinear, antialiased), centre crop "
                                   f"{image_size} x {image_size}, float32 in [0, 255]",
                "embed_images": f"float32 RGB in [0, 255], shape (batch, {image_size}, {image_size}, 3)",
                "inside_the_model": "the backbone's own normalisation",
            },
            "class_names": list(class_names) if class_names is not None else None,
            "config": config,
        }
        staging = pathlib.Path(tempfile.mkdtemp(prefix="tf_langdml_export_"))
        try:
            metadata_path = staging / ASSET_NAME
            metadata_path.write_text(json.dumps(metadata, indent=1, ensure_ascii=False), encoding="utf-8")
            module = _EmbedderModule(embedder, image_size, metadata_path)
            signatures = {
                "serving_default": module.serving_default.get_concrete_function(
                    tf.TensorSpec([None], tf.string, name="images")),
                "embed_images": module.embed_images.get_concrete_function(
                    tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")),
            }
            tf.saved_model.save(module, str(temporary), signatures=signatures)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def export_run(run_dir, name, saved_models_dir="saved_models", version=None):
    """Export a finished run directory's embedder to ``<saved_models_dir>/<name>/<version>/``."""
    from tf_langdml.config import config_to_dict
    from tf_langdml.experiment import restore_embedder

    run_dir = pathlib.Path(run_dir)
    config, embedder = restore_embedder(run_dir)
    names_file = run_dir / "train_class_names.json"
    class_names = json.loads(names_file.read_text()) if names_file.exists() else None
    return export_embedder(embedder, pathlib.Path(saved_models_dir) / name, version, class_names,
                           config_to_dict(config), config.data.image_size)
