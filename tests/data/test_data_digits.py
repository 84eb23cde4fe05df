"""Digits: fixed stratified split of scikit-learn's handwritten digits."""

from __future__ import annotations

import numpy as np
import pytest

from mmfm.data import Digits, get_dataset
from mmfm.data.digits import DIGIT_NAMES, digit_split_indices


def test_split_sizes_cover_everything_without_overlap():
    parts = {s: set(digit_split_indices(s).tolist()) for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == 1797
    assert set().union(*parts.values()) == set(range(1797))
    assert not parts["train"] & parts["val"] and not parts["train"] & parts["test"] and not parts["val"] & parts["test"]
    sizes = {s: len(Digits(s)) for s in parts}
    assert abs(sizes["train"] - 0.7 * 1797) < 10
    assert abs(sizes["val"] - 0.1 * 1797) < 10
    assert abs(sizes["test"] - 0.2 * 1797) < 10


@pytest.mark.parametrize("split,frac", [("train", 0.7), ("val", 0.1), ("test", 0.2)])
def test_split_is_stratified(split, frac):
    ds = Digits(split)
    counts = np.bincount([ds.get_label(i) for i in range(len(ds))], minlength=10)
    # every class gets its share of ~180 images, up to rounding
    assert all(abs(c - frac * 180) <= 4 for c in counts), counts


def test_seed_changes_split_deterministically():
    assert np.array_equal(digit_split_indices("test", seed=0), digit_split_indices("test", seed=0))
    assert not np.array_equal(digit_split_indices("test", seed=0), digit_split_indices("test", seed=1))


def test_samples_are_rgb_upsampled_with_captions():
    ds = Digits("val", image_size=40)
    s = ds[5]
    assert s.image.mode == "RGB" and s.image.size == (40, 40)
    arr = np.asarray(s.image)
    assert np.array_equal(arr[..., 0], arr[..., 1])  # grey replicated to RGB
    assert arr.max() > 150  # ink is visible
    word = DIGIT_NAMES[s.label]
    assert all(word in c or str(s.label) in c for c in s.captions)
    assert len(s.captions) >= 3
    assert np.array_equal(arr, np.asarray(Digits("val", image_size=40)[5].image))


def test_zero_shot_task_and_registry():
    ds = get_dataset("digits", split="test")
    task = ds.zero_shot_tasks()["digit"]
    assert task.classnames == list(DIGIT_NAMES) and task.attribute is None
    assert task.prompts()[7][0] == "a photo of the number seven."
    with pytest.raises(ValueError):
        Digits("holdout")
