"""Identifiers: offline and unknown identifiers fail fast and clearly; hub repos resolve to local files."""
from __future__ import annotations

import json
import time

import huggingface_hub
import pytest
import torch
from safetensors.torch import save_file

from mmfm.checkpoints import CheckpointError, export_hf, hub, to_openclip_config, to_openclip_state_dict
from mmfm.api import create_model
from mmfm.models import get_model_config


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_unknown_hf_repo_offline_fails_fast(offline, tmp_path):
    start = time.monotonic()
    with pytest.raises(CheckpointError) as err:
        create_model(pretrained="hf-hub:nobody/no-such-clip", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 5
    msg = str(err.value)
    assert "hf-hub:nobody/no-such-clip" in msg and "offline" in msg and "local path" in msg
    assert "random weights" in msg


def test_known_tag_offline_without_cache(offline, tmp_path, open_clip):
    for name, pretrained in (("ViT-B-32", "openai"), (None, "openai/ViT-B-32"), ("ViT-B-32", "laion2b_s34b_b79k")):
        start = time.monotonic()
        with pytest.raises(CheckpointError, match="offline") as err:
            create_model(name, pretrained=pretrained, cache_dir=str(tmp_path))
        assert time.monotonic() - start < 5
        assert repr(pretrained) in str(err.value)


def test_unreachable_network_fails_fast(monkeypatch, tmp_path):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MMFM_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_hf_endpoint", lambda: "https://unreachable.invalid")
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="network is unreachable"):
        create_model(pretrained="hf-hub:nobody/no-such-clip", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 5


def test_hf_hub_unreachable_says_why_and_never_raises(monkeypatch, offline):
    """The public probe other packages (frozen.lm) use instead of hub's private error text."""
    assert "offline mode is on" in hub.hf_hub_unreachable()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_hf_endpoint", lambda: "https://unreachable.invalid")
    assert hub.hf_hub_unreachable().startswith("the network is unreachable (unreachable.invalid:443: ")


def test_unknown_tag_lists_known_ones(offline, open_clip):
    with pytest.raises(CheckpointError) as err:
        create_model("ViT-B-32", pretrained="no_such_tag")
    msg = str(err.value)
    assert "no_such_tag" in msg and "openai" in msg and "laion2b_s34b_b79k" in msg


def test_tag_without_model_name():
    with pytest.raises(CheckpointError, match="needs a model name"):
        create_model(pretrained="openai")


def test_missing_local_file():
    with pytest.raises(CheckpointError, match="does not exist"):
        create_model(pretrained="./no/such/weights.safetensors")


def test_hf_hub_repo_from_cache(monkeypatch, tmp_path, randomize, inputs):
    """hf-hub: ids use huggingface_hub's cache first; both repo layouts (open_clip, HF) are understood."""
    cfg = get_model_config("ViT-tiny-test")
    model = randomize(create_model(cfg))
    openclip_repo = tmp_path / "openclip_repo"
    openclip_repo.mkdir()
    (openclip_repo / "open_clip_config.json").write_text(json.dumps({"model_cfg": to_openclip_config(cfg)}))
    save_file({k: v.contiguous() for k, v in to_openclip_state_dict(model).items()},
              str(openclip_repo / "open_clip_model.safetensors"))
    hf_repo = export_hf(model, tmp_path / "hf_repo")
    repos = {"org/openclip-tiny": openclip_repo, "org/hf-tiny": hf_repo}
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs.get("local_files_only")))
        return str(repos[repo_id])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    images, ids = inputs(32, 16, cfg.text.vocab_size)
    for repo in repos:
        loaded = create_model(pretrained=f"hf-hub:{repo}").eval()
        assert loaded.config.vision == cfg.vision and loaded.config.text.heads == cfg.text.heads
        with torch.no_grad():
            assert torch.allclose(loaded.encode_image(images), model.encode_image(images), atol=1e-5, rtol=0)
    assert calls == [("org/openclip-tiny", True), ("org/hf-tiny", True)]


@pytest.mark.parametrize("hf_hub, expected", [
    ("org/tiny/", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]),
    ("org/tiny/epoch_32.pt", ["epoch_32.safetensors", "epoch_32.pt"]),
])
def test_tag_resolution_prefers_safetensors_and_warns_on_activation(hf_hub, expected, monkeypatch, tmp_path, open_clip):
    cfg = get_model_config("ViT-tiny-test")          # quick_gelu=False, but the "weights" say QuickGELU
    weights = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in to_openclip_state_dict(create_model(cfg)).items()}, str(weights))
    seen = {}

    def fake_hf_file(repo_id, candidates, cache_dir, identifier, model_name):
        seen.update(repo_id=repo_id, candidates=candidates)
        return weights

    monkeypatch.setattr(hub, "_registry_entry",
                        lambda oc, model, tag: {"hf_hub": hf_hub, "quick_gelu": True} if tag == "mytag" else {})
    monkeypatch.setattr(hub, "_hf_file", fake_hf_file)
    with pytest.warns(UserWarning, match="quick_gelu=True"):
        model = create_model("ViT-tiny-test", pretrained="mytag")
    assert seen == {"repo_id": "org/tiny", "candidates": expected}
    assert model.config.quick_gelu is False   # the explicit config wins; the warning says what to change
