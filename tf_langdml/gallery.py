"""Searchable exports: index a gallery with a run's embedder, then query the SavedModel (docs/export.md).

``index_run(run, gallery, name)`` embeds a gallery (an image folder, or a split of the
run's own dataset) with a finished run's embedder and exports
``saved_models/<name>/<version>/`` holding the embedder, the gallery and the ``search``
signatures (:func:`tf_langdml.export.export_embedder`). With ``add=True`` the latest
version's items are kept and the new ones appended, in a new version.

``search_saved_model(model, images, k)`` needs only the SavedModel: no run, no config,
no training code.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import warnings
from collections.abc import Sequence

import numpy as np

from tf_langdml.export import ASSET_NAME, Gallery

SPLIT_NAMES = ("train", "test", "validation")


def folder_items(root: str | os.PathLike) -> tuple[list[str], list[str], list[str]]:
    """(paths, item ids, class folder names) of every image under ``root/<class>/`` at any depth, sorted.

    The item id is the path relative to ``root`` with ``/`` separators; the class is
    the first folder below ``root`` (so ``root/<class>/gallery/...`` images belong to
    ``<class>``). Hidden files and folders are skipped, and so are files without an
    image extension. Only regular files are taken (after following links): FIFOs,
    devices, sockets, dangling links and link loops are never opened, and names that
    are not UTF-8 are left out; one warning counts them by kind and lists those names.
    Links to folders below a class folder are not followed (a link back up would loop).
    """
    from tf_langdml.data.image_folder import IMAGE_EXTENSIONS, not_regular_summary, scan_folder

    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Gallery folder {str(root)!r} does not exist; expected <folder>/<class>/<images>, "
                                "or a split name of the run's dataset (train, test, validation).")
    paths, ids, classes, others = [], [], [], {}

    def scan(folder):
        files, folders, skipped = scan_folder(folder)
        for kind, kind_paths in skipped.items():
            others.setdefault(kind, []).extend(kind_paths)
        return files, folders

    _, class_folders = scan(root)
    # Files directly in root are not items; only an unusable class folder name is reported.
    others = {kind: kind_paths for kind, kind_paths in others.items() if kind == "name not UTF-8"}
    for class_folder in class_folders:
        pending = [class_folder]
        while pending:  # depth first, a folder's files before its sub-folders (as os.walk)
            files, folders = scan(pending.pop())
            pending += [folder for folder in reversed(folders) if not os.path.islink(folder)]
            for path in files:
                if path.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(path)
                    ids.append(pathlib.Path(path).relative_to(root).as_posix())
                    classes.append(os.path.basename(class_folder))
    if others:
        from tf_langdml.data.image_folder import SkippedFilesWarning

        warnings.warn(f"Skipped {sum(map(len, others.values()))} entr(ies) under gallery folder {str(root)!r}: "
                      f"{not_regular_summary(others, str(root))}.", SkippedFilesWarning, stacklevel=2)
    if not paths:
        raise ValueError(f"Gallery folder {str(root)!r} has no image in any <class>/ sub-folder "
                         f"({', '.join(IMAGE_EXTENSIONS)}).")
    return paths, ids, classes


def gallery_split(gallery: str, config):
    """(:class:`~tf_langdml.data.Split`, item ids, description) of a gallery folder or a split name of ``config``'s data.

    Folder images that cannot be decoded are skipped with a warning that names them.
    """
    from tf_langdml.data.class_names import clean_class_name
    from tf_langdml.data.image_folder import SkippedFilesWarning, display_path, unreadable_images
    from tf_langdml.data.preprocessing import source_formats
    from tf_langdml.data.splits import Split

    data = config.data
    if gallery in SPLIT_NAMES and not pathlib.Path(gallery).is_dir():
        from tf_langdml.runs import builders

        splits = builders.dataset(data)
        split = {"train": splits.train_split, "test": splits.test_split, "validation": splits.validation_split}[gallery]
        if split is None:
            raise ValueError(f"The run's dataset has no {gallery} split (data.validation_fraction is 0); "
                             "index 'train' or 'test', or a folder.")
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
        warnings.warn(f"Skipped {len(bad)} gallery image(s) that cannot be decoded (corrupt, truncated or larger than "
                      f"data.max_pixels), e.g. {', '.join(display_path(path, gallery) for path in sorted(bad)[:5])}"
                      f"{more}.", SkippedFilesWarning, stacklevel=2)
        kept = [index for index, path in enumerate(paths) if path not in bad]
        paths, ids, classes = [paths[i] for i in kept], [ids[i] for i in kept], [classes[i] for i in kept]
        if not paths:
            raise ValueError(f"No image in gallery folder {gallery!r} can be decoded.")
    folders, labels = np.unique(np.asarray(classes), return_inverse=True)
    split = Split(sources=np.asarray(paths, dtype=object).astype(str), labels=labels.astype(np.int64),
                  class_names=tuple(clean_class_name(folder) for folder in folders),
                  raw_class_names=tuple(folders), from_files=True, background=data.background,
                  max_pixels=data.max_pixels, formats=source_formats(paths))
    return split, ids, {"folder": str(pathlib.Path(gallery).resolve())}


def latest_version(model_dir: str | os.PathLike) -> pathlib.Path:
    """``model_dir`` itself when it is a SavedModel folder, else its largest integer version folder."""
    model_dir = pathlib.Path(model_dir)
    if not model_dir.exists():
        raise FileNotFoundError(f"{model_dir} does not exist; give saved_models/<name> (its latest version) or "
                                "saved_models/<name>/<version>, as `tf-langdml index` printed.")
    if (model_dir / "saved_model.pb").exists():
        return model_dir
    versions = sorted((int(path.name), path) for path in model_dir.glob("*") if path.is_dir() and path.name.isdigit())
    if not versions:
        raise FileNotFoundError(f"{model_dir} is neither a SavedModel folder (no saved_model.pb) nor a model folder "
                                "with integer version folders (saved_models/<name>/<version>/).")
    return versions[-1][1]


def read_gallery(version_dir: str | os.PathLike) -> tuple[Gallery, dict]:
    """(the :class:`~tf_langdml.export.Gallery`, the assets JSON) of an exported version that holds one."""
    import tensorflow as tf

    version_dir = pathlib.Path(version_dir)
    metadata = json.loads((version_dir / "assets" / ASSET_NAME).read_text(encoding="utf-8"))
    if "gallery" not in metadata:
        raise ValueError(f"{version_dir} holds no gallery (exported without one); index a gallery first "
                         "(tf-langdml index).")
    # The variables checkpoint alone: no graph is loaded.
    reader = tf.train.load_checkpoint(str(version_dir / "variables" / "variables"))

    def read(name, text=False):
        value = reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")
        return np.array([item.decode("utf-8") for item in value]) if text else value

    return Gallery(read("gallery_embeddings"), read("gallery_item_ids", True), read("gallery_class_names", True)), metadata


def index_run(run_dir, gallery: str, name: str, saved_models_dir="saved_models", version=None, add=False,
              batch_size=None, verbose=1, precision="float32") -> pathlib.Path:
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
    from tf_langdml.export import _check_precision, export_embedder, train_class_names
    from tf_langdml.inference import embed_split
    from tf_langdml.runs.run_dir import restore_embedder
    from tf_langdml.runs.schema import config_to_dict

    _check_precision(precision)  # before any embedding work
    run_dir = pathlib.Path(run_dir)
    config, embedder = restore_embedder(run_dir)
    config_values = config_to_dict(config)
    model_dir = pathlib.Path(saved_models_dir) / name
    previous, sources = None, []
    if add:
        previous_dir = latest_version(model_dir)
        previous, metadata = read_gallery(previous_dir)
        if metadata.get("config") != json.loads(json.dumps(config_values)):
            raise ValueError(f"{previous_dir} was indexed with another run's embedder or config; adding items embedded "
                             f"by {run_dir} would mix two embedding spaces. Index everything into a new --name instead.")
        sources = list(metadata["gallery"].get("source") or [])
    if verbose:  # folder images are all decoded once (to skip broken ones) before they are embedded
        print(f"tf_langdml: indexing gallery {str(gallery)!r} with the embedder of {str(run_dir)!r}.",
              file=sys.stderr, flush=True)
    split, ids, description = gallery_split(gallery, config)
    if previous is not None:
        repeated = sorted(set(previous.item_ids) & set(ids))
        if repeated:
            raise ValueError(f"{len(repeated)} item id(s) of {gallery!r} are already in {previous_dir}, e.g. "
                             f"{repeated[:5]}; add only new items (or index everything into a new --name).")
    embeddings = embed_split(embedder, split, batch_size or config.evaluation.batch_size, config.data.image_size,
                             verbose=verbose)
    items = Gallery(embeddings, ids, [split.class_names[label] for label in split.labels])
    if previous is not None:
        items = previous.concatenate(items)
    class_names = train_class_names(run_dir)
    return export_embedder(embedder, model_dir, version, class_names, config_values, config.data.image_size,
                           config.data.background, config.data.max_pixels, gallery=items,
                           gallery_source=sources + [{**description, "items": len(ids), "run": str(run_dir.resolve())}],
                           precision=precision)


def search_saved_model(model, images: Sequence[str | os.PathLike | bytes], k: int = 5) -> list[list[dict]]:
    """Top-``k`` gallery items of each image through an export's ``search`` signature.

    ``model``: ``saved_models/<name>`` (its latest version) or a version folder, or a
    loaded SavedModel. ``images``: file paths or encoded bytes. Returns one list per
    image of ``{"rank", "item_id", "class_name", "score"}`` (rank 1 = nearest).
    """
    import tensorflow as tf

    from tf_langdml.data.preprocessing import read_regular_file

    # Read before the model loads: a FIFO or a link to /dev/zero is refused unopened, never waited on or read forever.
    encoded = [image if isinstance(image, bytes) else read_regular_file(image) for image in images]
    if isinstance(model, (str, os.PathLike)):
        version_dir = latest_version(model)
        loaded = tf.saved_model.load(str(version_dir))
    else:
        version_dir, loaded = None, model
    if "search" not in loaded.signatures:
        raise ValueError(f"{version_dir or 'the model'} has no 'search' signature (an export without a gallery); "
                         "make one with `tf-langdml index --run RUN --gallery FOLDER --name NAME`.")
    outputs = loaded.signatures["search"](images=tf.constant(encoded, tf.string), k=tf.constant(int(k), tf.int32))
    item_ids, class_names = outputs["item_ids"].numpy(), outputs["class_names"].numpy()
    scores = outputs["scores"].numpy()
    return [[{"rank": rank + 1, "item_id": item_ids[row, rank].decode("utf-8"),
              "class_name": class_names[row, rank].decode("utf-8"), "score": float(scores[row, rank])}
             for rank in range(scores.shape[1])] for row in range(scores.shape[0])]
