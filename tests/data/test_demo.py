"""load_demo: the committed emoji set, its class-disjoint split and its images."""

import collections
import json
import os

import numpy as np

from tf_langdml.data import demo_classes, load_demo, make_eval_dataset
from tf_langdml.data.demo import DEMO_DIR


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
