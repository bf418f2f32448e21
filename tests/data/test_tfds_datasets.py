"""load_tfds_dataset under tfds.testing.mock_data: class-disjoint splits and class counts."""

import io

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from tf_langdml.data import load_tfds_dataset, make_eval_dataset


def tiny_jpeg(seed):
    buffer = io.BytesIO()
    array = np.random.default_rng(seed).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


JPEGS = [tiny_jpeg(seed) for seed in range(3)]


def fake_examples(builder, split):
    """What the real TFDS data holds, in miniature: every class in both per-image splits
    (CUB, Cars), or Ebay_train / Ebay_test product ranges (SOP); images stay encoded."""
    name = builder.name
    if name == "stanford_online_products":
        labels = np.arange(0, 11318) if split == "train" else np.arange(11318, 22634)
        return {
            "image": [JPEGS[label % 3] for label in labels],
            "class_id": labels,
            "super_class_id": labels % 12,
        }
    num_classes = 200 if name == "caltech_birds2011" else 196
    labels = np.arange(num_classes)
    examples = {"image": [JPEGS[label % 3] for label in labels], "label": labels}
    if name == "caltech_birds2011":
        examples["label_name"] = [f"bird_species_{label:03d}".encode() for label in labels]
    return examples


def as_dataset(self, split, decoders=None, **kwargs):
    assert decoders is not None and "image" in decoders  # images must stay encoded
    return tf.data.Dataset.from_tensor_slices(fake_examples(self, split))


@pytest.mark.parametrize(
    "name,train_classes,test_classes,first_train_name",
    [
        ("cub200", 100, 100, "bird species 000"),
        ("cars196", 98, 98, "am general hummer suv 2000"),
        ("sop", 11318, 11316, "bicycle"),
    ],
)
def test_class_disjoint_splits_and_class_counts(name, train_classes, test_classes, first_train_name):
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        data = load_tfds_dataset(name)
    assert (data.train_split.num_classes, data.test_split.num_classes) == (train_classes, test_classes)
    assert data.train_class_names[0] == first_train_name
    for split, count in ((data.train_split, train_classes), (data.test_split, test_classes)):
        assert sorted(set(split.labels.tolist())) == list(range(count))
    assert not set(data.train_split.raw_class_names) & set(data.test_split.raw_class_names) or name == "sop"
    images, labels = next(iter(make_eval_dataset(data.test_split, batch_size=4, image_size=8, resize=8)))
    assert images.shape == (4, 8, 8, 3) and labels.numpy().tolist() == data.test_split.labels[:4].tolist()


def test_cub_test_classes_are_101_to_200():
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        data = load_tfds_dataset("cub200")
    assert data.test_split.raw_class_names[0] == "bird_species_100"
    assert data.test_split.raw_class_names[-1] == "bird_species_199"


def test_sop_names_are_the_super_classes():
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        data = load_tfds_dataset("sop")
    assert data.train_class_names[:4] == ["bicycle", "cabinet", "chair", "coffee maker"]


def test_missing_data_says_where_and_what_to_do(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"'caltech_birds2011' is not prepared in .*tfds build caltech_birds2011"
    ):
        load_tfds_dataset("cub200", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="manual_dir .* does not exist"):
        load_tfds_dataset("cars196", data_dir=str(tmp_path), manual_dir=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="Unknown TFDS dataset 'mnist'"):
        load_tfds_dataset("mnist")
