"""A demo-sized subset of the icon collection: well-known icons, a few designs each.

A plain script (standard library only), run from the repository root on a folder that
``tools/make_icon_set.py`` built::

    python tools/make_icon_subset.py --icons /work/data/icons --out /work/data/icons13 \\
        --min-themes 13 --designs 3

Keeps the classes (icon names) that at least ``--min-themes`` themes draw and, for each,
the pictures of the ``--designs`` largest themes that draw it (themes ranked by their
number of pictures in the whole build, ties by name: papirus, breeze, deepin-bloom,
mint-y, numix, ... in the first build). Files are copied byte for byte into
``<out>/<icon name>/<theme>.png``, an image folder for ``data.dataset: folder``; sorted
names put the first half of the classes in training and the second half in test.
With the first build (2,413 classes), 13 themes and 3 designs gave 249 classes and
747 images. Pictures shared by two classes (``shared_images`` in ``classes.json``) are
kept; build with ``make_icon_set.py --exclusive-pictures`` to avoid them.
"""

import argparse
import json
import os
import shutil


def choose(classes_json, min_themes, designs):
    """[(class name, [themes])]: the kept classes and their designs, sorted by name."""
    themes = classes_json["themes"]
    order = sorted(themes, key=lambda theme: (-themes[theme]["images"], theme))
    chosen = []
    for entry in sorted(classes_json["classes"], key=lambda entry: entry["name"]):
        if len(entry["themes"]) >= min_themes:
            chosen.append((entry["name"], [theme for theme in order if theme in entry["themes"]][:designs]))
    return chosen


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--icons", required=True, help="a folder make_icon_set.py wrote (with classes.json)")
    parser.add_argument("--out", required=True, help="the subset folder (replaced)")
    parser.add_argument("--min-themes", type=int, default=13)
    parser.add_argument("--designs", type=int, default=3)
    arguments = parser.parse_args()
    index = os.path.join(arguments.icons, "classes.json")
    if not os.path.isfile(index):
        raise SystemExit(f"{index} does not exist: build the collection first with tools/make_icon_set.py.")
    if arguments.designs < 2 or arguments.min_themes < arguments.designs:
        raise SystemExit(
            f"--designs must be at least 2 and at most --min-themes; got {arguments.designs} "
            f"and {arguments.min_themes}."
        )
    with open(index, encoding="utf-8") as handle:
        chosen = choose(json.load(handle), arguments.min_themes, arguments.designs)
    if os.path.exists(arguments.out):
        shutil.rmtree(arguments.out)
    for name, themes in chosen:
        os.makedirs(os.path.join(arguments.out, name))
        for theme in themes:
            shutil.copyfile(
                os.path.join(arguments.icons, name, f"{theme}.png"), os.path.join(arguments.out, name, f"{theme}.png")
            )
    print(f"wrote {len(chosen)} classes, {sum(len(themes) for _, themes in chosen)} images to {arguments.out}")


if __name__ == "__main__":
    main()
