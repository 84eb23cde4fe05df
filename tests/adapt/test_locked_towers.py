"""Locked towers stay bit-identical through real training steps and never receive gradients:
the hybrid's frozen text tower, LiT's locked image tower (incl. BatchNorm statistics), LoRA's base."""
from __future__ import annotations

import torch

from mmfm.adapt import apply_lora, lit
from mmfm.api import create_model
from mmfm.models.hybrid import hybrid_from_clip


def changed(before: dict, module: torch.nn.Module) -> list[str]:
    after = module.state_dict()
    return [k for k, v in before.items() if not torch.equal(v, after[k])]


def test_hybrid_text_tower_is_frozen_through_training(tmp_path, train, snapshot):
    torch.manual_seed(0)
    model = create_model("hybrid-tiny-test")
    text, visual = snapshot(model.text), snapshot(model.visual)
    train(model, tmp_path)
    assert changed(text, model.text) == []
    assert all(p.grad is None for p in model.text.parameters())
    assert changed(visual, model.visual)   # the image side did train (BN statistics included)


def test_lit_locks_the_image_tower_including_batchnorm_statistics(tmp_path, train, snapshot):
    torch.manual_seed(0)
    clip = create_model("ViT-tiny-test")
    hybrid = lit(hybrid_from_clip(clip, "resnet18", image_size=32, head_hidden=64))
    assert not hybrid.config.lock_text
    visual, text = snapshot(hybrid.visual), snapshot(hybrid.text)
    assert any(k.endswith("running_mean") for k in visual)
    train(hybrid, tmp_path / "hybrid")
    assert changed(visual, hybrid.visual) == []
    assert all(p.grad is None for p in hybrid.visual.parameters())
    assert changed(text, hybrid.text)


def test_lit_on_clip_leaves_the_last_groups_free(tmp_path, train, snapshot):
    torch.manual_seed(0)
    model = lit(create_model("ViT-tiny-test"), unlocked_groups=2)   # ln_post + proj, and the last block
    free = {n for n, p in model.visual.named_parameters() if p.requires_grad}
    assert free and all(n.startswith(("ln_post", "proj", "transformer.blocks.1.")) for n in free)
    frozen_keys = [k for k in model.visual.state_dict() if k.startswith(("conv1", "transformer.blocks.0."))]
    before = snapshot(model.visual)
    train(model, tmp_path)
    assert not set(changed(before, model.visual)) & set(frozen_keys)
    assert all(p.grad is None for n, p in model.visual.named_parameters() if n not in free)


def test_lora_base_weights_are_bit_identical_after_training(tmp_path, train, snapshot):
    torch.manual_seed(0)
    model = apply_lora(create_model("ViT-tiny-test"), "qv-r16", r=4)
    before = snapshot(model)
    train(model, tmp_path)
    diff = changed(before, model)
    assert diff and all("lora_" in k for k in diff)
    assert any("lora_B" in k for k in diff)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
