"""Serving a run: export a finished run directory's embedder, or index a gallery with it (docs/export.md).

The run-directory side of :mod:`tf_langdml.export` and :mod:`tf_langdml.gallery`,
which know no run directory: here the run's config, weights
(:func:`~tf_langdml.runs.trained_embedder.restore_embedder`) and training class names
(:func:`~tf_langdml.runs.run_dir.train_class_names`) are read and handed to them.

``index_run(run, gallery, name)`` embeds a gallery (an image folder, or a split of the
run's own dataset) with a finished run's embedder and exports
``saved_models/<name>/<version>/`` holding the embedder, the gallery and the ``search``
signatures (:func:`tf_langdml.export.export_embedder`). With ``add=True`` the latest
version's items are kept and the new ones appended, in a new version.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import warnings

import numpy as np

# Modules, not names: export_embedder and embed_split are looked up at call time (tests record the calls).
from tf_langdml import export, inference
from tf_langdml.data.class_names import clean_class_name
from tf_langdml.data.image_folder import SkippedFilesWarning, display_path, unreadable_images
from tf_langdml.data.preprocessing import source_formats
from tf_langdml.data.splits import Split
from tf_langdml.gallery import Gallery, folder_items, latest_version, read_gallery
from tf_langdml.runs import builders
from tf_langdml.runs.run_dir import train_class_names
from tf_langdml.runs.schema import ExperimentConfig, config_to_dict
from tf_langdml.runs.trained_embedder import restore_embedder

SPLIT_NAMES = ("train", "test", "validation")


def export_run(
    run_dir: str | os.PathLike,
    name: str,
    saved_models_dir: str | os.PathLike = "saved_models",
    version: int | None = None,
    precision: str = "float32",
) -> pathlib.Path:
    """Export a finished run directory's embedder to ``<saved_models_dir>/<name>/<version>/`` (``precision``: as
    :func:`~tf_langdml.export.export_embedder`)."""
    run_dir = pathlib.Path(run_dir)
    config, embedder = restore_embedder(run_dir)
    class_names = train_class_names(run_dir)
    return export.export_embedder(
        embedder,
        pathlib.Path(saved_models_dir) / name,
        version,
        class_names,
        config_to_dict(config),
        config.data.image_size,
        config.data.background,
        config.data.max_pixels,
        precision=precision,
    )


def gallery_split(gallery: str, config: ExperimentConfig) -> tuple[Split, list[str], dict]:
    """(:class:`~tf_langdml.data.Split`, item ids, description) of a gallery folder or a split name of the run's data.

    Folder images that cannot be decoded are skipped with a warning that names them.
    """
    data = config.data
    if gallery in SPLIT_NAMES and not pathlib.Path(gallery).is_dir():
        splits = builders.dataset(data)
        split = {"train": splits.train_split, "test": splits.test_split, "validation": splits.validation_split}[gallery]
        if split is None:
            raise ValueError(
                f"The run's dataset has no {gallery} split (data.validation_fraction is 0); "
                "index 'train' or 'test', or a folder."
            )
        if split.from_files:
            base = os.path.commonpath([os.path.dirname(os.path.dirname(str(path))) for path in split.sources])
            ids = [pathlib.Path(os.path.relpath(str(path), base)).as_posix() for path in split.sources]
        else:
            ids = [f"{gallery}/{index:07d}" for index in range(len(split.labels))]
        return split, ids, {"split": gallery, "dataset": data.dataset}
    paths, ids, classes = folder_items(gallery)
    bad = set(unreadable_images(paths, data.max_pixels))
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        warnings.warn(
            f"Skipped {len(bad)} gallery image(s) that cannot be decoded (corrupt, truncated or larger than "
            f"data.max_pixels), e.g. {', '.join(display_path(path, gallery) for path in sorted(bad)[:5])}"
            f"{more}.",
            SkippedFilesWarning,
            stacklevel=2,
        )
        kept = [index for index, path in enumerate(paths) if path not in bad]
        paths, ids, classes = [paths[i] for i in kept], [ids[i] for i in kept], [classes[i] for i in kept]
        if not paths:
            raise ValueError(f"No image in gallery folder {gallery!r} can be decoded.")
    folders, labels = np.unique(np.asarray(classes), return_inverse=True)
    split = Split(
        sources=np.asarray(paths, dtype=object).astype(str),
        labels=labels.astype(np.int64),
        class_names=tuple(clean_class_name(folder) for folder in folders),
        raw_class_names=tuple(folders),
        from_files=True,
        background=data.background,
        max_pixels=data.max_pixels,
        formats=source_formats(paths),
    )
    return split, ids, {"folder": str(pathlib.Path(gallery).resolve())}


def index_run(
    run_dir: str | os.PathLike,
    gallery: str,
    name: str,
    saved_models_dir: str | os.PathLike = "saved_models",
    version: int | None = None,
    add: bool = False,
    batch_size: int | None = None,
    verbose: int = 1,
    precision: str = "float32",
) -> pathlib.Path:
    """Embed ``gallery`` with the run's embedder and export ``<saved_models_dir>/<name>/<version>/`` with search.

    ``gallery``: an image folder (``<folder>/<class>/<images>``, any depth below the
    class folder) or ``train`` / ``test`` / ``validation``, a split of the run's own
    dataset. With ``add``, the latest version's gallery comes first and the new items
    are appended; that version must have been indexed from the same run's config, and
    an item id present in both is an error. Nothing is written until every item is
    embedded; the new version appears whole or not at all. ``precision``
    (``"float32"`` or ``"mixed_bfloat16"``) is what the exported embedder computes in
    (:func:`tf_langdml.export.export_embedder`); the gallery is embedded in float32
    either way. ``verbose``: a line naming the gallery before its images are checked,
    then progress over the images as they are embedded (a Keras bar on a terminal, a
    line per tenth on stderr otherwise; :class:`tf_langdml.inference.ImageProgress`).
    """
    export.check_precision(precision)  # before any embedding work
    run_dir = pathlib.Path(run_dir)
    config, embedder = restore_embedder(run_dir)
    config_values = config_to_dict(config)
    model_dir = pathlib.Path(saved_models_dir) / name
    previous, sources = None, []
    if add:
        previous_dir = latest_version(model_dir)
        previous, metadata = read_gallery(previous_dir)
        if metadata.get("config") != json.loads(json.dumps(config_values)):
            raise ValueError(
                f"{previous_dir} was indexed with another run's embedder or config; adding items embedded "
                f"by {run_dir} would mix two embedding spaces. Index everything into a new --name instead."
            )
        sources = list(metadata["gallery"].get("source") or [])
    if verbose:  # folder images are all decoded once (to skip broken ones) before they are embedded
        print(
            f"tf_langdml: indexing gallery {str(gallery)!r} with the embedder of {str(run_dir)!r}.",
            file=sys.stderr,
            flush=True,
        )
    split, ids, description = gallery_split(gallery, config)
    if previous is not None:
        repeated = sorted(set(previous.item_ids) & set(ids))
        if repeated:
            raise ValueError(
                f"{len(repeated)} item id(s) of {gallery!r} are already in {previous_dir}, e.g. "
                f"{repeated[:5]}; add only new items (or index everything into a new --name)."
            )
    embeddings = inference.embed_split(
        embedder, split, batch_size or config.evaluation.batch_size, config.data.image_size, verbose=verbose
    )
    items = Gallery(embeddings, ids, [split.class_names[label] for label in split.labels])
    if previous is not None:
        items = previous.concatenate(items)
    class_names = train_class_names(run_dir)
    return export.export_embedder(
        embedder,
        model_dir,
        version,
        class_names,
        config_values,
        config.data.image_size,
        config.data.background,
        config.data.max_pixels,
        gallery=items,
        gallery_source=sources + [{**description, "items": len(ids), "run": str(run_dir.resolve())}],
        precision=precision,
    )
