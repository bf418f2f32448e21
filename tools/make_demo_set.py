"""Build the offline demo set (emoji in two designs) from the packed npm packages.

A plain script of the repository (standard library only: no TensorFlow, no install
needed), run from the repository root:

    npm pack emoji-datasource-google@16.0.0 emoji-datasource-twitter@16.0.0
    python tools/make_demo_set.py \\
        --google emoji-datasource-google-16.0.0.tgz --twitter emoji-datasource-twitter-16.0.0.tgz

Writes the package folder ``tf_langdml/data/demo_emoji/`` of this checkout (found from
the script's own location, whatever the working directory; ``--out DIR`` writes
elsewhere): ``classes.json`` (name, group, sub-group, split of each class),
``google/<code>.png`` and ``twitter/<code>.png`` (the packages' 64 x 64 RGBA PNGs,
byte for byte: decoding composites their transparent background onto
``data.background``, white by default), and the licence notes. Classes: the
emoji of the groups "Animals & Nature" and "Food & Drink" that both designs draw
(skin-tone variants are separate entries in ``emoji.json`` and are not used).
Split: within every sub-group, in the packages' sort order, alternate classes go to
train and test (train gets the odd one out), so every unseen class has relatives
among the seen ones.
"""

import argparse
import json
import os
import tarfile

GROUPS = ("Animals & Nature", "Food & Drink")
# The package folder that load_demo reads: tools/../tf_langdml/data/demo_emoji.
DEMO_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tf_langdml", "data", "demo_emoji")
EMOJI_STYLES = {
    "google": ("Google Noto Color Emoji", "Apache License 2.0", "https://github.com/googlefonts/noto-emoji"),
    "twitter": (
        "Twitter Twemoji",
        "Creative Commons Attribution 4.0 (CC-BY-4.0)",
        "https://github.com/jdecked/twemoji",
    ),
}


def select_classes(emoji):
    """The demo's classes with their split, in the packages' sort order."""
    chosen = [
        entry
        for entry in emoji
        if entry["category"] in GROUPS and entry.get("has_img_google") and entry.get("has_img_twitter")
    ]
    chosen.sort(key=lambda entry: entry["sort_order"])
    position_in_subgroup = {}
    classes = []
    for entry in chosen:
        position = position_in_subgroup.get(entry["subcategory"], 0)
        position_in_subgroup[entry["subcategory"]] = position + 1
        classes.append(
            {
                "code": entry["unified"].lower(),
                "image": entry["image"],
                "name": entry["name"].lower(),
                "group": entry["category"],
                "subgroup": entry["subcategory"],
                "split": "train" if position % 2 == 0 else "test",
            }
        )
    return classes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--google", required=True, help="emoji-datasource-google-*.tgz from npm pack")
    parser.add_argument("--twitter", required=True, help="emoji-datasource-twitter-*.tgz from npm pack")
    parser.add_argument("--out", default=DEMO_DIR)
    args = parser.parse_args()

    archives = {"google": tarfile.open(args.google), "twitter": tarfile.open(args.twitter)}
    emoji = json.load(archives["google"].extractfile("package/emoji.json"))
    classes = select_classes(emoji)
    for design, archive in archives.items():
        os.makedirs(os.path.join(args.out, design), exist_ok=True)
        for entry in classes:
            png = archive.extractfile(f"package/img/{design}/64/{entry['image']}").read()
            with open(os.path.join(args.out, design, f"{entry['code']}.png"), "wb") as file:
                file.write(png)
    version = json.load(archives["google"].extractfile("package/package.json"))["version"]
    for entry in classes:
        del entry["image"]
    with open(os.path.join(args.out, "classes.json"), "w") as file:
        json.dump({"source": f"emoji-datasource-google / -twitter {version}", "classes": classes}, file, indent=1)
    with open(os.path.join(args.out, "ATTRIBUTION.md"), "w") as file:
        file.write("# Demo images: licences and attribution\n\n")
        file.write(
            f"Made by `python tools/make_demo_set.py` from the npm packages "
            f"emoji-datasource-google and emoji-datasource-twitter {version} (the 64 x 64 PNGs under "
            f"`img/*/64/`, unchanged). Names, groups and sub-groups come from their "
            f"`emoji.json` (emoji-data, MIT licence, Copyright (c) 2013 Cal Henderson).\n\n"
        )
        for design, (title, licence, url) in EMOJI_STYLES.items():
            file.write(f"- `{design}/`: {title}, {licence}, {url}\n")
        file.write(
            "\nTwemoji graphics: Copyright 2019 Twitter, Inc and other contributors; "
            "Copyright 2024 jdecked and other contributors. Licensed under CC-BY 4.0: "
            "https://creativecommons.org/licenses/by/4.0/\n"
            "Noto Emoji images: Copyright Google Inc., licensed under the Apache License, "
            "Version 2.0: https://www.apache.org/licenses/LICENSE-2.0\n"
        )
    counts = {split: sum(entry["split"] == split for entry in classes) for split in ("train", "test")}
    print(f"wrote {len(classes)} classes x 2 designs to {args.out}: {counts}")


if __name__ == "__main__":
    main()
