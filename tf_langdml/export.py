"""SavedModel export of a trained embedder for TF Serving (docs/export.md).

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
from tf_langdml.data.preprocessing import (
    DEFAULT_BACKGROUND,
    DEFAULT_MAX_PIXELS,
    UNKNOWN,
    decode_rgb,
    eval_preprocess,
    eval_resize,
    header_image_size,
    image_format,
    parse_background,
)

ASSET_NAME = "tf_langdml_export.json"


def _surviving(dataset, spec):
    """The one batch of a dataset of (value, row) pairs whose failing elements were dropped."""
    empty = tf.data.Dataset.from_tensors(tuple(tf.zeros([0, *shape], dtype) for shape, dtype in spec))
    return (dataset.batch(2**31 - 1).concatenate(empty).take(1)).get_single_element()


_ROW_PROBLEMS = ("", "empty string (0 bytes)", "not a JPEG, PNG, GIF or BMP image", "the image header is damaged",
                 "the header declares more than max_pixels = {} pixels (not decoded)", "corrupt or truncated image data")


def bad_image_rows_message(images, decodable, max_pixels=DEFAULT_MAX_PIXELS):
    """'row 1: <why>; row 4: <why>' for each row of ``images`` (encoded, (B,)) that is not ``decodable`` (B,).

    Reasons, read from the bytes alone without decoding: an empty string, data that
    is not JPEG / PNG / GIF / BMP, a damaged header, a header that declares more than
    ``max_pixels`` pixels; any other failing row holds corrupt or truncated image data.
    """
    rows = tf.range(tf.size(images, out_type=tf.int32))
    empty = tf.equal(tf.strings.length(images), 0)
    unknown = tf.equal(image_format(images), UNKNOWN) & ~empty
    known = tf.boolean_mask(rows, ~(empty | unknown))
    sizes = tf.data.Dataset.from_tensor_slices((tf.gather(images, known), known))
    sizes, read_rows = _surviving(sizes.map(lambda image, row: (header_image_size(image), row)).ignore_errors(),
                                  [([2], tf.int64), ([], tf.int32)])
    header_read = tf.reduce_any(tf.equal(rows[:, None], read_rows[None, :]), axis=1)
    too_large_rows = read_rows if max_pixels is None else tf.boolean_mask(
        read_rows, sizes[:, 0] * sizes[:, 1] > int(max_pixels))
    too_large = tf.reduce_any(tf.equal(rows[:, None], too_large_rows[None, :]), axis=1) & (max_pixels is not None)
    problem = tf.where(empty, 1, tf.where(unknown, 2, tf.where(~header_read, 3, tf.where(too_large, 4, 5))))
    problem = tf.where(decodable, 0, problem)
    reasons = tf.constant([reason.format(max_pixels) for reason in _ROW_PROBLEMS])
    bad = tf.not_equal(problem, 0)
    lines = tf.strings.join(["row ", tf.strings.as_string(tf.boolean_mask(rows, bad)), ": ",
                             tf.gather(reasons, tf.boolean_mask(problem, bad))])
    return tf.strings.reduce_join(lines, separator="; ")


class _EmbedderModule(tf.Module):
    """The embedder plus its two serving functions (and the metadata asset)."""

    def __init__(self, embedder, image_size, metadata_path, background=DEFAULT_BACKGROUND,
                 max_pixels=DEFAULT_MAX_PIXELS):
        super().__init__()
        self.embedder = embedder
        self.image_size = image_size
        self.background = parse_background(background)
        self.max_pixels = max_pixels
        self.metadata = tf.saved_model.Asset(str(metadata_path))

    def _embed(self, images):
        return tf.math.l2_normalize(tf.cast(self.embedder(images, training=False), tf.float32), axis=-1)

    @tf.function
    def embed_images(self, images):
        return {"embeddings": self._embed(images)}

    def _decode_batch(self, images):
        """(B, size, size, 3) float32 of a batch of encoded images; fails naming every bad row.

        A decoding error cannot be caught inside a graph, so the batch is decoded by a
        dataset that drops failing rows: the rows missing from its output are the bad
        ones, and only then are the reasons worked out from their bytes.
        """
        size, background, max_pixels = self.image_size, self.background, self.max_pixels
        rows = tf.range(tf.size(images, out_type=tf.int32))
        decoded = tf.data.Dataset.from_tensor_slices((images, rows)).map(
            lambda image, row: (eval_preprocess(decode_rgb(image, background, max_pixels), size=size), row),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
        ).ignore_errors()
        batch, decoded_rows = _surviving(decoded, [([size, size, 3], tf.float32), ([], tf.int32)])
        decodable = tf.reduce_any(tf.equal(rows[:, None], decoded_rows[None, :]), axis=1)
        all_decoded = tf.reduce_all(decodable)
        problems = tf.cond(all_decoded, lambda: tf.constant(""),
                           lambda: bad_image_rows_message(images, decodable, max_pixels))
        check = tf.debugging.Assert(all_decoded, ["Bad image(s) in the request; nothing was embedded.", problems])
        with tf.control_dependencies([check]):
            return tf.identity(batch)

    @tf.function
    def serving_default(self, images):
        return {"embeddings": self._embed(self._decode_batch(images))}


def next_version(model_dir):
    """1 + the largest integer version folder in ``model_dir`` (1 when there is none)."""
    model_dir = pathlib.Path(model_dir)
    versions = [int(path.name) for path in model_dir.iterdir() if path.is_dir() and path.name.isdigit()] if model_dir.exists() else []
    return max(versions, default=0) + 1


def export_embedder(embedder, model_dir, version=None, class_names=None, config=None, image_size=None,
                    background=DEFAULT_BACKGROUND, max_pixels=DEFAULT_MAX_PIXELS):
    """Write ``<model_dir>/<version>/`` (next integer when ``version`` is None); return its path.

    ``background`` and ``max_pixels`` are the decoding of the training run (its
    ``data.background`` / ``data.max_pixels``): ``serving_default`` composites
    transparent pixels onto the same colour and refuses the same images, and the
    assets record both.

    Raises:
        FileExistsError: the version exists (versions are never overwritten).
    """
    if image_size is None:
        image_size = int(embedder.input_shape[1])
    if not image_size:
        raise ValueError("The embedder has no fixed input size; pass image_size=.")
    background = parse_background(background)
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
                "serving_default": f"decode JPEG/PNG/GIF/BMP to RGB (transparent pixels composited onto "
                                   f"RGB {list(background)}, 16-bit PNG rounded to 8 bits, images whose header "
                                   f"declares more than {max_pixels} pixels refused), resize the shorter side to "
                                   f"{eval_resize(image_size)} (bilinear, antialiased), centre crop "
                                   f"{image_size} x {image_size}, float32 in [0, 255]",
                "embed_images": f"float32 RGB in [0, 255], shape (batch, {image_size}, {image_size}, 3)",
                "inside_the_model": "the backbone's own normalisation",
            },
            "background": list(background),
            "max_pixels": max_pixels,
            "bad_requests": "a batch with any image that cannot be decoded fails as a whole (nothing is "
                            "embedded); the error names every bad row (0-based) and why",
            "class_names": list(class_names) if class_names is not None else None,
            "config": config,
        }
        staging = pathlib.Path(tempfile.mkdtemp(prefix="tf_langdml_export_"))
        try:
            metadata_path = staging / ASSET_NAME
            metadata_path.write_text(json.dumps(metadata, indent=1, ensure_ascii=False), encoding="utf-8")
            module = _EmbedderModule(embedder, image_size, metadata_path, background, max_pixels)
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
    from tf_langdml.runs.run_dir import restore_embedder
    from tf_langdml.runs.schema import config_to_dict

    run_dir = pathlib.Path(run_dir)
    config, embedder = restore_embedder(run_dir)
    names_file = run_dir / "train_class_names.json"
    class_names = json.loads(names_file.read_text()) if names_file.exists() else None
    return export_embedder(embedder, pathlib.Path(saved_models_dir) / name, version, class_names,
                           config_to_dict(config), config.data.image_size, config.data.background,
                           config.data.max_pixels)
