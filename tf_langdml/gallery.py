"""Galleries and searching them: the items of a searchable export, reading one back, querying it (docs/export.md).

- :class:`Gallery`: the items a ``search`` signature returns (unit embeddings, item
  ids, class names);
- :func:`folder_items`: the images of a gallery folder ``<folder>/<class>/<images>``;
- :func:`latest_version`, :func:`read_gallery`: an exported version and the gallery it holds;
- :func:`search_saved_model`: the top-k items of images through an export's ``search``
  signature. It needs only the SavedModel: no run, no config, no training code.

The exact top-k the signatures compute is :func:`tf_langdml.top_k.top_k_in_chunks`;
writing an export is :func:`tf_langdml.export.export_embedder`. Indexing a run's
gallery (which reads a run directory) is :func:`tf_langdml.runs.serving.index_run`.
Nothing here reads a run directory or imports :mod:`tf_langdml.runs`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import warnings
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tf_langdml.data.image_folder import IMAGE_EXTENSIONS, SkippedFilesWarning, not_regular_summary, scan_folder
from tf_langdml.data.preprocessing import read_regular_file
from tf_langdml.export import ASSET_NAME


@dataclasses.dataclass(frozen=True)
class Gallery:
    """Items a ``search`` signature returns: unit embeddings (N, D) float32, item ids and class names (N,) str.

    Item ids must be unique (they name what was found); the embeddings are
    L2-normalised here (rows already of unit length within 1e-6 are kept as they are),
    so scores are cosine similarities.
    """

    embeddings: np.ndarray
    item_ids: np.ndarray
    class_names: np.ndarray

    def __post_init__(self) -> None:
        embeddings = np.asarray(self.embeddings, np.float32)
        item_ids = np.asarray(self.item_ids, dtype=object).astype(str)
        class_names = np.asarray(self.class_names, dtype=object).astype(str)
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise ValueError(f"gallery embeddings must be a non-empty (N, D) array; got shape {embeddings.shape}.")
        if not np.all(np.isfinite(embeddings)):
            raise ValueError("gallery embeddings contain NaN or Inf.")
        if item_ids.shape != (embeddings.shape[0],) or class_names.shape != (embeddings.shape[0],):
            raise ValueError(
                f"{embeddings.shape[0]} gallery embeddings but {item_ids.shape} item ids and "
                f"{class_names.shape} class names; give one of each per item."
            )
        unique, counts = np.unique(item_ids, return_counts=True)
        if unique.size != item_ids.size:
            repeated = [str(item) for item in unique[counts > 1]]
            raise ValueError(
                f"{len(repeated)} gallery item id(s) occur more than once, e.g. {repeated[:5]}; "
                "item ids name what a search finds, so each must be unique."
            )
        # Rows already of unit length (within 1e-6) are kept bit for bit, so a gallery read back is unchanged.
        norms = np.linalg.norm(embeddings.astype(np.float64), axis=1, keepdims=True)
        unit = np.abs(norms - 1) <= 1e-6
        embeddings = np.where(unit, embeddings, embeddings / np.maximum(norms, 1e-12)).astype(np.float32)
        object.__setattr__(self, "embeddings", embeddings)
        object.__setattr__(self, "item_ids", item_ids)
        object.__setattr__(self, "class_names", class_names)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def concatenate(self, other: Gallery) -> Gallery:
        """This gallery's items followed by ``other``'s (same embedding size, no repeated item id)."""
        if other.embeddings.shape[1] != self.embeddings.shape[1]:
            raise ValueError(
                f"cannot add {other.embeddings.shape[1]}-d items to a {self.embeddings.shape[1]}-d gallery."
            )
        return Gallery(
            np.concatenate([self.embeddings, other.embeddings]),
            np.concatenate([self.item_ids, other.item_ids]),
            np.concatenate([self.class_names, other.class_names]),
        )


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
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Gallery folder {str(root)!r} does not exist; expected <folder>/<class>/<images>, "
            "or a split name of the run's dataset (train, test, validation)."
        )
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
        warnings.warn(
            f"Skipped {sum(map(len, others.values()))} entr(ies) under gallery folder {str(root)!r}: "
            f"{not_regular_summary(others, str(root))}.",
            SkippedFilesWarning,
            stacklevel=2,
        )
    if not paths:
        raise ValueError(
            f"Gallery folder {str(root)!r} has no image in any <class>/ sub-folder ({', '.join(IMAGE_EXTENSIONS)})."
        )
    return paths, ids, classes


def latest_version(model_dir: str | os.PathLike) -> pathlib.Path:
    """``model_dir`` itself when it is a SavedModel folder, else its largest integer version folder."""
    model_dir = pathlib.Path(model_dir)
    if not model_dir.exists():
        raise FileNotFoundError(
            f"{model_dir} does not exist; give saved_models/<name> (its latest version) or "
            "saved_models/<name>/<version>, as `tf-langdml index` printed."
        )
    if (model_dir / "saved_model.pb").exists():
        return model_dir
    versions = sorted((int(path.name), path) for path in model_dir.glob("*") if path.is_dir() and path.name.isdigit())
    if not versions:
        raise FileNotFoundError(
            f"{model_dir} is neither a SavedModel folder (no saved_model.pb) nor a model folder "
            "with integer version folders (saved_models/<name>/<version>/)."
        )
    return versions[-1][1]


def read_gallery(version_dir: str | os.PathLike) -> tuple[Gallery, dict]:
    """(the :class:`Gallery`, the assets JSON) of an exported version that holds one."""
    version_dir = pathlib.Path(version_dir)
    metadata = json.loads((version_dir / "assets" / ASSET_NAME).read_text(encoding="utf-8"))
    if "gallery" not in metadata:
        raise ValueError(
            f"{version_dir} holds no gallery (exported without one); index a gallery first (tf-langdml index)."
        )
    # The variables checkpoint alone: no graph is loaded.
    reader = tf.train.load_checkpoint(str(version_dir / "variables" / "variables"))

    def read(name, text=False):
        value = reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")
        return np.array([item.decode("utf-8") for item in value]) if text else value

    return Gallery(
        read("gallery_embeddings"), read("gallery_item_ids", True), read("gallery_class_names", True)
    ), metadata


def search_saved_model(
    model: str | os.PathLike | tf.Module, images: Sequence[str | os.PathLike | bytes], k: int = 5
) -> list[list[dict]]:
    """Top-``k`` gallery items of each image through an export's ``search`` signature.

    ``model``: ``saved_models/<name>`` (its latest version) or a version folder, or a
    loaded SavedModel. ``images``: file paths or encoded bytes. Returns one list per
    image of ``{"rank", "item_id", "class_name", "score"}`` (rank 1 = nearest).
    """
    # Read before the model loads: a FIFO or a link to /dev/zero is refused unopened, never waited on or read forever.
    encoded = [image if isinstance(image, bytes) else read_regular_file(image) for image in images]
    if isinstance(model, (str, os.PathLike)):
        version_dir = latest_version(model)
        loaded = tf.saved_model.load(str(version_dir))
    else:
        version_dir, loaded = None, model
    if "search" not in loaded.signatures:
        raise ValueError(
            f"{version_dir or 'the model'} has no 'search' signature (an export without a gallery); "
            "make one with `tf-langdml index --run RUN --gallery FOLDER --name NAME`."
        )
    outputs = loaded.signatures["search"](images=tf.constant(encoded, tf.string), k=tf.constant(int(k), tf.int32))
    item_ids, class_names = outputs["item_ids"].numpy(), outputs["class_names"].numpy()
    scores = outputs["scores"].numpy()
    return [
        [
            {
                "rank": rank + 1,
                "item_id": item_ids[row, rank].decode("utf-8"),
                "class_name": class_names[row, rank].decode("utf-8"),
                "score": float(scores[row, rank]),
            }
            for rank in range(scores.shape[1])
        ]
        for row in range(scores.shape[0])
    ]
