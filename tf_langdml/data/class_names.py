"""Readable class names from dataset folder and label names."""

import re

_LEADING_NUMBER = re.compile(r"^\s*\d+\s*[._\-)]\s*")
_SEPARATORS = re.compile(r"[_\s]+")


def clean_class_name(raw_name: str) -> str:
    """Turn a dataset's class label into words a text encoder understands.

    ``"001.Black_footed_Albatross"`` -> ``"black footed albatross"``: the leading
    number and its separator go, underscores become spaces, case is lowered, runs of
    white space collapse. Hyphens, digits inside the name and years stay, so Cars196's
    ``"AM General Hummer SUV 2000"`` -> ``"am general hummer suv 2000"`` keeps make,
    model and year.

    Raises:
        ValueError: the name is empty once cleaned.
    """
    name = _LEADING_NUMBER.sub("", str(raw_name), count=1)
    name = _SEPARATORS.sub(" ", name).strip().lower()
    if not name:
        raise ValueError(f"Class name {raw_name!r} is empty once its numbering is removed; rename the class.")
    return name
