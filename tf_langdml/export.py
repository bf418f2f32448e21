"""SavedModel export of a trained embedder for TF Serving (docs/export.md).

``export_embedder(embedder, "saved_models/<name>")`` writes ``saved_models/<name>/<version>/``:

- ``serving_default``: ``images`` = a batch of encoded JPEG / PNG / GIF / BMP strings ->
  ``embeddings`` (L2-normalised float32), with the eval preprocessing in the graph
  (decode to RGB, resize the shorter side to 256/224 x size, centre crop);
- ``embed_images``: ``images`` = float32 (batch, size, size, 3) already preprocessed RGB
  in [0, 255] -> ``embeddings``;
- ``assets/tf_langdml_export.json``: embed_dim, image size, the preprocessing, the
  precision, the training split's class names and the run's config when given;
- with a :class:`~tf_langdml.gallery.Gallery` (``tf-langdml index``): the gallery as variables and the
  signatures ``search`` (``images`` + ``k`` -> top-k ``item_ids``, ``class_names``,
  cosine ``scores``, gallery row ``indices``) and ``search_embeddings`` (``embeddings`` +
  ``k`` -> the same), exact, by :func:`~tf_langdml.top_k.top_k_in_chunks`.

``precision="mixed_bfloat16"`` exports a copy of the embedder whose layers compute in
bfloat16 (variables stay float32); every signature still takes and returns float32.

The version folder is written under a temporary name and renamed, so it appears
complete or not at all; an existing version is never overwritten. Everything is staged
inside the model folder (nothing in ``$TMPDIR``), with the umask's permissions (0755 /
0644 under umask 022, so TF Serving running as another user can read it), and each
export first removes the partial versions of exports that died (:func:`~tf_langdml.cache.remove_dead_partials`;
one still being written is kept). A batch of zero images never reaches the network.
The text encoder and the language table are training-time only and are not exported.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import typing
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf

from tf_langdml._keras import keras
from tf_langdml.cache import atomic_directory, remove_dead_partials
from tf_langdml.data.preprocessing import (
    DEFAULT_BACKGROUND,
    DEFAULT_MAX_PIXELS,
    Background,
    eval_resize,
    parse_background,
)
from tf_langdml.models.layers import L2Normalize
from tf_langdml.serving_modules import EmbedderModule, GalleryModule
from tf_langdml.top_k import DEFAULT_CHUNK_ELEMENTS

if typing.TYPE_CHECKING:
    from tf_langdml.gallery import Gallery

ASSET_NAME = "tf_langdml_export.json"
PRECISIONS = ("float32", "mixed_bfloat16")  # Keras policy names: what the exported embedder computes in


def next_version(model_dir: str | os.PathLike) -> int:
    """1 + the largest integer version folder in ``model_dir`` (1 when there is none)."""
    model_dir = pathlib.Path(model_dir)
    versions = (
        [int(path.name) for path in model_dir.iterdir() if path.is_dir() and path.name.isdigit()]
        if model_dir.exists()
        else []
    )
    return max(versions, default=0) + 1


def check_precision(precision: str) -> None:
    """Refuse a precision exports do not offer (ValueError naming the ones they do)."""
    if precision == "mixed_float16":
        raise ValueError(
            "precision='mixed_float16' is not offered for exports: float16's 5-bit exponent overflows "
            "above 65504 where float32 activations do not, and float16 exports are not tested; use "
            f"one of {list(PRECISIONS)} (bfloat16 keeps float32's range)."
        )
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; expected one of {list(PRECISIONS)}.")


def _layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Every layer of ``model``, nested models' layers included (the nested models too)."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


def with_precision(embedder: keras.Model, precision: str) -> keras.Model:
    """``embedder`` computing under the Keras policy ``precision`` ("float32" or "mixed_bfloat16"), same weights.

    The embedder itself when all its layers already compute as asked (the float32
    default changes nothing); otherwise a clone of the functional / Sequential model
    (nested models cloned too) whose layers are re-created from their configs with the
    policy as their ``dtype``, and the original's weights. Under ``mixed_bfloat16`` the
    variables stay float32 and each layer casts them and its inputs to bfloat16. The
    input layers keep their float32 input, and :class:`~tf_langdml.models.layers.L2Normalize`
    stays float32 (it normalises in float32 under any policy), so the outputs are float32.
    """
    check_precision(precision)
    compute_dtype = "float32" if precision == "float32" else "bfloat16"

    def wanted(layer):
        return "float32" if isinstance(layer, (L2Normalize, keras.layers.InputLayer)) else compute_dtype

    if all(layer.compute_dtype == wanted(layer) for layer in _layers(embedder) if not isinstance(layer, keras.Model)):
        return embedder

    def clone(model):
        if not getattr(model, "_is_graph_network", False) and not isinstance(model, keras.Sequential):
            raise ValueError(
                f"precision={precision!r} rebuilds the embedder's layers under that policy, which needs a "
                f"functional or Sequential model; {model.name!r} is a subclassed "
                f"{type(model).__name__}. Export it with precision='float32', or build it under "
                f"keras.mixed_precision.set_global_policy({precision!r}) yourself."
            )
        return keras.models.clone_model(model, clone_function=clone_layer)

    def clone_layer(layer):
        if isinstance(layer, keras.Model):
            return clone(layer)
        config = layer.get_config()
        config["dtype"] = "float32" if wanted(layer) == "float32" else precision
        return layer.__class__.from_config(config)

    copy = clone(embedder)
    copy.set_weights(embedder.get_weights())
    return copy


def export_embedder(
    embedder: keras.Model,
    model_dir: str | os.PathLike,
    version: int | None = None,
    class_names: Sequence[str] | None = None,
    config: dict | None = None,
    image_size: int | None = None,
    background: Background = DEFAULT_BACKGROUND,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    gallery: Gallery | None = None,
    gallery_source: object = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    precision: str = "float32",
) -> pathlib.Path:
    """Write ``<model_dir>/<version>/`` (next integer when ``version`` is None); return its path.

    ``background`` and ``max_pixels`` are the decoding of the training run (its
    ``data.background`` / ``data.max_pixels``): ``serving_default`` composites
    transparent pixels onto the same colour and refuses the same images, and the
    assets record both.

    With a :class:`~tf_langdml.gallery.Gallery`, the export also holds the gallery (as variables) and two
    more signatures, ``search`` (encoded images + k) and ``search_embeddings``
    (embeddings + k), each returning the top-k ``item_ids``, ``class_names``, cosine
    ``scores`` and gallery row ``indices``, computed exactly by
    :func:`~tf_langdml.top_k.top_k_in_chunks` with ``chunk_elements``. ``gallery_source`` (any JSON
    value, e.g. the folders indexed) is recorded in the assets.

    ``precision``: ``"float32"`` (default) or ``"mixed_bfloat16"``, the Keras policy the
    exported embedder computes in (:func:`with_precision`; the variables stay float32).
    Inputs and outputs are float32 either way; the L2 normalisation, the gallery and the
    top-k stay float32. The assets record it.

    Raises:
        FileExistsError: the version exists (versions are never overwritten).
    """
    if image_size is None:
        image_size = int(embedder.input_shape[1])
    if not image_size:
        raise ValueError("The embedder has no fixed input size; pass image_size=.")
    embed_dim = int(embedder.output_shape[-1])
    if gallery is not None and gallery.embeddings.shape[1] != embed_dim:
        raise ValueError(
            f"the gallery's embeddings have {gallery.embeddings.shape[1]} dimensions but the embedder "
            f"outputs {embed_dim}; index the gallery with this embedder."
        )
    if int(chunk_elements) < 1:
        raise ValueError(f"chunk_elements must be a positive number of scores; got {chunk_elements}.")
    check_precision(precision)
    background = parse_background(background)
    model_dir = pathlib.Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(model_dir)
    version = next_version(model_dir) if version is None else int(version)
    if version < 1:
        raise ValueError(f"version must be a positive integer; got {version}.")
    final = model_dir / str(version)
    if final.exists():
        raise FileExistsError(
            f"{final} exists; exported versions are never overwritten. Pass another version "
            "(`--version N` on the command line, version=N in Python), or none for the next number."
        )
    served = with_precision(embedder, precision)
    with atomic_directory(final, exist_ok=False) as temporary:
        metadata = {
            "embed_dim": embed_dim,
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
            "precision": precision,
            "precision_note": (
                "the embedder computes in float32"
                if precision == "float32"
                else "the embedder's layers compute in bfloat16 (Keras policy mixed_bfloat16) with float32 variables"
            )
            + "; every input and output of the signatures is float32 "
            "(the L2 normalisation, the gallery and the search scores too)",
            "background": list(background),
            "max_pixels": max_pixels,
            "bad_requests": "a batch with any image that cannot be decoded fails as a whole (nothing is "
            "embedded); the error names every bad row (0-based) and why. embed_images refuses "
            "another image size (naming both) and NaN or Inf pixels (naming the rows); "
            "search_embeddings refuses another embedding size and rows with NaN or Inf or all "
            "zeros (naming the rows). A batch of zero images answers (0, embed_dim) embeddings, "
            "or (0, k) search results, without running the network",
            "class_names": list(class_names) if class_names is not None else None,
            "config": config,
        }
        if gallery is not None:
            metadata["gallery"] = {
                "items": len(gallery),
                "classes": int(np.unique(gallery.class_names).size),
                "source": gallery_source,
                "search": "exact cosine top-k over every item (matmul + top-k in chunks of about "
                f"{int(chunk_elements)} scores); equal scores rank the lower gallery row first",
            }
        # The asset is staged inside the partial version folder (never in $TMPDIR), so a killed export leaves
        # nothing that the next one's remove_dead_partials does not remove.
        staging = temporary / ".staging"
        staging.mkdir()
        try:
            metadata_path = staging / ASSET_NAME
            metadata_path.write_text(json.dumps(metadata, indent=1, ensure_ascii=False), encoding="utf-8")
            if gallery is None:
                module = EmbedderModule(served, image_size, metadata_path, background, max_pixels)
            else:
                module = GalleryModule(
                    served, image_size, metadata_path, gallery, background, max_pixels, chunk_elements
                )
            tf.saved_model.save(module, str(temporary), signatures=module.signatures())
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final
