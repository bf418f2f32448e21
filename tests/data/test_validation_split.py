"""Validation classes: a deterministic, class-disjoint part of the training classes."""

import numpy as np
import pytest

from tf_langdml.data import Split, SplitDataset, hold_out_validation, validation_classes


def _split(num_classes, per_class=2, prefix="c"):
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    names = tuple(f"{prefix}{index}" for index in range(num_classes))
    return Split(
        sources=np.array([f"{names[label]}/{i}.png" for i, label in enumerate(labels)]),
        labels=labels,
        class_names=names,
        raw_class_names=names,
    )


@pytest.mark.parametrize(
    "num_classes, fraction, expected",
    [
        (10, 0.3, [3, 6, 9]),  # every 1/0.3-th class: floor((c+1)*0.3) > floor(c*0.3)
        (10, 0.5, [1, 3, 5, 7, 9]),
        (7, 0.25, [3]),
        (148, 0.3, None),  # the demo: floor(148 * 0.3) = 44 classes
    ],
)
def test_validation_classes_are_evenly_spread_and_counted_exactly(num_classes, fraction, expected):
    chosen = validation_classes(num_classes, fraction)
    if expected is not None:
        assert chosen.tolist() == expected
    assert len(chosen) == int(num_classes * fraction + 1e-9)
    assert np.array_equal(chosen, validation_classes(num_classes, fraction))  # deterministic
    # hand check of the rule, with exact decimals (0.3 * 10 is 3.0000000000000004 in binary floating point)
    from fractions import Fraction

    exact = Fraction(str(fraction))
    assert chosen.tolist() == [c for c in range(num_classes) if (c + 1) * exact // 1 > c * exact // 1]


def test_hold_out_validation_is_class_disjoint_relabelled_and_leaves_test_alone():
    data = SplitDataset(_split(10), _split(6, prefix="t"))
    held = hold_out_validation(data, 0.3)
    train, validation, test = held.train_split, held.validation_split, held.test_split
    assert validation.class_names == ("c3", "c6", "c9")
    assert train.class_names == ("c0", "c1", "c2", "c4", "c5", "c7", "c8")
    assert not set(train.class_names) & set(validation.class_names)
    assert test is data.test_split
    # labels 0..C-1 within each split, images follow their class
    for split in (train, validation):
        assert sorted(set(split.labels.tolist())) == list(range(split.num_classes))
        for source, label in zip(split.sources, split.labels):
            assert source.startswith(split.class_names[label] + "/")
    assert len(train.labels) + len(validation.labels) == len(data.train_split.labels)


def test_fraction_zero_changes_nothing():
    data = SplitDataset(_split(10), _split(6, prefix="t"))
    assert hold_out_validation(data, 0) is data and data.validation_split is None


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, "0.3", True])
def test_bad_fractions_are_refused(fraction):
    with pytest.raises(ValueError, match="validation_fraction"):
        validation_classes(10, fraction)


def test_too_few_classes_left_names_the_range():
    data = SplitDataset(_split(5), _split(4, prefix="t"))
    with pytest.raises(ValueError, match=r"both need at least 2: choose a fraction between 0.4 and 0.6"):
        hold_out_validation(data, 0.2)  # 1 validation class
