"""Parity with open_clip: its weights loaded into mmfm give the same embeddings and logits, and back."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from mmfm.checkpoints import CheckpointError, load_state_dict_file, to_openclip_config, to_openclip_state_dict
from mmfm.checkpoints.openclip import infer_config, openclip_to_mmfm
from mmfm.api import create_model
from mmfm.models import CLIPConfig, TextConfig, VisionConfig, get_model_config

EMBED = 24
VOCAB = 100
CTX = 16

# (id, vision_cfg, text_cfg, quick_gelu): non-64 head widths and several heads per tower.
CASES = [
    ("vit-w96-hw32-quickgelu", dict(image_size=32, patch_size=8, width=96, layers=2, head_width=32),
     dict(width=64, heads=2, layers=2), True),
    ("vit-w96-hw48-gelu", dict(image_size=32, patch_size=16, width=96, layers=2, head_width=48, mlp_ratio=3.0),
     dict(width=64, heads=4, layers=2), False),
    ("rn-hw32-quickgelu", dict(image_size=64, width=16, layers=(1, 1, 1, 1), head_width=32),
     dict(width=64, heads=4, layers=2), True),
    ("rn-hw64-gelu", dict(image_size=32, width=16, layers=(1, 1, 1, 1), head_width=64),
     dict(width=64, heads=2, layers=1), False),
]


def _text(t: dict) -> dict:
    return dict(context_length=CTX, vocab_size=VOCAB, **t)


def _openclip_model(open_clip, randomize, vision, text, quick_gelu, seed=0):
    return randomize(open_clip.CLIP(EMBED, vision, _text(text), quick_gelu=quick_gelu), seed)


def _check_parity(oc_model, ours, inputs, close, image_size):
    images, ids = inputs(image_size, CTX, VOCAB)
    with torch.no_grad():
        close(ours.encode_image(images), oc_model.encode_image(images), what="image embeddings")
        close(ours.encode_text(ids), oc_model.encode_text(ids), what="text embeddings")
        ours_logits, ours_t = ours.logits(images, ids)
        theirs_logits, theirs_t = oc_model.get_logits(images, ids)
        close(ours_logits, theirs_logits, what="logits per image")
        close(ours_t, theirs_t, what="logits per text")
        expected_image, expected_text = oc_model.encode_image(images), oc_model.encode_text(ids)
    # With autograd on, our attention runs separate q/k/v projections instead of the fused inference path.
    close(ours.encode_image(images).detach(), expected_image, what="image embeddings (autograd on)")
    close(ours.encode_text(ids).detach(), expected_text, what="text embeddings (autograd on)")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_open_clip_hub_dir_parity(case, tmp_path, open_clip, randomize, inputs, close):
    """An open_clip hf-hub style directory (open_clip_config.json + safetensors) loads with no model name."""
    _, vision, text, quick_gelu = case
    theirs = _openclip_model(open_clip, randomize, vision, text, quick_gelu)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {"embed_dim": EMBED, "vision_cfg": vision, "text_cfg": _text(text), "quick_gelu": quick_gelu},
         "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(tmp_path / "open_clip_model.safetensors"))

    ours = create_model(pretrained=str(tmp_path)).eval()
    assert ours.config.quick_gelu is quick_gelu
    assert ours.config.vision.head_width == vision["head_width"]
    assert ours.config.text.heads == text["heads"]
    _check_parity(theirs, ours, inputs, close, vision["image_size"])


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_export_to_open_clip(case, open_clip, randomize, inputs, close):
    """mmfm -> open_clip naming: open_clip's strict load_state_dict accepts it and outputs match."""
    _, vision, text, quick_gelu = case
    v = dict(vision)
    kind = "modified_resnet" if isinstance(v["layers"], tuple) else "vit"
    cfg = CLIPConfig(embed_dim=EMBED, vision=VisionConfig(kind=kind, **v), text=TextConfig(**_text(text)),
                     quick_gelu=quick_gelu)
    ours = randomize(create_model(cfg), seed=3)
    theirs = open_clip.CLIP(**to_openclip_config(cfg)).eval()
    theirs.load_state_dict(to_openclip_state_dict(ours), strict=True)
    _check_parity(theirs, ours, inputs, close, vision["image_size"])


def test_export_to_open_clip_eot_pooling(open_clip, randomize, inputs, close):
    cfg = get_model_config("ViT-tiny-test")
    cfg.text.pool, cfg.text.eot_token_id, cfg.text.vocab_size = "eot", 50, 64
    ours = randomize(create_model(cfg), seed=4)
    theirs = open_clip.CLIP(**to_openclip_config(cfg)).eval()
    theirs.load_state_dict(to_openclip_state_dict(ours), strict=True)
    images, ids = inputs(32, 16, 64, eot=50)
    ids[0, -1] = 63   # a larger id after the end token: argmax pooling would pick it, eot pooling must not
    with torch.no_grad():
        close(ours.encode_text(ids), theirs.encode_text(ids), what="text embeddings")


@pytest.mark.parametrize("fmt", ["pt-nested-ddp", "bin", "safetensors"])
def test_infer_architecture_from_bare_state_dict(fmt, tmp_path, open_clip, randomize, inputs, close):
    """The architecture comes from tensor shapes (OpenAI's rules); the activation must be given (a bare
    state dict does not record it, see test_ckpt_activation.py), here through the config."""
    vision = dict(image_size=32, patch_size=16, width=128, layers=2) if fmt != "bin" else \
        dict(image_size=32, width=16, layers=(1, 1, 2, 1))
    text = dict(width=128, heads=2, layers=2)
    theirs = _openclip_model(open_clip, randomize, vision, text, quick_gelu=True, seed=5)
    sd = theirs.state_dict()
    if fmt == "pt-nested-ddp":
        path = tmp_path / "epoch_3.pt"
        torch.save({"epoch": 3, "name": "run", "state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    elif fmt == "bin":
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(sd, path)
    else:
        path = tmp_path / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))

    with pytest.raises(CheckpointError, match="GELU or QuickGELU"):
        create_model(pretrained=str(path))
    cfg = infer_config(openclip_to_mmfm(load_state_dict_file(path)), quick_gelu=True, source=str(path))
    ours = create_model(cfg, pretrained=str(path)).eval()
    assert cfg.quick_gelu is True and cfg.embed_dim == EMBED
    assert (cfg.text.width, cfg.text.heads, cfg.text.layers, cfg.text.context_length, cfg.text.vocab_size) == (128, 2, 2, CTX, VOCAB)
    if fmt == "bin":
        assert (cfg.vision.kind, cfg.vision.width, cfg.vision.layers, cfg.vision.image_size) == ("modified_resnet", 16, (1, 1, 2, 1), 32)
    else:
        assert (cfg.vision.kind, cfg.vision.width, cfg.vision.layers, cfg.vision.patch_size, cfg.vision.image_size) == ("vit", 128, 2, 16, 32)
    _check_parity(theirs, ours, inputs, close, vision["image_size"])


def test_inference_refuses_ambiguous_head_count(tmp_path, open_clip, randomize):
    theirs = _openclip_model(open_clip, randomize, dict(image_size=32, patch_size=16, width=96, layers=1, head_width=32),
                             dict(width=64, heads=2, layers=1), True)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="cannot infer the attention heads"):
        create_model(pretrained=str(path))


def test_named_config_is_checked_against_checkpoint(tmp_path, open_clip, randomize):
    theirs = _openclip_model(open_clip, randomize, dict(image_size=32, patch_size=16, width=64, layers=2, head_width=16),
                             dict(width=32, heads=4, layers=2), False)
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(path))
    # ViT-tiny-test has patch 8 (17 positions) and a 32-dim embedding; the checkpoint has patch 16 and 24.
    with pytest.raises(CheckpointError) as err:
        create_model("ViT-tiny-test", pretrained=str(path))
    msg = str(err.value)
    assert str(path) in msg and "shape mismatch" in msg
    assert "visual.positional_embedding" in msg and "visual.conv1.weight" in msg


def test_named_config_with_matching_checkpoint(tmp_path, open_clip, randomize, inputs, close):
    cfg = get_model_config("ViT-tiny-test")
    theirs = randomize(open_clip.CLIP(**to_openclip_config(cfg)), seed=6)
    path = tmp_path / "tiny.pt"
    torch.save(theirs.state_dict(), path)
    ours = create_model("ViT-tiny-test", pretrained=str(path)).eval()
    images, ids = inputs(32, 16, cfg.text.vocab_size)
    with torch.no_grad():
        close(ours.encode_image(images), theirs.encode_image(images), what="image embeddings")
        close(ours.encode_text(ids), theirs.encode_text(ids), what="text embeddings")


def test_custom_text_clip_naming(tmp_path, open_clip, randomize, inputs, close):
    """open_clip's CustomTextCLIP keeps its text tower under ``text.`` (with resblocks/in_proj naming)."""
    cfg = get_model_config("ViT-tiny-test")
    oc_cfg = to_openclip_config(cfg)
    theirs = randomize(open_clip.CustomTextCLIP(oc_cfg["embed_dim"], oc_cfg["vision_cfg"], oc_cfg["text_cfg"]), seed=7)
    assert "text.transformer.resblocks.0.attn.in_proj_weight" in theirs.state_dict()
    torch.save(theirs.state_dict(), tmp_path / "custom.pt")
    ours = create_model("ViT-tiny-test", pretrained=str(tmp_path / "custom.pt")).eval()
    images, ids = inputs(32, 16, cfg.text.vocab_size)
    with torch.no_grad():
        close(ours.encode_text(ids), theirs.encode_text(ids), what="text embeddings")
        close(ours.encode_image(images), theirs.encode_image(images), what="image embeddings")
