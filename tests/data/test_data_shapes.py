"""Shapes: determinism, laziness, captions vs labels, holdouts and filters."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfm.data import Sample, Shapes, get_dataset, questions
from mmfm.data.shapes import COLOR_RGB, COLORS, COUNTS, POSITIONS, SHAPE_PLURALS, SHAPES, SIZES


def pixels(sample: Sample) -> np.ndarray:
    return np.asarray(sample.image)


def test_same_index_same_sample_across_instances():
    a, b = Shapes(size=50, seed=3), Shapes(size=50, seed=3)
    for i in (0, 7, 49):
        sa, sb = a[i], b[i]
        assert np.array_equal(pixels(sa), pixels(sb))
        assert sa.captions == sb.captions
        assert sa.attributes == sb.attributes and sa.label == sb.label
    # order of access does not matter (no hidden sequential state)
    assert np.array_equal(pixels(a[7]), pixels(Shapes(size=50, seed=3).get_sample(7)))


def test_seed_split_and_index_change_the_sample():
    base = Shapes(size=100, seed=0)
    same = lambda x, y: np.array_equal(pixels(x), pixels(y))  # noqa: E731
    assert sum(same(base[i], base[i + 1]) for i in range(50)) == 0
    assert sum(same(base[i], Shapes(size=100, seed=1)[i]) for i in range(50)) <= 1
    for split in ("val", "test"):
        other = Shapes(split=split, size=100)
        assert sum(same(base[i], other[i]) for i in range(50)) <= 1


def test_lazy_million_samples():
    ds = Shapes(size=1_000_000)
    assert len(ds) == 1_000_000
    last = ds[999_999]
    assert last.image.size == (64, 64)
    assert ds[-1].captions == last.captions
    with pytest.raises(IndexError):
        ds[1_000_000]


def test_image_format_and_default_single_object():
    ds = Shapes(size=20, image_size=48)
    for s in ds:
        assert s.image.mode == "RGB" and s.image.size == (48, 48)
        assert s.attributes["count"] == 0
        assert s.label == s.attributes["shape"]
        assert set(s.attributes) == {"shape", "color", "size", "position", "count"}
        assert 3 <= len(s.captions) <= 5


def test_captions_mention_labelled_attributes():
    ds = Shapes(size=300)
    both = total = 0
    for i in range(len(ds)):
        s = ds[i]
        shape, color = SHAPES[s.attributes["shape"]], COLORS[s.attributes["color"]]
        size, pos = SIZES[s.attributes["size"]], POSITIONS[s.attributes["position"]]
        full = s.captions[0]  # the first caption is always a full description
        for word in (shape, color, size, pos):
            assert word in full, (word, full)
        assert any(shape in c and color in c for c in s.captions)
        for c in s.captions:  # no caption contradicts the labels
            assert not any(other in c.split() for other in SHAPES if other != shape)
            assert not any(other in c.split() for other in COLORS if other != color)
        both += sum(shape in c and color in c for c in s.captions)
        total += len(s.captions)
    assert both / total > 0.6  # "most of the time"


def test_label_matches_pixels_at_object_centre():
    ds = Shapes(size=200, color_jitter=0)
    for i in range(len(ds)):
        scene = ds.scene(i)
        obj = scene.objects[0]
        img = pixels(ds[i])
        x, y = int(obj.cx * ds.image_size), int(obj.cy * ds.image_size)
        assert tuple(img[y, x]) == COLOR_RGB[COLORS[obj.color]]


def test_multi_object_counts_and_group_captions():
    ds = Shapes(size=300, max_objects=3)
    counts = set()
    for i in range(len(ds)):
        scene, s = ds.scene(i), ds[i]
        n = s.attributes["count"] + 1
        counts.add(n)
        assert scene.count == n
        assert len({o.position for o in scene.objects}) == n  # no two objects on one spot
        # identical copies by default
        assert len({(o.shape, o.color, o.size) for o in scene.objects}) == 1
        if n > 1:
            shapes = SHAPE_PLURALS[SHAPES[s.label]]
            assert COUNTS[n - 1] in s.captions[0] and shapes in s.captions[0]
    assert counts == {1, 2, 3}
    assert ds.attribute_classes["count"] == ["one", "two", "three"]


def test_mixed_objects_are_distinct_and_described():
    ds = Shapes(size=200, max_objects=3, mixed_objects=True)
    for i in range(len(ds)):
        scene = ds.scene(i)
        looks = [(o.shape, o.color) for o in scene.objects]
        assert len(set(looks)) == len(looks)
        for o in scene.objects:
            assert f"{COLORS[o.color]} {SHAPES[o.shape]}" in scene.captions[0]


def test_holdout_combination_never_in_train_and_only_in_holdout_split():
    holdout = [("color", "red"), ("shape", "circle")]  # one combination, as pairs
    red, circle = COLORS.index("red"), SHAPES.index("circle")
    train = Shapes(size=3000, holdout=holdout, max_objects=3)
    seen_red = seen_circle = False
    for i in range(len(train)):
        for o in train.scene(i).objects:
            assert not (o.color == red and o.shape == circle)
            seen_red |= o.color == red
            seen_circle |= o.shape == circle
    assert seen_red and seen_circle  # only the combination is held out

    val_in = Shapes(split="val", size=500, holdout={"color": "red", "shape": "circle"})
    assert not any(val_in[i].attributes["color"] == red and val_in[i].label == circle for i in range(500))
    only = Shapes(split="test", size=200, holdout=holdout, only_holdout=True)
    for i in range(len(only)):
        s = only[i]
        assert s.attributes["color"] == red and s.label == circle
        assert "red circle" in s.captions[0]


def test_several_holdout_combinations():
    combos = [{"color": "red", "shape": "circle"}, {"color": "blue", "shape": "square"}]
    only = Shapes(split="val", size=300, holdout=combos, only_holdout=True)
    seen = {(COLORS[only[i].attributes["color"]], SHAPES[only[i].label]) for i in range(300)}
    assert seen == {("red", "circle"), ("blue", "square")}
    train = Shapes(size=2000, holdout=combos)
    pairs = {(COLORS[train[i].attributes["color"]], SHAPES[train[i].label]) for i in range(2000)}
    assert not pairs & {("red", "circle"), ("blue", "square")}


def test_exclude_and_include_filters_keep_label_space():
    held = ["purple", "orange"]
    train = Shapes(size=1000, exclude={"color": held})
    assert not {COLORS[train[i].attributes["color"]] for i in range(1000)} & set(held)
    domain = Shapes(size=300, include={"colour": held})  # British spelling accepted
    colors = {COLORS[domain[i].attributes["color"]] for i in range(300)}
    assert colors == set(held)
    # label indices are global, so both datasets share one label space
    assert train.attribute_classes == domain.attribute_classes
    assert domain.zero_shot_tasks()["color"].classnames == list(COLORS)
    counts = Shapes(size=200, max_objects=3, include={"count": [2, "three"]})
    assert {counts[i].attributes["count"] for i in range(200)} == {1, 2}


def test_invalid_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="train"):
        Shapes(holdout={"color": "red"}, only_holdout=True)
    with pytest.raises(ValueError, match="unknown Shapes attribute"):
        Shapes(exclude={"texture": ["x"]})
    with pytest.raises(ValueError, match="unknown color"):
        Shapes(exclude={"color": ["mauve"]})
    with pytest.raises(ValueError, match="no allowed shape"):
        Shapes(exclude={"shape": list(SHAPES)})
    with pytest.raises(ValueError, match="holdout"):
        Shapes(include={"shape": ["circle"]}, holdout={"shape": "circle"})
    with pytest.raises(ValueError, match="split"):
        Shapes(split="validation")


def test_zero_shot_tasks():
    tasks = Shapes(size=10, max_objects=3).zero_shot_tasks()
    assert {"shape", "color", "size", "count"} <= set(tasks)
    assert tasks["shape"].classnames == list(SHAPES) and tasks["shape"].attribute is None
    assert "a photo of a {}." in tasks["shape"].templates
    assert tasks["color"].attribute == "color" and tasks["color"].classnames == list(COLORS)
    assert tasks["count"].classnames == ["one", "two", "three"]
    assert all("{}" in t for task in tasks.values() for t in task.templates)
    s = Shapes(size=10)[3]
    assert tasks["shape"].target(s) == s.label and tasks["color"].target(s) == s.attributes["color"]
    assert tasks["color"].prompts()[0][0] == "a red shape."


def test_questions_answer_from_labels():
    s = Shapes(size=10)[0]
    qa = dict(questions(s))
    assert qa["what shape is this?"] == SHAPES[s.label]
    assert qa["what colour is it?"] == COLORS[s.attributes["color"]]
    assert qa["how many objects are there?"] == "one"
    assert "yes" in qa.values() and "no" in qa.values()
    mixed = Shapes(size=50, max_objects=3, mixed_objects=True)
    scene = next(mixed.scene(i) for i in range(50) if mixed.scene(i).count == 3)
    qa = questions(scene)
    for o in scene.objects:
        assert (SHAPES[o.shape] in {a for _, a in qa}) and (COLORS[o.color] in {a for _, a in qa})
    assert dict(qa)["how many objects are there?"] == "three"


def test_textures_are_deterministic_and_noisy():
    ds = Shapes(size=10, textures=True)
    a, b = pixels(ds[2]), pixels(Shapes(size=10, textures=True)[2])
    assert np.array_equal(a, b)
    corner = a[:6, :6].reshape(-1, 3)
    assert len({tuple(p) for p in corner}) > 5  # noisy background, not flat
    flat = pixels(Shapes(size=10)[2])[:6, :6].reshape(-1, 3)
    assert len({tuple(p) for p in flat}) == 1


def test_registry_builds_shapes():
    ds = get_dataset("shapes", split="val", size=5)
    assert isinstance(ds, Shapes) and len(ds) == 5 and ds.split == "val"


def test_mixed_objects_counts_limited_by_distinct_looks():
    ds = Shapes(size=100, max_objects=3, mixed_objects=True, include={"shape": ["circle"], "color": ["red", "blue"]})
    assert {ds[i].attributes["count"] for i in range(100)} == {0, 1}  # at most 2 distinct looks
    with pytest.raises(ValueError, match="no allowed count"):
        Shapes(max_objects=3, mixed_objects=True, include={"shape": ["circle"], "color": ["red"], "count": [3]})


@settings(max_examples=20, deadline=None)
@given(
    excluded=st.sets(st.sampled_from(COLORS), max_size=5),
    held_shape=st.sampled_from(SHAPES),
    held_color=st.sampled_from(COLORS),
    seed=st.integers(0, 2**32),
    max_objects=st.integers(1, 3),
)
def test_filters_hold_for_any_setting(excluded, held_shape, held_color, seed, max_objects):
    ds = Shapes(
        size=60,
        seed=seed,
        max_objects=max_objects,
        exclude={"color": sorted(excluded)},
        holdout={"shape": held_shape, "color": held_color},
    )
    for i in range(len(ds)):
        for o in ds.scene(i).objects:
            assert COLORS[o.color] not in excluded
            assert (SHAPES[o.shape], COLORS[o.color]) != (held_shape, held_color)
