"""class_balanced_indices: k classes x m images, coverage, determinism, errors, scale."""

import numpy as np
import pytest

from tf_langdml.data.sampler import class_balanced_indices


def take(dataset, count):
    return np.stack([batch.numpy() for batch in dataset.take(count)])


def uneven_labels(seed=0, num_classes=13):
    rng = np.random.default_rng(seed)
    counts = rng.integers(2, 9, size=num_classes)
    labels = np.repeat(np.arange(num_classes) * 10 + 3, counts)  # labels need not be 0..C-1
    rng.shuffle(labels)
    return labels


@pytest.mark.parametrize("examples_per_class", [2, 3])
def test_every_batch_is_k_distinct_classes_times_m_distinct_images(examples_per_class):
    labels = uneven_labels()
    batch_size = 4 * examples_per_class
    batches = take(class_balanced_indices(labels, batch_size, examples_per_class, seed=1), 200)
    assert batches.shape == (200, batch_size) and batches.dtype == np.int64
    for batch in batches:
        groups = labels[batch].reshape(4, examples_per_class)
        assert (groups == groups[:, :1]).all()  # each group of m is one class
        assert len(set(groups[:, 0])) == 4  # k distinct classes
        for group_indices, group_labels in zip(batch.reshape(4, -1), groups):
            if (labels == group_labels[0]).sum() >= examples_per_class:
                assert len(set(group_indices)) == examples_per_class  # distinct images


def test_every_class_appears_within_an_epoch_of_batches():
    labels = uneven_labels(seed=2, num_classes=29)
    batch_size = 10
    batches_per_epoch = labels.size // batch_size
    batches = take(class_balanced_indices(labels, batch_size, 2, seed=3), 3 * batches_per_epoch)
    for epoch in range(3):
        seen = set(labels[batches[epoch * batches_per_epoch : (epoch + 1) * batches_per_epoch]].ravel())
        assert seen == set(labels)


def test_small_class_is_drawn_with_replacement():
    labels = np.array([0, 1, 1, 1, 2, 2, 2])  # class 0 has one image
    batches = take(class_balanced_indices(labels, 9, 3, seed=0), 20)
    for batch in batches:
        group = batch[labels[batch] == 0]
        assert group.size in (0, 3)
        assert set(group) <= {0}


def test_seeded_reproducible_and_resumable():
    labels = uneven_labels()
    first = take(class_balanced_indices(labels, 8, 2, seed=5), 30)
    again = take(class_balanced_indices(labels, 8, 2, seed=5), 30)
    other = take(class_balanced_indices(labels, 8, 2, seed=6), 30)
    resumed = take(class_balanced_indices(labels, 8, 2, seed=5, start_batch=17), 13)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    np.testing.assert_array_equal(first[17:], resumed)


def test_impossible_settings_are_errors_at_build_time():
    labels = uneven_labels(num_classes=5)
    with pytest.raises(ValueError, match="batch_size=9 must be a positive multiple of examples_per_class=2"):
        class_balanced_indices(labels, 9, 2)
    with pytest.raises(ValueError, match="needs 6 distinct classes per batch, but the data has 5"):
        class_balanced_indices(labels, 12, 2)
    with pytest.raises(ValueError, match="no labels"):
        class_balanced_indices([], 4, 2)


def test_sop_scale_batches_are_56_classes_times_2_images():
    rng = np.random.default_rng(0)
    counts = rng.integers(2, 13, size=11_318)
    labels = np.repeat(np.arange(counts.size), counts)
    batches = take(class_balanced_indices(labels, 112, 2, seed=0), 20)
    assert batches.shape == (20, 112)
    for batch in batches:
        pairs = labels[batch].reshape(56, 2)
        assert len(set(pairs[:, 0].tolist())) == 56 and np.array_equal(pairs[:, 0], pairs[:, 1])
        assert len(set(batch.tolist())) == 112
