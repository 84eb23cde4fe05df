"""Locked-tower hybrids: torchvision image tower + head against an mmfm text tower."""
from __future__ import annotations

import urllib.error

import pytest
import torch

from mmfm.api import create_model, from_pretrained
from mmfm.checkpoints import save_pretrained
from mmfm.measure import count_parameters
from mmfm.api import create_model, hybrid_from_clip   # hybrid_from_clip: a CLIP model or a checkpoint path (the door reads it)
from mmfm.models import CLIP, ConfigError, build_model, config_from_dict, get_model_config
from mmfm.models.hybrid import HybridCLIP, HybridConfig, HybridVisionConfig, load_text_tower


def tiny_hybrid(seed: int = 0) -> HybridCLIP:
    torch.manual_seed(seed)
    return create_model("hybrid-tiny-test")


def batch(n: int = 4):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 1000, (n, 16), generator=g)
    ids[:, 9] = 49407
    return torch.randn(n, 3, 32, 32, generator=g), ids


def test_published_trainable_share_on_meta_device():
    with torch.device("meta"):
        model = build_model(get_model_config("rn50-vitb32text"))
    counts = count_parameters(model)
    # ResNet-50 trunk 23,508,032 + head 2048*2048+2048 + 2048*512+512 + logit scale; ViT-B-32 text 63,428,096
    assert counts.trainable == 23_508_032 + 4_196_352 + 1_049_088 + 1 == 28_753_473
    assert counts.total == 92_181_569
    assert counts.per_tower["text"]["trainable"] == 0
    assert round(counts.trainable_share, 2) == 0.31
    assert all(p.device.type == "meta" for p in model.parameters())


def test_meta_build_never_downloads_and_configs_roundtrip():
    cfg = get_model_config("rn50-vitb32text-in1k")
    with torch.device("meta"):
        model = build_model(cfg)   # ImageNet weights are not fetched for a shapes-only build
    assert model.config.vision.weights == "IMAGENET1K_V2"
    d = cfg.to_dict()
    assert d["family"] == "hybrid" and config_from_dict(d) == cfg
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict({**d, "vision": {**d["vision"], "resnet": 50}})


def test_clip_forward_contract_and_features():
    model = tiny_hybrid()
    assert isinstance(model, CLIP)
    x, ids = batch()
    out = model(image=x, text=ids)
    assert set(out) == {"image_features", "text_features", "logit_scale"}
    torch.testing.assert_close(out["image_features"].norm(dim=-1), torch.ones(4))
    assert model.encode_image(x).shape == (4, 32) and model.encode_text(ids).shape == (4, 32)
    assert model.image_features(x).shape == (4, 512)   # resnet18's pooled features, before the head
    assert model.image_size == 32 and model.context_length == 16
    assert all(not p.requires_grad for p in model.text.parameters())
    model.lock_image_tower(1)   # only the head stays free
    free = {n.split(".")[0] for n, p in model.visual.named_parameters() if p.requires_grad}
    assert free == {"head"}


def test_save_and_reload_through_checkpoints(tmp_path):
    model = tiny_hybrid().eval()
    x, ids = batch()
    with torch.no_grad():
        ref = model(image=x, text=ids)
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path).eval()
    assert type(loaded) is HybridCLIP and loaded.config == model.config
    assert all(not p.requires_grad for p in loaded.text.parameters())   # lock_text is part of the config
    with torch.no_grad():
        out = loaded(image=x, text=ids)
    for k in ("image_features", "text_features"):
        torch.testing.assert_close(out[k], ref[k], rtol=0, atol=0)


def test_text_tower_from_clip_model_checkpoint_or_config(tmp_path):
    torch.manual_seed(0)
    clip = create_model("ViT-tiny-test")
    hybrid = hybrid_from_clip(clip, "resnet18", image_size=32, head_hidden=64)
    assert torch.equal(hybrid.text.token_embedding.weight, clip.text.token_embedding.weight)
    assert torch.equal(hybrid.text.text_projection, clip.text.text_projection)
    assert all(not p.requires_grad for p in hybrid.text.parameters())
    assert hybrid_from_clip(clip, "resnet18", lock_text=False).text.token_embedding.weight.requires_grad

    save_pretrained(clip, tmp_path / "clip")
    from_path = hybrid_from_clip(tmp_path / "clip", "resnet18", image_size=32, head_hidden=64)
    assert torch.equal(from_path.text.positional_embedding, clip.text.positional_embedding)
    assert from_path.config.initialized_from["text"] == str(tmp_path / "clip")

    cfg = get_model_config("hybrid-tiny-test")
    cfg.text_pretrained = str(tmp_path / "clip")
    built = create_model(cfg)   # the config's instruction is carried out once, then recorded
    assert torch.equal(built.text.token_embedding.weight, clip.text.token_embedding.weight)
    assert built.config.text_pretrained is None and built.config.initialized_from["text"] == str(tmp_path / "clip")
    assert cfg.text_pretrained is not None   # the caller's config is not modified

    with pytest.raises(ConfigError, match="width: 32 vs 128"):
        load_text_tower(built, create_model("ViT-S-64"))


def test_offline_imagenet_weights_are_a_clear_error(monkeypatch):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    cfg = HybridConfig(embed_dim=32, vision=HybridVisionConfig("resnet18", weights="DEFAULT", image_size=32,
                                                               head_hidden=64),
                       text=get_model_config("ViT-tiny-test").text)
    with pytest.raises(RuntimeError, match=r"(?s)resnet18 IMAGENET1K_V1.*TORCH_HOME.*weights=None"):
        create_model(cfg)
    with pytest.raises(ConfigError, match="not a weight set of resnet18"):
        create_model(HybridConfig(vision=HybridVisionConfig("resnet18", weights="IMAGENET9K")))
    with pytest.raises(ConfigError, match="not a torchvision classification model"):
        create_model(HybridConfig(vision=HybridVisionConfig("resnet5")))


def test_other_torchvision_families_get_a_head():
    torch.manual_seed(0)
    cfg = HybridConfig(embed_dim=16, vision=HybridVisionConfig("mobilenet_v3_small", image_size=32, head_hidden=32),
                       text=get_model_config("ViT-tiny-test").text)
    model = create_model(cfg).eval()
    x, ids = batch(2)
    assert model(image=x, text=ids)["image_features"].shape == (2, 16)
    assert model.image_features(x).shape == (2, 1024)   # its classifier's hidden layer is kept
    groups = model.visual.groups()
    assert groups[0] is model.visual.head and len(groups) > 5   # `features` is split into its stages
