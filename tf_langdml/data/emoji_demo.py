"""The offline demo set: 290 emoji classes, each drawn in two designs (Google, Twitter).

The retrieval task: given an emoji in one design, find the same emoji in the other.
Classes are split within every sub-group ("animal-bird", "food-fruit", ...), so every
unseen test class has relatives among the training classes. The files are committed
in ``demo_emoji/`` (see its ATTRIBUTION.md); the repository's
``tools/make_demo_set.py`` rebuilds them.
"""

import json
import os

import numpy as np

from tf_langdml.data.preprocessing import DEFAULT_BACKGROUND, DEFAULT_MAX_PIXELS, Background, source_formats
from tf_langdml.data.splits import Split, SplitDataset

DEMO_DIR = os.path.join(os.path.dirname(__file__), "demo_emoji")
EMOJI_STYLES = ("google", "twitter")


def demo_classes() -> list[dict[str, str]]:
    """Metadata of every demo class: code, name, group, subgroup and split."""
    path = os.path.join(DEMO_DIR, "classes.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"The demo set is missing ({path}); reinstall tf_langdml, or rebuild it with "
            f"`python tools/make_demo_set.py` from a source checkout (its docstring says how)."
        )
    with open(path) as file:
        return json.load(file)["classes"]


def load_demo(background: Background = DEFAULT_BACKGROUND, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> SplitDataset:
    """The demo set as a :class:`~tf_langdml.data.SplitDataset` (2 images per class).

    ``background`` and ``max_pixels``: how the images are decoded (see :class:`~tf_langdml.data.Split`).

    Returns:
        148 training and 142 test classes; labels 0..C-1 within each split, images
        are 64 x 64 RGBA PNG files (transparent background, composited onto ``background``
        when decoded); class names such as "fox face".
    """
    classes = demo_classes()
    splits = []
    for split in ("train", "test"):
        chosen = [entry for entry in classes if entry["split"] == split]
        sources = [
            os.path.join(DEMO_DIR, design, f"{entry['code']}.png") for entry in chosen for design in EMOJI_STYLES
        ]
        missing = [path for path in sources if not os.path.isfile(path)]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} demo image(s) are missing, e.g. {missing[0]}; reinstall tf_langdml."
            )
        splits.append(
            Split(
                sources=np.asarray(sources),
                labels=np.repeat(np.arange(len(chosen), dtype=np.int64), len(EMOJI_STYLES)),
                class_names=tuple(entry["name"] for entry in chosen),
                raw_class_names=tuple(entry["name"] for entry in chosen),
                from_files=True,
                background=background,
                max_pixels=max_pixels,
                formats=source_formats(sources),
            )
        )
    return SplitDataset(splits[0], splits[1])
