"""Datasets in the paper's folder layout: root/<class>/<image files>, gallery images in root/<class>/gallery/."""

import contextlib
import difflib
import errno
import functools
import os
import re
import stat
import sys
import tempfile
import warnings
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tf_langdml.data.class_names import clean_class_name
from tf_langdml.data.preprocessing import (
    DEFAULT_BACKGROUND,
    DEFAULT_MAX_PIXELS,
    Background,
    decode_rgb,
    header_image_size,
    source_formats,
)
from tf_langdml.data.splits import Split, SplitDataset
from tf_langdml.errors import ArgumentError, ArgumentTypeError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
GALLERY_FOLDER = "gallery"  # root/<class>/gallery/<images>: that class's gallery images

# What libjpeg itself writes to file descriptor 2 when TensorFlow's decoder meets a corrupt JPEG (jerror.h).
LIBJPEG_MESSAGE = re.compile(
    rb"^(Improper call to JPEG library in state \d+|Corrupt JPEG data:.*|Premature end of "
    rb"JPEG file|Not a JPEG file:.*|Invalid JPEG file structure:.*|Bogus .*|Unsupported "
    rb"marker type.*|JPEG datastream contains no image|Invalid SOS parameters.*)\r?$"
)


class SkippedFilesWarning(UserWarning):
    """Files of an image folder or gallery that were left out (one warning per load; the CLI prints it as one line)."""


@contextlib.contextmanager
def libjpeg_messages_dropped():
    """Drop libjpeg's own lines (``Improper call to JPEG library in state 201``) from file descriptor 2 in the block.

    They name no file, and the caller reports the files it could not decode itself. Anything
    else written to descriptor 2 meanwhile (by any thread) is passed on when the block ends.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().splitlines(keepends=True)
                if not LIBJPEG_MESSAGE.match(line.rstrip(b"\n"))
            ]
            if kept:
                os.write(2, b"".join(kept))


def read_list_file(path: str | os.PathLike, what: str) -> list[str]:
    """The entries of a text file, one a line, stripped; blank lines and lines starting with ``#`` are left out.

    ``what`` names the file in the error when it does not exist (e.g. ``"test_classes"``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file {path!r} does not exist; expected a text file with one entry a line.")
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle]
    return [line for line in lines if line and not line.startswith("#")]


def unreadable_images(paths: Sequence[str], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[str]:
    """Paths among ``paths`` that :func:`~tf_langdml.data.decode_rgb` refuses.

    That is: corrupt or truncated data, files that are not JPEG / PNG / GIF / BMP
    images, and images whose header declares more than ``max_pixels`` pixels (those
    are refused from the header alone, never decoded).
    """
    if not paths:
        return []
    decoded_height = _decoded_height(max_pixels)
    data = tf.data.Dataset.from_tensor_slices((list(paths), np.arange(len(paths))))
    data = data.map(
        tf.autograph.experimental.do_not_convert(lambda path, index: (decoded_height(path), index)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    data = data.ignore_errors()
    with libjpeg_messages_dropped():  # the unreadable files are returned (and named by the callers' warnings)
        readable = {int(index) for _, index in data.as_numpy_iterator()}
    return [path for index, path in enumerate(paths) if index not in readable]


@functools.lru_cache(maxsize=8)
def _decoded_height(max_pixels: int | None) -> tf.types.experimental.GenericFunction:
    """The decoded height of the image file at a path, as a function traced once per ``max_pixels``.

    The decoder's graph (every format, the GIF block walk) takes about a second to trace; a
    dataset that calls this traced function reuses it instead of tracing the decoder again.
    """

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
    def decoded_height(path):
        return tf.shape(decode_rgb(tf.io.read_file(path), max_pixels=max_pixels))[0]

    return decoded_height


def _declared_pixels(path):
    """Height x width from the file's header, or None when the header cannot be read."""
    try:
        height, width = header_image_size(tf.io.read_file(path)).numpy()
    except tf.errors.OpError:
        return None
    return int(height) * int(width)


def _split_from(class_folders, files_by_class, background, max_pixels, gallery_files):
    sources, labels = [], []
    for label, folder in enumerate(class_folders):
        sources += files_by_class[folder]
        labels += [label] * len(files_by_class[folder])
    gallery = np.asarray([source in gallery_files for source in sources], dtype=bool)
    return Split(
        sources=np.asarray(sources, dtype=object).astype(str),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=tuple(clean_class_name(folder) for folder in class_folders),
        raw_class_names=tuple(class_folders),
        from_files=True,
        background=background,
        max_pixels=max_pixels,
        formats=source_formats(sources),
        gallery=gallery if gallery.any() else None,
    )


def _test_folders(test_classes, class_folders, root):
    """The sorted test class folders that ``test_classes`` (names, or a file of names) gives."""
    source = ""
    if isinstance(test_classes, (str, os.PathLike)):
        path = os.fspath(test_classes)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"test_classes file {path!r} does not exist: a string is read as a text file of "
                "class-folder names, one a line; pass a list for the names themselves."
            )
        source = f" (read from {path!r})"
        test_classes = read_list_file(path, "test_classes")
    test_classes = list(test_classes)
    bad = [name for name in test_classes if not isinstance(name, str)]
    if bad:
        raise ArgumentTypeError(
            f"test_classes must be class-folder names (strings); got {bad[:5]}.", argument="test_classes"
        )
    if not test_classes and source:
        raise ArgumentError(
            f"test_classes{source} names no class folder; give at least one (or None: test_fraction).",
            argument="test_classes",
        )
    test_folders = sorted(set(test_classes))
    unknown = sorted(set(test_folders) - set(class_folders))
    if unknown:
        close = {name: difflib.get_close_matches(name, class_folders, n=1) for name in unknown[:5]}
        hints = [
            f"{match[0]!r}" + (f" for {name!r}" if len(unknown) > 1 else "") for name, match in close.items() if match
        ]
        raise ArgumentError(
            f"test_classes {unknown[:20]}{' ...' if len(unknown) > 20 else ''} are not class folders of {root!r}"
            f"{source}; {len(unknown)} unknown name(s). Known class folders ({len(class_folders)}), e.g. "
            f"{class_folders[:5]}" + (f"; did you mean {', '.join(hints)}?" if hints else "."),
            argument="test_classes",
        )
    if len(test_folders) == len(class_folders):
        raise ArgumentError(
            f"test_classes{source} covers every class; leave at least one class for training.", argument="test_classes"
        )
    return test_folders


def _gallery_list_files(gallery_list, root, known_files):
    """The full paths that a gallery list (paths relative to ``root``, one a line) names; unknown paths are an error."""
    entries = read_list_file(gallery_list, "gallery_list")
    by_path = {os.path.normpath(path): path for path in known_files}
    listed = {entry: by_path.get(os.path.normpath(os.path.join(root, entry))) for entry in entries}
    unknown = [entry for entry, path in listed.items() if path is None]
    if unknown:
        raise ArgumentError(
            f"gallery_list {os.fspath(gallery_list)!r} names {len(unknown)} path(s) that are not image files of a "
            f"class folder of {root!r} (paths are relative to it, e.g. '<class>/<image>'): {unknown[:10]}"
            f"{' ...' if len(unknown) > 10 else ''}.",
            argument="gallery_list",
        )
    return set(listed.values())


def load_image_folder(
    root: str | os.PathLike,
    test_classes: Sequence[str] | str | os.PathLike | None = None,
    test_fraction: float = 0.5,
    background: Background = DEFAULT_BACKGROUND,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    gallery_list: str | os.PathLike | None = None,
) -> SplitDataset:
    """Load ``root/<class>/<images>`` and split it by class.

    Gallery images: the images in ``root/<class>/gallery/`` (a sub-folder literally
    named ``gallery``) and those ``gallery_list`` names belong to their class like the
    others, and are marked in the split's ``gallery`` mask: a split with gallery images
    is evaluated with the query / gallery protocol (its other images are the queries;
    see :func:`~tf_langdml.evaluation.split_retrieval_metrics`). Training uses every image
    of its classes, gallery or not. Other sub-folders of a class folder are ignored.

    Every file is decoded once up front: files without an image extension, images
    TensorFlow cannot decode (corrupt, truncated), and images whose header declares
    more than ``max_pixels`` pixels (not decoded) are skipped with one warning that
    counts them by reason and lists the first few; they are also returned in
    ``skipped_files``. A class folder left with no readable image is an error.
    Only regular files are opened (:func:`scan_folder`): FIFOs, devices, sockets,
    dangling links and link loops are skipped unopened and counted by kind in the same
    warning; names that are not valid UTF-8 are skipped and listed by their bytes.

    Args:
        root: folder with one sub-folder per class (hidden folders are ignored).
        test_classes: folder names of the test classes, or the path (a ``str`` or
            ``PathLike``) of a text file of them, one a line (blank lines and lines
            starting with ``#`` ignored); an unknown name is an error that lists it.
            An empty list puts every class in the training split (the test split is
            empty); a file that names no class is an error.
            Default: the last ``round(C * test_fraction)`` of the sorted class folders
            (the paper splits CUB's 200 classes 1-100 / 101-200 this way).
        test_fraction: share of classes held out when ``test_classes`` is None.
        background: ``"white"``, ``"black"`` or (r, g, b): what transparent pixels
            are composited onto, by every pipeline over the splits.
        max_pixels: the largest image (height x width, from the header) that is decoded.
        gallery_list: a text file of gallery images, one path relative to ``root`` a
            line (blank lines and ``#`` lines ignored), in addition to the
            ``gallery/`` sub-folders; a path that is not a file found under a class
            folder is an error that names it.

    Returns:
        :class:`SplitDataset` with labels 0..C-1 within each split.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Image folder {root!r} does not exist; expected root/<class>/<image files>.")
    _, folders, others = scan_folder(root)
    # Files directly in root are not images of a class; only a class folder's unusable name is reported.
    others = {kind: paths for kind, paths in others.items() if kind == "name not UTF-8"}
    class_folders = [os.path.basename(path) for path in folders]
    if len(class_folders) < 2:
        raise ValueError(f"{root!r} has {len(class_folders)} class folder(s); a train/test split needs at least 2.")
    # The split first: a wrong test_classes / test_fraction fails before any image is read.
    if test_classes is None:
        if not 0 < test_fraction < 1:
            raise ArgumentError(
                f"test_fraction must be between 0 and 1, got {test_fraction!r}.", argument="test_fraction"
            )
        num_test = min(len(class_folders) - 1, max(1, round(len(class_folders) * test_fraction)))
        test_folders = class_folders[-num_test:]
    else:
        test_folders = _test_folders(test_classes, class_folders, root)

    files_by_class, skipped = {}, []
    gallery_files = set()
    for folder in class_folders:
        paths, _, class_others = scan_folder(os.path.join(root, folder))
        gallery_paths, _, gallery_others = scan_folder(os.path.join(root, folder, GALLERY_FOLDER))
        for kind, kind_paths in [*class_others.items(), *gallery_others.items()]:
            others.setdefault(kind, []).extend(kind_paths)
        gallery_files.update(gallery_paths)
        paths += gallery_paths
        files_by_class[folder] = [path for path in paths if path.lower().endswith(IMAGE_EXTENSIONS)]
        skipped += [path for path in paths if not path.lower().endswith(IMAGE_EXTENSIONS)]
    if gallery_list is not None:
        found = [path for folder in class_folders for path in files_by_class[folder]]
        gallery_files |= _gallery_list_files(gallery_list, root, found + skipped)
    not_images = len(skipped)
    not_regular = sorted(path for paths in others.values() for path in paths)
    all_images = [path for folder in class_folders for path in files_by_class[folder]]
    unreadable = set(unreadable_images(all_images, max_pixels))
    with libjpeg_messages_dropped():  # reading a corrupt JPEG's header makes libjpeg print too
        too_large = (
            []
            if max_pixels is None
            else [path for path in sorted(unreadable) if (_declared_pixels(path) or 0) > max_pixels]
        )
    skipped += sorted(unreadable) + not_regular
    for folder in class_folders:
        files_by_class[folder] = [path for path in files_by_class[folder] if path not in unreadable]
        if not files_by_class[folder]:
            raise ValueError(
                f"Class folder {os.path.join(root, folder)!r} has no readable image "
                f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder."
            )
    if skipped:
        reasons = [
            f"{not_images} without an image extension ({', '.join(IMAGE_EXTENSIONS)})",
            f"{len(unreadable) - len(too_large)} not decodable (corrupt, truncated or another format)",
            f"{len(too_large)} above max_pixels={max_pixels} by their header",
        ]
        reasons += [not_regular_summary(others, root)] if not_regular else []
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(
            f"Skipped {len(skipped)} file(s) under {root!r} that are not readable images: {'; '.join(reasons)}. "
            f"Examples: {', '.join(display_path(path, root) for path in skipped[:5])}{more}.",
            SkippedFilesWarning,
            stacklevel=2,
        )

    train_folders = [folder for folder in class_folders if folder not in set(test_folders)]
    splits = [
        _split_from(folders, files_by_class, background, max_pixels, gallery_files)
        for folders in (train_folders, test_folders)
    ]
    test = splits[1]
    if test.gallery is not None and test.gallery.all():
        raise ValueError(
            f"Every image of the test classes of {root!r} is a gallery image; the query / gallery "
            f"protocol needs query images: images directly in root/<class>/ (not in {GALLERY_FOLDER}/) "
            "and not in the gallery list."
        )
    return SplitDataset(*splits, tuple(skipped))


# Why a folder entry is not read, by kind (os.stat, which follows links, says what it is).
NOT_REGULAR_KINDS = (
    "FIFO",
    "device",
    "socket",
    "dangling link",
    "link loop",
    "unstatable entry",
    "special file",
    "name not UTF-8",
)


def _entry_kind(path):
    """ "file", "folder" or one of NOT_REGULAR_KINDS for ``path``; never opens it (os.stat only)."""
    if not _is_utf8(os.path.basename(path)):
        return "name not UTF-8"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "dangling link" if os.path.islink(path) else "unstatable entry"
    except OSError as error:
        return "link loop" if error.errno == errno.ELOOP else "unstatable entry"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "socket" if stat.S_ISSOCK(mode) else "special file"


def _is_utf8(name):
    # os.listdir decodes undecodable bytes to lone surrogates (surrogateescape); TensorFlow cannot take them.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def scan_folder(folder: str | os.PathLike) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """(regular files, folders, other entries by kind) directly in ``folder``, each sorted; hidden names left out.

    Links are followed; what they point at decides. Only ``os.stat`` is called, so
    a FIFO, a device (``/dev/zero``), a socket, a dangling link or a link loop is
    never opened: they land in the third value under their kind (one of
    :data:`NOT_REGULAR_KINDS`), as do names that are not valid UTF-8 (TensorFlow
    cannot take their paths). A folder that does not exist gives nothing.
    """
    folder = os.fspath(folder)
    files, folders, others = [], [], {}
    if not os.path.isdir(folder):
        return files, folders, others
    for name in sorted(os.listdir(folder)):
        if name.startswith("."):
            continue
        path = os.path.join(folder, name)
        kind = _entry_kind(path)
        if kind == "file":
            files.append(path)
        elif kind == "folder":
            folders.append(path)
        else:
            others.setdefault(kind, []).append(path)
    return files, folders, others


def display_path(path: str, root: str | None = None) -> str:
    """``path`` (relative to ``root`` when given) for a message; ``repr`` of its bytes when it is not UTF-8."""
    shown = os.path.relpath(path, root) if root is not None else path
    return repr(shown) if _is_utf8(shown) else repr(os.fsencode(shown))


def not_regular_summary(others: dict[str, list[str]], root: str | None = None) -> str:
    """What :func:`scan_folder` left out, counted by kind, e.g. ``"not regular files, never opened: 1 FIFO, 2 devices"``.

    Names that are not UTF-8 are counted apart and listed (the first five, as bytes).
    Empty when nothing was left out.
    """
    counts = [
        f"{len(others[kind])} {kind}{'s' if len(others[kind]) > 1 else ''}"
        for kind in NOT_REGULAR_KINDS[:-1]
        if others.get(kind)
    ]
    phrases = [f"not regular files, never opened: {', '.join(counts)}"] if counts else []
    names = others.get("name not UTF-8", [])
    if names:
        phrases.append(
            f"{len(names)} with a name that is not UTF-8 (rename them): "
            f"{', '.join(display_path(path, root) for path in names[:5])}{' ...' if len(names) > 5 else ''}"
        )
    return "; ".join(phrases)
