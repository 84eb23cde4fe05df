"""An evaluation after training must see the trained weights, not a fingerprint memoised before training.

Fused AdamW (the Trainer's optimizer) writes parameters without bumping their ``_version``; a memo keyed
on versions alone reused the pre-training fingerprint, hence the pre-training features and predictions.
"""
import copy

import torch

import mmfm
from mmfm.data import get_dataset
from mmfm.eval import model_fingerprint, zero_shot
from mmfm.train.config import TrainConfig
from mmfm.train.schedule import build_optimizer


def test_zero_shot_after_fused_adamw_steps_sees_the_new_weights():
    torch.manual_seed(0)
    model = mmfm.create_model("ViT-S-64").eval()
    test = get_dataset("shapes", split="test", size=64)
    kw = dict(task="color", batch_size=64, progress=False)
    before_fp = model_fingerprint(model)
    zero_shot(model, test, **kw)
    opt = build_optimizer(model, TrainConfig(lr=1e-2))
    assert opt.defaults.get("fused"), "the Trainer's optimizer is fused AdamW on CPU"
    for _ in range(3):
        opt.zero_grad()
        img = torch.randn(8, 3, 64, 64)
        txt = mmfm.tokenize(["a red circle"] * 8)
        (model.encode_image(img).square().mean() + model.encode_text(txt).square().mean()).backward()
        opt.step()
    assert model_fingerprint(model) != before_fp
    after = zero_shot(model, test, **kw)
    fresh = zero_shot(copy.deepcopy(model), test, **kw)
    assert after.to_dict()["metrics"] == fresh.to_dict()["metrics"]
