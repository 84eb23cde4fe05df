import json
import math

import pytest
import torch

from mmfm.api import create_model
from mmfm.models import (ConfigError, build_model, get_model_config, list_models, register_model_file)
from mmfm.measure import count_parameters


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50", "RN101"])
def test_parameter_counts_equal_open_clip(name):
    open_clip = pytest.importorskip("open_clip")
    from mmfm.info import model_info
    ours = model_info(name)["parameters"]["total"]          # built on the meta device: no memory
    with torch.device("meta"):
        theirs = sum(p.numel() for p in open_clip.create_model(name, device="meta").parameters())
    assert ours == theirs
    if name == "ViT-B-32":
        assert ours == 151_277_313


def test_cifar10_config_matches_the_seed_setup():
    cfg = get_model_config("RN-cifar10")
    assert (cfg.vision.image_size, cfg.vision.width, cfg.vision.layers) == (32, 32, (2, 2, 2, 2))
    assert (cfg.embed_dim, cfg.text.width, cfg.text.heads, cfg.text.layers) == (512, 512, 8, 6)
    assert (cfg.text.context_length, cfg.text.vocab_size) == (77, 49408)
    model = build_model(cfg)
    out = model(torch.randn(2, 3, 32, 32), torch.randint(0, 49408, (2, 77)))
    assert out["image_features"].shape == (2, 512)


@pytest.mark.parametrize("name", ["ViT-tiny-test", "RN-tiny-test"])
def test_forward_contract(name):
    model = create_model(name).eval()
    cfg = model.config
    img = torch.randn(3, 3, cfg.vision.image_size, cfg.vision.image_size)
    ids = torch.randint(1, 1000, (3, cfg.text.context_length))
    out = model(img, ids)
    assert out["image_features"].shape == (3, cfg.embed_dim) == out["text_features"].shape
    torch.testing.assert_close(out["image_features"].norm(dim=-1), torch.ones(3))
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    torch.testing.assert_close(model.encode_image(img, normalize=True), out["image_features"])
    assert model.image_features(img).shape == (3, cfg.vision.feature_dim)


def test_logit_scale_clamped_at_100():
    model = create_model("ViT-tiny-test")
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    assert model(text=torch.ones(1, 16, dtype=torch.long))["logit_scale"].item() == pytest.approx(100.0)


def test_fused_inference_path_equals_training_path():
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").eval()
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fused = model.encode_image(img)
    unfused = model.encode_image(img)                  # grad enabled: separate q/k/v projections
    torch.testing.assert_close(fused, unfused.detach(), rtol=1e-5, atol=1e-6)
    with torch.no_grad():                              # the fused cache follows in-place weight updates
        model.visual.transformer.blocks[0].attn.q_proj.weight.mul_(2)
        after = model.encode_image(img)
    assert not torch.allclose(after, fused)
    torch.testing.assert_close(after, model.encode_image(img).detach(), rtol=1e-5, atol=1e-6)


def test_text_pooling_at_end_of_text_and_causal():
    model = create_model("ViT-tiny-test").eval()
    ids = torch.tensor([[49406, 320, 1125, 49407, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    other = ids.clone()
    other[0, 6] = 999        # a change after the end-of-text token cannot change the (causal) feature
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids), model.encode_text(other))
        changed = ids.clone(); changed[0, 1] = 555
        assert not torch.allclose(model.encode_text(ids), model.encode_text(changed))


@pytest.mark.parametrize("pool", ["argmax", "eot"])
def test_text_after_last_end_of_text_is_skipped_exactly(pool):
    """Features and gradients equal the full-context computation although the padding is never run."""
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").train()
    model.text.cfg.pool = pool
    ids = torch.zeros(3, 16, dtype=torch.long)
    for row, n in enumerate((4, 7, 2)):          # end-of-text at positions 4, 7 and 2
        ids[row, :n] = torch.randint(1, 1000, (n,))
        ids[row, n] = 49407
    seen = []
    hook = model.text.transformer.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    fast = model.text(ids)
    hook.remove()
    assert seen == [8]                           # up to the batch's last end-of-text token, not 16
    full_tokens = model.text.forward_tokens(ids)
    full = model.text.forward_head(full_tokens[torch.arange(3), model.text.pool_index(ids)])
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    grad_fast = torch.autograd.grad(fast.square().sum(), list(model.text.parameters()), allow_unused=True)
    grad_full = torch.autograd.grad(full.square().sum(), list(model.text.parameters()), allow_unused=True)
    for a, b in zip(grad_fast, grad_full):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)   # GEMM sums in another order


@pytest.mark.parametrize("checkpointing", [False, True])
def test_vit_class_token_only_last_block_is_exact(checkpointing):
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").train()
    model.set_grad_checkpointing(checkpointing)
    img = torch.randn(3, 3, 32, 32)
    pooled = model.visual.forward_features(img)
    full = model.visual.ln_post(model.visual.forward_tokens(img)[:, 0])
    torch.testing.assert_close(pooled, full, rtol=1e-5, atol=1e-6)
    params = [p for n, p in model.visual.named_parameters() if n != "proj"]   # proj comes after the features
    for a, b in zip(torch.autograd.grad(pooled.sum(), params), torch.autograd.grad(full.sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", ["ViT-tiny-test", "RN-tiny-test"])
def test_locking(name):
    model = create_model(name)
    model.lock_image_tower()
    assert not any(p.requires_grad for p in model.visual.parameters())
    assert all(p.requires_grad for p in model.text.parameters())
    model.lock_text_tower(unlocked_groups=2)       # ln_final + projection, and the last block
    free = {n for n, p in model.text.named_parameters() if p.requires_grad}
    last = len(model.text.transformer.blocks) - 1
    assert "text_projection" in free and any(n.startswith(f"transformer.blocks.{last}.") for n in free)
    assert not any(n.startswith("transformer.blocks.0.") for n in free)
    counts = count_parameters(model)
    assert counts.frozen == counts.per_tower["visual"]["frozen"] + counts.per_tower["text"]["frozen"]
    if name.startswith("RN"):   # frozen BatchNorm keeps its running statistics frozen in train mode
        model.train()
        bn = model.visual.bn1
        assert not bn.training
        before = bn.running_mean.clone()
        model.encode_image(torch.randn(4, 3, 32, 32) * 5 + 3)
        torch.testing.assert_close(bn.running_mean, before)


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").train()
    img, ids = torch.randn(2, 3, 32, 32), torch.randint(1, 1000, (2, 16))
    def grads():
        model.zero_grad()
        out = model(img, ids)
        (out["image_features"] @ out["text_features"].T).sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]
    plain = grads()
    model.set_grad_checkpointing(True)
    for a, b in zip(plain, grads()):
        torch.testing.assert_close(a, b)


def test_register_config_from_file_and_clear_errors(tmp_path):
    good = tmp_path / "my-clip.json"
    good.write_text(json.dumps({"name": "my-clip", "embed_dim": 48, "vision": {"image_size": 32, "patch_size": 16, "width": 64, "layers": 1},
                                "text": {"context_length": 8, "width": 32, "heads": 2, "layers": 1}}))
    assert register_model_file(good) == "my-clip"
    assert "my-clip" in list_models()
    assert create_model("my-clip")(text=torch.ones(1, 8, dtype=torch.long))["text_features"].shape == (1, 48)
    bad = tmp_path / "bad.yaml"
    bad.write_text("embed_dim: 32\nvision: {widht: 64}\n")
    with pytest.raises(ConfigError, match="widht.*allowed keys"):
        register_model_file(bad)
    with pytest.raises(KeyError, match="did you mean"):
        get_model_config("ViT-B-33")
