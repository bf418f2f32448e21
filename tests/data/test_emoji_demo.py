"""load_demo: the committed emoji set, its class-disjoint split and its images."""

import collections
import json
import os
import pathlib

import numpy as np
from helpers import run_python

from tf_langdml.data import demo_classes, load_demo, make_eval_dataset
from tf_langdml.data.emoji_demo import DEMO_DIR


def test_demo_split_is_class_disjoint_within_every_subgroup():
    classes = demo_classes()
    assert len(classes) == 290
    assert {entry["group"] for entry in classes} == {"Animals & Nature", "Food & Drink"}
    by_subgroup = collections.defaultdict(collections.Counter)
    for entry in classes:
        by_subgroup[entry["subgroup"]][entry["split"]] += 1
    for subgroup, counts in by_subgroup.items():
        assert counts["train"] - counts["test"] in (0, 1), subgroup
    data = load_demo()
    assert (data.train_split.num_classes, data.test_split.num_classes) == (148, 142)
    assert not set(data.train_class_names) & set(data.test_class_names)
    assert "fox face" in data.train_class_names + data.test_class_names


def test_two_designs_per_class_and_images_decode():
    data = load_demo()
    for split in (data.train_split, data.test_split):
        assert np.bincount(split.labels).tolist() == [2] * split.num_classes
        designs = [os.path.basename(os.path.dirname(path)) for path in split.sources[:2]]
        assert designs == ["google", "twitter"]
    images, labels = next(iter(make_eval_dataset(data.test_split, batch_size=4, image_size=64, resize=64)))
    assert images.shape == (4, 64, 64, 3) and labels.numpy().tolist() == [0, 0, 1, 1]
    # White background: the corners of an emoji are white after compositing.
    assert float(images[0, 0, 0].numpy().min()) >= 250


def test_attribution_sits_beside_the_images():
    text = open(os.path.join(DEMO_DIR, "ATTRIBUTION.md")).read()
    assert "Apache License 2.0" in text and "CC-BY 4.0" in text
    with open(os.path.join(DEMO_DIR, "classes.json")) as file:
        assert json.load(file)["source"].startswith("emoji-datasource-google")


def test_the_build_script_writes_where_load_demo_reads_without_tensorflow(tmp_path):
    script = pathlib.Path(__file__).resolve().parents[2] / "tools" / "make_demo_set.py"
    code = (
        "import runpy, sys; found = runpy.run_path(sys.argv[1]); "  # defines, does not run main()
        "print(found['DEMO_DIR']); print('tensorflow' in sys.modules); "
        "entries = [dict(category=g, subcategory=s, sort_order=o, unified=f'{o:X}', image=f'{o}.png', name=f'E{o}', "
        "has_img_google=True, has_img_twitter=o != 4) for o, g, s in "
        "[(1, 'Food & Drink', 'fruit'), (2, 'Food & Drink', 'fruit'), (3, 'Food & Drink', 'fruit'), "
        "(4, 'Food & Drink', 'fruit'), (5, 'Smileys & Emotion', 'face'), (0, 'Animals & Nature', 'bird')]]; "
        "print([(c['code'], c['split']) for c in found['select_classes'](entries)])"
    )
    # Another working directory: the default output comes from the script's own location.
    result = run_python(code, script, cwd=tmp_path)
    demo_dir, imports_tensorflow, classes = result.stdout.splitlines()
    assert os.path.samefile(demo_dir, DEMO_DIR) and imports_tensorflow == "False"
    # Sorted; other groups and emoji one design lacks are left out; alternate per sub-group, train first.
    assert classes == "[('0', 'train'), ('1', 'train'), ('2', 'test'), ('3', 'train')]"
