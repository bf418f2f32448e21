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
from tf_langdml.runs.run_dir import read_config, train_class_names
from tf_langdml.runs.schema import ExperimentConfig, config_to_dict
from tf_langdml.runs.trained_embedder import check_finished_run, restore_embedder, run_policy

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


def index_precision(
    run_dir: str | os.PathLike, config: ExperimentConfig, precision: str | None = None
) -> tuple[str, str]:
    """``(policy, where it came from)``: what ``index`` embeds the gallery in and the export computes in.

    ``precision`` when given (checked: ``"float32"`` or ``"mixed_bfloat16"``); else the
    policy the run trained in (``run_log.jsonl``), else its ``training.precision`` resolved
    on this machine (a run written before the record): :func:`~tf_langdml.runs.trained_embedder.run_policy`. A run trained in
    ``mixed_float16`` is indexed in **float32**: exports offer no float16
    (:func:`tf_langdml.export.check_precision`), and float32 holds every float16 value, so
    it computes what the run learned without rounding, where bfloat16's 8-bit significand
    would round more than float16's 11 bits did.
    """
    if precision is not None:
        export.check_precision(precision)
        return precision, "--precision"
    policy, _, recorded = run_policy(run_dir, config)
    source = "the run's, from run_log.jsonl" if recorded else "the run's training.precision, resolved here"
    if policy == "mixed_float16":
        return "float32", "the run's mixed_float16 is not offered for exports; float32 holds every float16 value"
    return policy, source


def index_batch_size(config: ExperimentConfig, items: int, batch_size: int | None = None) -> tuple[int, str]:
    """``(images per forward pass, why)`` for ``index``: ``batch_size`` when given; else
    ``evaluation.batch_size`` when a GPU is visible; else
    :func:`~tf_langdml.inference.gallery_batch_size` for this machine's cores and free memory."""
    if batch_size is not None:
        return int(batch_size), "--batch-size"
    if inference.visible_gpus():
        return max(1, min(config.evaluation.batch_size, items)), "evaluation.batch_size: a GPU is visible"
    cores, free = os.cpu_count() or 1, inference.available_memory()
    batch = inference.gallery_batch_size(config.data.image_size, items, cores, free)
    return batch, f"{cores} cores, {free / 2**30:.1f} GiB free, {items:,} items: inference.gallery_batch_size"


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
    precision: str | None = None,
) -> pathlib.Path:
    """Embed ``gallery`` with the run's embedder and export ``<saved_models_dir>/<name>/<version>/`` with search.

    ``gallery``: an image folder (``<folder>/<class>/<images>``, any depth below the
    class folder) or ``train`` / ``test`` / ``validation``, a split of the run's own
    dataset. With ``add``, the latest version's gallery comes first and the new items
    are appended; that version must have been indexed from the same run's config, and
    an item id present in both is an error. Nothing is written until every item is
    embedded; the new version appears whole or not at all.

    ``precision``: the Keras policy the gallery is embedded in and the exported
    embedder computes in, so that queries and gallery are embedded alike
    (``"float32"`` or ``"mixed_bfloat16"``; None: the run's, :func:`index_precision`).
    The assets record it, with where it came from, in the gallery's ``source`` entry.
    ``batch_size``: images per forward pass (None: :func:`index_batch_size`).
    ``verbose``: a line naming the gallery and the policy before its images are checked,
    one with the batch size, then progress over the images as they are embedded (a Keras
    bar on a terminal, a line per tenth on stderr otherwise;
    :class:`tf_langdml.inference.ImageProgress`).
    """
    if precision is not None:  # both before any work
        export.check_precision(precision)
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"--batch-size must be a positive number of images; got {batch_size}.")
    run_dir = pathlib.Path(run_dir)
    check_finished_run(run_dir)
    policy, policy_from = index_precision(run_dir, read_config(run_dir), precision)
    config, embedder = restore_embedder(run_dir, policy)
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
            f"tf_langdml: indexing gallery {str(gallery)!r} with the embedder of {str(run_dir)!r}, computing in "
            f"{policy} ({policy_from}).",
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
    batch_size, batch_from = index_batch_size(config, len(ids), batch_size)
    if verbose:
        print(
            f"tf_langdml: embedding {len(ids):,} images in batches of {batch_size} ({batch_from}).",
            file=sys.stderr,
            flush=True,
        )
    embeddings = inference.embed_split(embedder, split, batch_size, config.data.image_size, verbose=verbose)
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
        gallery_source=sources
        + [
            {
                **description,
                "items": len(ids),
                "run": str(run_dir.resolve()),
                "precision": policy,
                "precision_from": policy_from,
            }
        ],
        precision=policy,
    )
