"""mmfm's own format: save_pretrained / from_pretrained are lossless and atomic."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from mmfm.api import create_model, from_pretrained
from mmfm.checkpoints import save_pretrained
from mmfm.checkpoints.io import tensors_for_saving
from mmfm.models import get_model_config


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("name", ["ViT-tiny-test", "RN-tiny-test"])
def test_round_trip_is_lossless(name, tmp_path, randomize, inputs):
    model = randomize(create_model(name))
    save_pretrained(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]  # no temp files

    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["format"] == "mmfm" and meta["family"] == "clip" and "mmfm_version" in meta
    assert meta["config"] == json.loads(json.dumps(model.config.to_dict()))

    loaded = from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    _assert_same_weights(model, loaded)
    images, ids = inputs(32, 16, model.config.text.vocab_size)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))
        assert torch.equal(loaded.encode_text(ids), model.encode_text(ids))

    again = create_model(pretrained=str(tmp_path / "ckpt"))   # the factory reads the same directory
    _assert_same_weights(model, again)


def test_overwrite_and_logit_bias(tmp_path, randomize):
    cfg = get_model_config("ViT-tiny-test")
    cfg.init_logit_bias = -10.0
    first = randomize(create_model("ViT-tiny-test"), seed=1)
    save_pretrained(first, tmp_path)
    second = randomize(create_model(cfg), seed=2)
    save_pretrained(second, tmp_path)    # replaces both files
    loaded = from_pretrained(tmp_path)
    assert loaded.logit_bias is not None and loaded.config.init_logit_bias == -10.0
    _assert_same_weights(second, loaded)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_saved_tensors_are_contiguous_and_unshared(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    shared = {"a": base, "b": base, "t": base.t(), "row": base[1]}
    out = tensors_for_saving(shared)
    ptrs = {t.untyped_storage().data_ptr() for t in out.values()}
    assert len(ptrs) == 4 and all(t.is_contiguous() for t in out.values())
    for k, v in shared.items():
        assert torch.equal(out[k], v)

    model = create_model("ViT-tiny-test")
    save_pretrained(model, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(model.state_dict())


def test_device_argument(tmp_path):
    save_pretrained(create_model("ViT-tiny-test"), tmp_path)
    model = from_pretrained(tmp_path, device="cpu")
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_round_trip(dtype, tmp_path, randomize):
    model = randomize(create_model("ViT-tiny-test")).to(dtype)
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path)
    assert next(loaded.parameters()).dtype == dtype
    _assert_same_weights(model, loaded)


def test_named_config_that_disagrees_with_stored_config_warns(tmp_path):
    model = create_model("ViT-tiny-test")
    save_pretrained(model, tmp_path)
    cfg = get_model_config("ViT-tiny-test")
    cfg.quick_gelu = True
    with pytest.warns(UserWarning, match=r"quick_gelu: True \(given\) vs False \(checkpoint\)"):
        loaded = create_model(cfg, pretrained=str(tmp_path))
    assert loaded.config.quick_gelu is True
