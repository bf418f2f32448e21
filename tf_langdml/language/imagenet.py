"""The 1000 ImageNet-1k class names, in the index order of the classifiers' logits.

``imagenet_class_names.txt`` ships with the package: one class per line, synonyms
separated by ", " ("tench, Tinca tinca"). It was copied from the list that
tensorflow-datasets (Apache-2.0) carries in ``tensorflow_datasets/datasets/siscore/
labels.py``; a test checks the two agree.
"""

import pathlib

_NAMES_FILE = pathlib.Path(__file__).with_name("imagenet_class_names.txt")

# ImageNet-1k: the logits of every classifier here, and the top-k limit of pseudo-labels.
NUM_IMAGENET_CLASSES = 1000
IMAGENET_CLASS_NAMES = tuple(_NAMES_FILE.read_text(encoding="utf-8").splitlines())
assert len(IMAGENET_CLASS_NAMES) == NUM_IMAGENET_CLASSES, f"{_NAMES_FILE} must hold {NUM_IMAGENET_CLASSES} lines"


def first_synonym(name: str) -> str:
    """The first of a class's comma-separated synonyms: "tench, Tinca tinca" -> "tench"."""
    return name.split(",")[0].strip()
