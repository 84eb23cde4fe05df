"""Linear probe: agreement with hand-tuned scikit-learn on digits, the C sweep, splits, tasks."""
import warnings

import numpy as np
import pytest

from mmfm.eval import extract_image_features, fit_linear_probe, linear_probe, sweep_c
from mmfm.eval.linear_probe import blas_threads, split_train_val


def test_reaches_hand_tuned_sklearn_on_digits(pixel_model, digits_splits, tmp_path):
    train, _, test = digits_splits
    result = linear_probe(pixel_model, train, test, progress=False, out_dir=tmp_path, model_name="pixels")

    # Hand-tuned reference on the very same features: the best *test* accuracy over a C grid
    # (an oracle, so it upper-bounds any honest validation-based choice).
    from sklearn.linear_model import LogisticRegression
    tr = extract_image_features(pixel_model, train, kind="pre_projection", progress=False)
    te = extract_image_features(pixel_model, test, kind="pre_projection", progress=False)
    best = 0.0
    with warnings.catch_warnings(), blas_threads(1):
        warnings.simplefilter("ignore")
        for c in np.logspace(-4, 4, 9):
            clf = LogisticRegression(C=c, max_iter=1000).fit(tr.features.numpy(), tr.labels.numpy())
            best = max(best, (clf.predict(te.features.numpy()) == te.labels.numpy()).mean())
    assert best > 0.9
    assert result.top1 >= best - 0.03

    # The sweep is in the result (and its plot on disk), and best_C is its arg-max.
    cs = [s["C"] for s in result.sweep]
    assert cs == sorted(cs) and min(cs) == pytest.approx(1e-6) and max(cs) == pytest.approx(1e6)
    top = max(s["val_accuracy"] for s in result.sweep)
    assert result.best_c in [s["C"] for s in result.sweep if s["val_accuracy"] == top]
    assert len(cs) > 13                                        # coarse decades + the fine pass
    assert open(result.plots["c_sweep"], "rb").read(4) == b"\x89PNG"
    assert result.num_train + result.num_val == len(train)
    assert result.config["features"] == "pre_projection" and result.config["feature_dim"] == 192
    d = result.to_dict()
    assert d["headline"]["best_C"] == result.best_c and len(d["sweep"]) == len(cs)


def test_sweep_prefers_smallest_c_among_ties():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-3, 1, (20, 2)), rng.normal(3, 1, (20, 2))])
    y = np.repeat([0, 1], 20)
    best, sweep = sweep_c(x, y, x, y, c_values=[1e-1, 1.0, 10.0], coarse_to_fine=False)
    assert [s["C"] for s in sweep] == [0.1, 1.0, 10.0]
    assert all(s["val_accuracy"] == 1.0 for s in sweep) and best == 0.1


def test_fine_pass_stays_within_range():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = (x[:, 0] > 0).astype(int)
    best, sweep = sweep_c(x, y, x, y, c_values=[1e-2, 1.0, 1e2], fine_per_decade=2)
    cs = [s["C"] for s in sweep]
    assert min(cs) >= 1e-2 * (1 - 1e-9) and max(cs) <= 1e2 * (1 + 1e-9)
    assert len(cs) == len(set(np.round(np.log10(cs), 6)))      # no value fitted twice


def test_split_is_stratified_and_disjoint():
    y = np.repeat(np.arange(4), 25)
    tr, val = split_train_val(y, 0.2, seed=0)
    assert len(set(tr) & set(val)) == 0 and len(tr) + len(val) == 100
    assert np.bincount(y[val]).tolist() == [5, 5, 5, 5]


def test_official_val_split_and_unseen_classes(pixel_model, digits_splits):
    train, val, test = digits_splits
    r = linear_probe(pixel_model, train, test, val_dataset=val, c_values=[1e-2, 1.0], coarse_to_fine=False,
                     progress=False)
    assert r.num_train == len(train) and r.num_val == len(val) and r.config["official_val_split"]
    # Fitting on a subset of classes still scores in the full label space.
    x = np.random.default_rng(0).normal(size=(30, 4))
    y = np.repeat([0, 1, 2], 10)
    m, *_ = fit_linear_probe(x[y < 2], y[y < 2], x, y, ["a", "b", "c"], c_values=[1.0], coarse_to_fine=False)
    assert m.confusion.shape == (3, 3) and m.per_class[2] == 0.0


def test_attribute_task(pixel_model):
    from mmfm.data import Shapes
    train, test = Shapes("train", size=120, image_size=32), Shapes("test", size=60, image_size=32)
    r = linear_probe(pixel_model, train, test, task="color", c_values=[0.1, 10.0], coarse_to_fine=False,
                     progress=False)
    assert r.task == "color" and r.metrics.classnames == train.attribute_classes["color"]
    assert r.top1 > 0.5          # colour is linearly readable from pooled pixels
