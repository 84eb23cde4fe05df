"""The few-shot evaluation: mean ± std over seeds, pluggable and registered methods."""
import numpy as np
import pytest

from mmfm.adapt import few_shot, register_few_shot_method
from mmfm.eval import FeatureCache, FewShotEpisode


def test_linear_probe_method_mean_std(pixel_model, digits_splits, tmp_path):
    train, _, test = digits_splits
    r = few_shot(pixel_model, train, test, shots=(1, 2, 8), seeds=(0, 1, 2), progress=False, out_dir=tmp_path,
                 method_options={"c_values": [0.1, 1.0, 10.0]})
    assert sorted(r.per_shot) == [1, 2, 8]
    for k, v in r.per_shot.items():
        assert len(v["accuracies"]) == 3
        assert v["mean"] == pytest.approx(np.mean(v["accuracies"]))
        assert v["std"] == pytest.approx(np.std(v["accuracies"], ddof=1))
        assert all(e["num_train"] == 10 * k for e in v["episodes"])
    assert r.per_shot[1]["episodes"][0]["C"] == 1.0                   # 1 shot: fixed C, nothing to validate on
    assert r.per_shot[8]["episodes"][0]["C"] in (0.1, 1.0, 10.0)      # >= 2 shots: cross-validated
    assert r.per_shot[8]["mean"] > r.per_shot[1]["mean"]
    assert r.per_shot[8]["mean"] > 0.8
    assert r.headline() == {f"{k}-shot": r.per_shot[k]["mean"] for k in (1, 2, 8)}
    assert open(r.plots["few_shot"], "rb").read(4) == b"\x89PNG"
    assert "± " in r.to_markdown()


def test_custom_callable_method_without_features(pixel_model, digits_splits):
    train, _, test = digits_splits
    seen = []

    def majority(episode: FewShotEpisode):
        seen.append((episode.shots, episode.seed, len(episode.train_indices)))
        assert set(np.unique(episode.train_labels)) == set(range(10))
        assert episode.templates == train.templates and episode.device.type == "cpu"
        assert episode.classnames == train.classes
        # Predict class 3 for everything: accuracy is exactly the share of 3s in the test set.
        return {"predictions": np.full(len(episode.test_labels), 3), "extra": {"note": "constant"}}

    pixel_model.calls = 0
    r = few_shot(pixel_model, train, test, shots=(1, 4), seeds=(5,), method=majority, progress=False,
                 cache=FeatureCache())
    share = np.mean([test.get_label(i) == 3 for i in range(len(test))])
    assert r.per_shot[1]["mean"] == pytest.approx(share) and r.per_shot[1]["std"] == 0.0
    assert seen == [(1, 5, 10), (4, 5, 40)]
    assert r.method == "majority" and r.per_shot[4]["episodes"][0]["note"] == "constant"
    # Digits give labels without images, and this method never asked for features: no forward pass.
    assert pixel_model.calls == 0 and r.perf is None


def test_scores_and_registered_methods(pixel_model, digits_splits):
    train, _, test = digits_splits

    def scores(episode):
        s = np.zeros((len(episode.test_labels), 10))
        s[:, 7] = 1.0
        return s

    register_few_shot_method("always_seven_test", scores, overwrite=True)
    r = few_shot(pixel_model, train, test, shots=(2,), seeds=(0,), method="always_seven_test", progress=False)
    assert r.per_shot[2]["mean"] == pytest.approx(np.mean([test.get_label(i) == 7 for i in range(len(test))]))
    r = few_shot(pixel_model, train, test, shots=(4,), seeds=(0, 1), method="nearest_centroid", progress=False)
    assert r.per_shot[4]["mean"] > 0.6
    with pytest.raises(KeyError, match="unknown few-shot method"):
        few_shot(pixel_model, train, test, method="nope", progress=False)

    def wrong_length(episode):
        return np.zeros(3, dtype=int)

    with pytest.raises(ValueError, match="predictions"):
        few_shot(pixel_model, train, test, shots=(1,), seeds=(0,), method=wrong_length, progress=False)
