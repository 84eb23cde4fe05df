"""Zero-shot classification: equality with open_clip's classifier code, tasks, caching."""
import numpy as np
import pytest
import torch

from mmfm.eval import FeatureCache, build_zero_shot_classifier, zero_shot
from mmfm.api import create_model
from mmfm.models import CLIPConfig, TextConfig, VisionConfig

open_clip = pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def twin_models(tmp_path_factory):
    """A tiny open_clip CLIP and our CLIP holding the same weights (through mmfm.checkpoints)."""
    torch.manual_seed(0)
    theirs = open_clip.CLIP(embed_dim=32,
                            vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=16),
                            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=4, layers=2)).eval()
    path = tmp_path_factory.mktemp("ckpt") / "open_clip_tiny.pt"
    torch.save(theirs.state_dict(), path)
    cfg = CLIPConfig(embed_dim=32,
                     vision=VisionConfig(image_size=32, patch_size=8, width=64, layers=2, head_width=16),
                     text=TextConfig(context_length=77, vocab_size=49408, width=32, heads=4, layers=2),
                     quick_gelu=False)   # open_clip.CLIP defaults to nn.GELU
    ours = create_model(cfg, pretrained=str(path)).eval()
    return theirs, ours


def test_matches_open_clip_classifier_and_predictions(twin_models, shapes_small, transform32):
    theirs, ours = twin_models
    task = shapes_small.zero_shot_tasks()["color"]
    # open_clip's own code path: its tokenizer, its classifier builder, its model.
    w_theirs = open_clip.build_zero_shot_classifier(theirs, tokenizer=open_clip.tokenize,
                                                    classnames=task.classnames, templates=task.templates)
    images = torch.stack([transform32(shapes_small[i].image) for i in range(len(shapes_small))])
    labels = torch.tensor([shapes_small[i].attributes["color"] for i in range(len(shapes_small))])
    with torch.no_grad():
        logits = 100.0 * theirs.encode_image(images, normalize=True) @ w_theirs
    pred_theirs = logits.topk(1, dim=1).indices[:, 0]
    acc_theirs = (pred_theirs == labels).float().mean().item()

    # Ours, through the public API (our tokenizer, our transform, our feature pipeline).
    w_ours = build_zero_shot_classifier(ours, task.classnames, task.templates, use_cache=False)
    torch.testing.assert_close(w_ours, w_theirs, atol=1e-5, rtol=1e-4)
    result = zero_shot(ours, shapes_small, task="color", progress=False, batch_size=16)
    # A random model predicts few distinct classes, so also compare the logits themselves.
    from mmfm.eval import extract_image_features
    emb = extract_image_features(ours, shapes_small, kind="embedding", progress=False).features
    logits_ours = 100.0 * torch.nn.functional.normalize(emb, dim=1) @ w_ours
    torch.testing.assert_close(logits_ours, logits, atol=1e-3, rtol=1e-4)
    np.testing.assert_array_equal(result.predictions, pred_theirs.numpy())
    assert result.top1 == pytest.approx(acc_theirs)
    np.testing.assert_array_equal(result.metrics.labels, labels.numpy())


def test_primary_task_and_overrides(tiny_clip, shapes_small):
    r = zero_shot(tiny_clip, shapes_small, progress=False)
    assert r.config["task"] == "shape" and r.task is None          # primary label: not named in tables
    assert r.metrics.classnames == list(shapes_small.classes)
    assert r.metrics.top5 is not None                               # 6 shapes > 5
    assert r.metrics.confusion.sum() == len(shapes_small)
    r2 = zero_shot(tiny_clip, shapes_small, task="size", templates=["a {} thing."], progress=False)
    assert r2.task == "size" and r2.templates == ["a {} thing."] and r2.metrics.top5 is None
    with pytest.raises(KeyError, match="no zero-shot task"):
        zero_shot(tiny_clip, shapes_small, task="flavour", progress=False)


def test_callable_templates_equal_strings(tiny_clip):
    names = ["cat", "dog"]
    a = build_zero_shot_classifier(tiny_clip, names, ["a photo of a {}."], use_cache=False)
    b = build_zero_shot_classifier(tiny_clip, names, [lambda c: f"a photo of a {c}."], use_cache=False)
    torch.testing.assert_close(a, b)
    assert a.shape == (32, 2)
    torch.testing.assert_close(a.norm(dim=0), torch.ones(2))


class CountingText:
    """Wraps a model's encode_text to count calls."""

    def __init__(self, model):
        self.model, self.calls = model, 0
        self._orig = model.encode_text

    def __enter__(self):
        def counted(*a, **k):
            self.calls += 1
            return self._orig(*a, **k)
        self.model.encode_text = counted
        return self

    def __exit__(self, *exc):
        del self.model.encode_text


def test_classifier_cache_memory_disk_and_invalidation(tmp_path):
    torch.manual_seed(1)
    model = create_model("ViT-tiny-test").eval()
    names, templates = ["red", "blue", "green"], ["a {} shape.", "something {}."]
    cache = FeatureCache(tmp_path)
    with CountingText(model) as c:
        w1 = build_zero_shot_classifier(model, names, templates, cache=cache)
        first = c.calls
        w2 = build_zero_shot_classifier(model, names, templates, cache=cache)
        assert c.calls == first                                     # memory hit
        assert list(tmp_path.glob("*.safetensors"))                 # and written to disk
        w3 = build_zero_shot_classifier(model, names, templates, cache=FeatureCache(tmp_path))
        assert c.calls == first                                     # disk hit from a fresh cache
        torch.testing.assert_close(w1, w2)
        torch.testing.assert_close(w1, w3)
        # Other weights (same object, modified in place) must not reuse the classifier.
        with torch.no_grad():
            model.text.text_projection.mul_(2.0).add_(0.01)
        build_zero_shot_classifier(model, names, templates, cache=cache)
        assert c.calls > first


def test_confusion_png(tiny_clip, shapes_small, tmp_path):
    r = zero_shot(tiny_clip, shapes_small, task="color", progress=False, out_dir=tmp_path)
    png = r.plots["confusion_matrix"]
    assert open(png, "rb").read(4) == b"\x89PNG"
    assert r.perf.num_items == len(shapes_small)
