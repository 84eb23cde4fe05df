"""Feature extraction: fingerprints, caches, feature kinds, workers, performance records."""
import copy

import pytest
import torch

from mmfm.eval import FeatureCache, PerfMeter, extract_image_features, model_fingerprint


def test_fingerprint_follows_weights_not_identity(tiny_clip):
    twin = copy.deepcopy(tiny_clip)
    assert model_fingerprint(twin) == model_fingerprint(tiny_clip)
    with torch.no_grad():
        twin.visual.proj.add_(1e-3)          # in-place change of one tensor
    assert model_fingerprint(twin) != model_fingerprint(tiny_clip)


def test_fingerprint_has_one_home_and_three_public_names():
    import mmfm
    import mmfm.eval
    from mmfm.util import weights
    assert mmfm.model_fingerprint is mmfm.eval.model_fingerprint is weights.model_fingerprint


def test_cache_hits_in_memory_and_on_disk(pixel_model, shapes_small, tmp_path):
    cache = FeatureCache(tmp_path)
    pixel_model.calls = 0
    a = extract_image_features(pixel_model, shapes_small, kind="pre_projection", cache=cache, progress=False,
                               batch_size=16)
    n = pixel_model.calls
    assert n == 3 and a.features.shape == (len(shapes_small), 192) and not a.perf.cached
    b = extract_image_features(pixel_model, shapes_small, kind="pre_projection", cache=cache, progress=False)
    c = extract_image_features(pixel_model, shapes_small, kind="pre_projection", cache=FeatureCache(tmp_path),
                               progress=False)
    assert pixel_model.calls == n                     # both from the cache (memory, then disk)
    torch.testing.assert_close(b.features, a.features)
    torch.testing.assert_close(c.labels, a.labels)
    assert c.perf.cached and c.perf.num_items == len(shapes_small)
    # Another label (attribute) is another cache entry with other labels.
    d = extract_image_features(pixel_model, shapes_small, kind="pre_projection", attribute="color", cache=cache,
                               progress=False)
    assert pixel_model.calls == n + 1                 # one batch of 48 at the default batch size
    assert d.labels.tolist() == [shapes_small[i].attributes["color"] for i in range(len(shapes_small))]
    extract_image_features(pixel_model, shapes_small, kind="pre_projection", cache=cache, use_cache=False,
                           progress=False)
    assert pixel_model.calls == n + 2                 # use_cache=False always runs the model


def test_embedding_is_projected_pre_projection(tiny_clip, shapes_small):
    pre = extract_image_features(tiny_clip, shapes_small, kind="pre_projection", progress=False)
    emb = extract_image_features(tiny_clip, shapes_small, kind="embedding", progress=False)
    assert pre.features.shape[1] == tiny_clip.config.vision.feature_dim
    torch.testing.assert_close(emb.features, pre.features @ tiny_clip.visual.proj.detach(), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError):
        extract_image_features(tiny_clip, shapes_small, kind="logits", progress=False)


def test_workers_give_the_same_features(pixel_model, shapes_small):
    a = extract_image_features(pixel_model, shapes_small, kind="pre_projection", use_cache=False, progress=False)
    b = extract_image_features(pixel_model, shapes_small, kind="pre_projection", use_cache=False, progress=False,
                               num_workers=2, batch_size=8)
    torch.testing.assert_close(a.features, b.features)


def test_eval_mode_is_restored(tiny_clip, shapes_small):
    tiny_clip.train()
    try:
        extract_image_features(tiny_clip, shapes_small, use_cache=False, progress=False)
        assert tiny_clip.training
    finally:
        tiny_clip.eval()


def test_perf_meter_records_batches():
    meter = PerfMeter("cpu")
    with meter:
        for n in (4, 4, 2):
            with meter.batch(n):
                torch.randn(64, 64) @ torch.randn(64, 64)
    s = meter.stats()
    assert s.num_items == 10 and s.num_batches == 3
    assert s.total_s >= s.model_s > 0 and s.items_per_s > 0
    assert set(s.batch_latency_ms) == {"mean", "p50", "p90", "max"}
    assert s.peak_rss_mb > 0 and s.max_rss_mb > 0 and s.peak_cuda_mb is None


def test_dataset_key_sees_configuration_beyond_repr():
    from mmfm.data import Shapes
    from mmfm.eval.cache import dataset_key
    plain = Shapes("test", size=20)
    assert dataset_key(plain) == dataset_key(Shapes("test", size=20))
    # Different data: must not share cached features (also when a repr leaves settings out).
    assert dataset_key(plain) != dataset_key(Shapes("test", size=20, textures=True))
    held_out = Shapes("test", size=20, holdout={"color": "red", "shape": "circle"}, only_holdout=True)
    assert dataset_key(plain) != dataset_key(held_out)
    quiet = Shapes("test", size=20, textures=True)
    quiet.__class__ = type("QuietShapes", (Shapes,), {"__repr__": lambda self: "Shapes()"})
    loud = Shapes("test", size=20)
    loud.__class__ = quiet.__class__
    assert repr(quiet) == repr(loud) and dataset_key(quiet) != dataset_key(loud)
