"""create_model checks an untrusted checkpoint's config against its weights before building anything real."""
from __future__ import annotations

import json

import pytest

import mmfm.models.factory as factory
from mmfm.checkpoints import CheckpointError, save_pretrained
from mmfm.api import create_model


@pytest.fixture
def builds(monkeypatch):
    """The configs create_model really builds (not counting meta-device builds used for checking)."""
    import torch
    built = []
    real = factory.build_model

    def spy(cfg):
        if torch.empty(0).device.type != "meta":
            built.append(cfg)
        return real(cfg)
    monkeypatch.setattr(factory, "build_model", spy)
    return built


def test_mismatching_config_is_refused_before_building(tmp_path, builds):
    save_pretrained(create_model("ViT-tiny-test"), tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"]["vision"]["width"] = 4096   # claims a far wider tower than the weights hold
    meta["config"]["vision"]["head_width"] = 64
    (tmp_path / "config.json").write_text(json.dumps(meta))
    builds.clear()
    with pytest.raises(CheckpointError, match="does not match"):
        create_model(pretrained=str(tmp_path))
    assert builds == []


def test_missing_keys_are_refused_before_building_when_strict(tmp_path, builds):
    from safetensors.torch import load_file, save_file
    save_pretrained(create_model("ViT-tiny-test"), tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    sd.pop("visual.proj")
    save_file(sd, str(tmp_path / "model.safetensors"))
    builds.clear()
    with pytest.raises(CheckpointError, match="missing key"):
        create_model(pretrained=str(tmp_path))
    assert builds == []
    model = create_model(pretrained=str(tmp_path), strict=False)   # non-strict: built, the rest loaded
    assert len(builds) == 1 and model.config.vision.width == 64


def test_matching_checkpoint_is_built_once(tmp_path, builds):
    save_pretrained(create_model("ViT-tiny-test"), tmp_path)
    builds.clear()
    create_model(pretrained=str(tmp_path))
    assert len(builds) == 1
