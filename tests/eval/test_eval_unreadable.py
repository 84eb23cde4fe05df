"""Evaluation skips, counts and names unreadable images (as training does) instead of dying on the first."""
import pytest

from mmfm.data import ImageLoadError, Shapes
from mmfm.adapt import few_shot
from mmfm.eval import extract_image_features, linear_probe, retrieval, zero_shot

BAD = {3, 7}


class Corrupt(Shapes):
    """Shapes whose images 3 and 7 cannot be decoded, like a truncated JPEG on disk."""

    def get_sample(self, i):
        if i in BAD:
            raise ImageLoadError(f"cannot read image '/data/img_{i:03d}.jpg': truncated")
        return super().get_sample(i)


@pytest.fixture(scope="module")
def corrupt():
    return Corrupt("test", size=24, image_size=32), Corrupt("train", size=24, image_size=32)


def _named(names):
    assert len(names) == len(BAD)
    assert all(any(f"img_{i:03d}.jpg" in n for n in names) for i in BAD)


def test_feature_pass_skips_and_names(corrupt, pixel_model):
    test, _ = corrupt
    with pytest.warns(UserWarning, match="img_003.jpg"):
        fs = extract_image_features(pixel_model, test, use_cache=False, progress=False, batch_size=4)
    assert sorted(fs.skipped) == sorted(BAD) and len(fs) == len(test)
    assert (fs.labels[sorted(BAD)] == -1).all() and (fs.labels[[0, 1, 2, 4]] >= 0).all()


def test_every_evaluation_completes_and_reports_them(corrupt, pixel_model, tiny_clip, tmp_path):
    test, train = corrupt
    with pytest.warns(UserWarning):
        zs = zero_shot(tiny_clip, test, progress=False)
        lp = linear_probe(pixel_model, train, test, c_values=[1.0], coarse_to_fine=False, progress=False)
        fs = few_shot(pixel_model, train, test, shots=[1], seeds=[0], method="nearest_centroid", progress=False)
        rt = retrieval(tiny_clip, test, progress=False, out_dir=tmp_path)
    _named(zs.config["skipped_images"])
    assert zs.metrics.num_samples == len(test) - len(BAD) and zs.config["skipped_unlabelled"] == 0
    assert len(lp.config["skipped_images"]) == 2 * len(BAD) and lp.metrics.num_samples == len(test) - len(BAD)
    assert lp.num_train + lp.num_val == len(train) - len(BAD)
    assert len(fs.config["skipped_images"]) == 2 * len(BAD) and fs.config["num_test"] == len(test) - len(BAD)
    assert all(e["num_train"] >= 1 for e in fs.per_shot[1]["episodes"])
    _named(rt.config["skipped_images"])
    assert rt.num_images == len(test) - len(BAD)
    assert rt.num_texts == sum(len(test.get_captions(i)) for i in range(len(test)) if i not in BAD)
    assert "2 unreadable image(s) skipped" in zs.to_markdown() and "img_007.jpg" in zs.to_markdown()
