"""Evaluate, train with the Trainer, evaluate again in the same process: the second evaluation sees the
trained weights, exactly as a fresh model loading the saved weights does (issue 14: one weights-version
mechanism for every cache: fingerprint memo, cached features and classifiers, packed/fused weights).
"""
from __future__ import annotations

import pytest
import torch

from mmfm.adapt import apply_lora, load_lora, save_lora
from mmfm.api import create_model, from_pretrained
from mmfm.checkpoints import save_pretrained
from mmfm.eval import FeatureCache, extract_image_features, model_fingerprint, zero_shot
from mmfm.train import TrainConfig, Trainer


def pairs(n: int = 16, image_size: int = 32, context_length: int = 16) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(n):
        ids = torch.zeros(context_length, dtype=torch.long)
        ids[:5] = torch.randint(1, 1000, (5,), generator=g)
        ids[5] = 49407
        items.append({"image": torch.randn(3, image_size, image_size, generator=g), "text": ids})
    return items


def train(model, out_dir) -> None:
    cfg = TrainConfig(max_steps=3, batch_size=4, lr=1e-2, device="cpu", progress=False, tensorboard=False,
                      grad_clip=None, log_every=1)
    Trainer(model, pairs(), cfg, out_dir).fit()


def base(name: str):
    torch.manual_seed(0)
    return create_model(name)


def _plain(name):
    def reload(model, tmp_path):
        save_pretrained(model, tmp_path / "saved")
        return from_pretrained(tmp_path / "saved")
    return (lambda: base(name)), reload


def _lora():
    def reload(model, tmp_path):
        save_lora(model, tmp_path / "adapter")
        return load_lora(base("ViT-tiny-test"), tmp_path / "adapter")
    return (lambda: apply_lora(base("ViT-tiny-test"), "qkv-r64", r=4)), reload


CASES = {"vit": _plain("ViT-tiny-test"), "modified-resnet": _plain("RN-tiny-test"), "lora": _lora(),
         "hybrid": _plain("hybrid-tiny-test")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_train_then_evaluate_equals_a_fresh_model_on_the_saved_weights(case, shapes_small, tmp_path):
    build, reload = CASES[case]
    model = build()
    kw = dict(task="color", progress=False)
    # Before training: fill every cache (fingerprint memo, features, classifier, packed/fused weights).
    zero_shot(model.eval(), shapes_small, **kw)
    before = extract_image_features(model, shapes_small, progress=False).features

    train(model, tmp_path / "run")
    model.eval()
    after = zero_shot(model, shapes_small, **kw)
    features = extract_image_features(model, shapes_small, progress=False).features
    assert not torch.equal(features, before), "training changed nothing: the test would prove nothing"

    fresh = reload(model, tmp_path).eval()
    assert model_fingerprint(fresh) == model_fingerprint(model)   # so the disk cache hits reloaded weights
    assert torch.equal(features, extract_image_features(fresh, shapes_small, use_cache=False, progress=False).features)
    ref = zero_shot(fresh, shapes_small, cache=FeatureCache(), **kw)   # a private cache: computed anew
    assert after.to_dict()["metrics"] == ref.to_dict()["metrics"]
