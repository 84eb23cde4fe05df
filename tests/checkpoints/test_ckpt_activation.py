"""A bare state dict does not record GELU vs QuickGELU: it is refused without a model name, never guessed."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from mmfm.checkpoints import CheckpointError, save_pretrained
from mmfm.checkpoints.openclip import infer_config
from mmfm.checkpoints.validate import expected_shapes
from mmfm.api import create_model
from mmfm.models import CLIPConfig, TextConfig, VisionConfig, get_model_config, list_models
from mmfm.models.registry import register_model

# A small architecture that OpenAI's inference rules reproduce exactly (64-wide heads, argmax pooling).
ARCH = "test-act-arch"
VISION = dict(image_size=32, patch_size=16, width=64, layers=1)
TEXT = dict(context_length=16, vocab_size=100, width=64, heads=1, layers=1)


def _config(quick_gelu: bool) -> CLIPConfig:
    return CLIPConfig(embed_dim=24, vision=VisionConfig(**VISION), text=TextConfig(**TEXT), quick_gelu=quick_gelu)


@pytest.fixture(scope="module", autouse=True)
def _registered():
    from mmfm.models import registry
    register_model(ARCH, _config(False), "test: GELU", overwrite=True)
    register_model(f"{ARCH}-quickgelu", _config(True), "test: QuickGELU", overwrite=True)
    yield
    for name in (ARCH, f"{ARCH}-quickgelu"):   # other tests list the registry
        registry._MODELS.pop(name, None)
        registry._DESCRIPTIONS.pop(name, None)


def _gelu_checkpoint(open_clip, randomize, tmp_path, fmt="safetensors"):
    """An open_clip GELU model (as LAION's are) saved as a plain state dict, without its config."""
    theirs = randomize(open_clip.CLIP(24, VISION, TEXT, quick_gelu=False), 2)
    sd = {k: v.contiguous() for k, v in theirs.state_dict().items()}
    path = tmp_path / f"laion.{fmt}"
    save_file(sd, str(path)) if fmt == "safetensors" else torch.save({"state_dict": sd, "epoch": 3}, path)
    return theirs, path


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_bare_state_dict_without_name_is_refused(fmt, tmp_path, open_clip, randomize):
    """Before: silently built with QuickGELU, which changes the outputs of GELU (LAION) weights."""
    _, path = _gelu_checkpoint(open_clip, randomize, tmp_path, fmt)
    with pytest.raises(CheckpointError) as err:
        create_model(pretrained=str(path))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert f"'{ARCH}'" in msg and f"'{ARCH}-quickgelu'" in msg   # both choices, named
    assert "GELU" in msg and "QuickGELU" in msg


def test_named_bare_state_dict_loads_with_that_activation(tmp_path, open_clip, randomize, inputs, close):
    theirs, path = _gelu_checkpoint(open_clip, randomize, tmp_path)
    ours = create_model(ARCH, pretrained=str(path)).eval()
    assert ours.config.quick_gelu is False
    images, ids = inputs(32, 16, 100)
    with torch.no_grad():
        close(ours.encode_image(images), theirs.encode_image(images), what="image embeddings")
        close(ours.encode_text(ids), theirs.encode_text(ids), what="text embeddings")
    assert create_model(f"{ARCH}-quickgelu", pretrained=str(path)).config.quick_gelu is True


def test_unregistered_architecture_is_refused_with_both_choices(tmp_path, open_clip, randomize):
    theirs = randomize(open_clip.CLIP(24, dict(VISION, layers=2), TEXT, quick_gelu=False), 2)
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError) as err:
        create_model(pretrained=str(path))
    msg = str(err.value)
    assert "\n" not in msg and "no registered model pair" in msg
    assert "quick_gelu" in msg and "register_model" in msg


def test_architecture_registered_with_one_activation_only(tmp_path, open_clip, randomize, monkeypatch):
    """Naming a registered model of one activation only would be half an answer: the error says so."""
    from mmfm.models import registry
    monkeypatch.setitem(registry._MODELS, "test-act-gelu-only",   # removed again after the test
                        CLIPConfig(embed_dim=24, vision=VisionConfig(**dict(VISION, layers=3)), text=TextConfig(**TEXT)))
    theirs = randomize(open_clip.CLIP(24, dict(VISION, layers=3), TEXT, quick_gelu=False), 2)
    path = tmp_path / "gelu_only.safetensors"
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match=r"only 'test-act-gelu-only' \(quick_gelu=False\) has its shapes"):
        create_model(pretrained=str(path))
    assert create_model("test-act-gelu-only", pretrained=str(path)).config.quick_gelu is False


def test_weights_file_inside_a_checkpoint_folder_uses_the_folder_config(tmp_path, open_clip, randomize):
    """Pointing at model.safetensors of an mmfm folder, or the weights of an open_clip folder, needs no name."""
    model = create_model(_config(False))
    save_pretrained(model, tmp_path / "mmfm")
    assert create_model(pretrained=str(tmp_path / "mmfm" / "model.safetensors")).config == model.config

    theirs, _ = _gelu_checkpoint(open_clip, randomize, tmp_path)
    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {"embed_dim": 24, "vision_cfg": VISION, "text_cfg": TEXT, "quick_gelu": False}}))
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    assert create_model(pretrained=str(folder / "open_clip_model.safetensors")).config.quick_gelu is False


def _inferable(cfg) -> bool:
    """Whether OpenAI's inference rules rebuild ``cfg`` (up to the activation) from its shapes alone."""
    shapes = {k: torch.empty(s, device="meta") for k, s in expected_shapes(cfg).items()}
    try:
        inferred = infer_config(shapes, quick_gelu=cfg.quick_gelu)
    except CheckpointError:
        return False
    inferred.init_logit_scale = cfg.init_logit_scale
    if cfg.text.pool == "argmax":
        inferred.text.eot_token_id = cfg.text.eot_token_id
    return inferred == cfg


def test_every_inferable_registered_architecture_has_both_activations():
    """So the refusal's 'X for GELU, X-quickgelu for OpenAI's' always names two models that exist."""
    from mmfm.models.registry import _BUILTIN
    names = set(list_models("clip"))
    builtin = [n for n in names if n.removesuffix("-quickgelu") in _BUILTIN]   # tests may register half pairs
    inferable = [n for n in builtin if _inferable(get_model_config(n))]
    assert "ViT-B-32" in inferable and "RN50-quickgelu" in inferable
    for name in inferable:
        base = name.removesuffix("-quickgelu")
        assert base in names and f"{base}-quickgelu" in names, name
        assert get_model_config(base).quick_gelu is False
        assert get_model_config(f"{base}-quickgelu").quick_gelu is True


def test_torchscript_archive_needs_no_name_and_warns_on_gelu(tmp_path, open_clip, randomize, inputs):
    """OpenAI's TorchScript archives are QuickGELU: loaded without a name; a GELU name is warned about."""
    import warnings
    theirs = randomize(open_clip.CLIP(24, VISION, TEXT, quick_gelu=True), 3)
    images, ids = inputs(32, 16, 100, batch=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(theirs, dict(encode_image=(images,), encode_text=(ids,)), check_trace=False)
        path = tmp_path / "ViT-openai.pt"
        torch.jit.save(traced, str(path))
    assert create_model(pretrained=str(path)).config.quick_gelu is True
    with pytest.warns(UserWarning, match="quick_gelu=True"):
        create_model(ARCH, pretrained=str(path))
