"""A LoRA adapter file is validated completely before the model is touched (issue 19).

A non-float ``mmfm_logit_scale`` used to raise only after the adapters had been injected (the model was
left half-modified), and NaN/inf were accepted silently. Every bad file must now raise one clear
``CheckpointError`` (a ValueError) and leave the base model bit-identical.
"""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mmfm.adapt import apply_lora, is_lora_model, load_lora, lora_parameters, save_lora
from mmfm.adapt.lora_io import ADAPTER_WEIGHTS
from mmfm.checkpoints import CheckpointError
from mmfm.api import create_model


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("ViT-tiny-test")


def full_state(model) -> dict:
    """Everything a load could change: module names and types, values, dtypes, devices, requires_grad."""
    return {"modules": [(n, type(m).__name__) for n, m in model.named_modules()],
            "params": {n: (p.detach().clone(), p.dtype, p.device, p.requires_grad) for n, p in model.named_parameters()},
            "buffers": {n: b.clone() for n, b in model.named_buffers()},
            "attrs": sorted(k for k in vars(model) if not k.startswith("_") or k in ("_mmfm_lora",)),
            "training": [m.training for m in model.modules()]}


def assert_identical(a: dict, b: dict) -> None:
    assert a["modules"] == b["modules"] and a["attrs"] == b["attrs"] and a["training"] == b["training"]
    assert a["params"].keys() == b["params"].keys() and a["buffers"].keys() == b["buffers"].keys()
    for k, (t, dtype, device, grad) in a["params"].items():
        u, dtype2, device2, grad2 = b["params"][k]
        assert (dtype, device, grad) == (dtype2, device2, grad2), k
        assert torch.equal(t, u), k
    for k, t in a["buffers"].items():
        assert torch.equal(t, b["buffers"][k]), k


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A good adapter directory that records a trained logit scale."""
    path = tmp_path_factory.mktemp("adapter")
    model = apply_lora(tiny(), "qv-r16", r=2, train_logit_scale=True)
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.normal_(std=0.1)
        model.logit_scale.fill_(3.0)
    save_lora(model, path)
    return path


def _rewrite(src, dst, tensors=None, metadata=None):
    """Copy an adapter directory, changing some tensors and/or metadata entries of its weights file."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name != ADAPTER_WEIGHTS:
            (dst / f.name).write_bytes(f.read_bytes())
    with safe_open(str(src / ADAPTER_WEIGHTS), framework="pt") as f:
        state, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    first = sorted(state)[0]
    for name, make in (tensors or {}).items():
        state[first if name == "first" else name] = make(state[first if name == "first" else name])
    meta.update(metadata or {})
    save_file(state, str(dst / ADAPTER_WEIGHTS), metadata=meta)
    return dst


BAD = {
    "logit scale not a number": dict(metadata={"mmfm_logit_scale": "abc"}),
    "logit scale nan": dict(metadata={"mmfm_logit_scale": "nan"}),
    "logit scale inf": dict(metadata={"mmfm_logit_scale": "inf"}),
    "base config not json": dict(metadata={"mmfm_base_config": "{not json", "mmfm_base_fingerprint": "0" * 16}),
    "nan in an adapter tensor": dict(tensors={"first": lambda t: torch.full_like(t, float("nan"))}),
    "integer adapter tensor": dict(tensors={"first": lambda t: t.to(torch.int32)}),
}


def test_a_good_adapter_loads_with_its_logit_scale(adapter):
    model = load_lora(tiny(), adapter)
    assert is_lora_model(model)
    assert float(model.logit_scale) == pytest.approx(3.0)


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_adapter_raises_one_clear_error_and_leaves_the_model_bit_identical(adapter, tmp_path, case):
    bad = _rewrite(adapter, tmp_path / "bad", **BAD[case])
    model = tiny()
    before = full_state(model)
    with pytest.raises(CheckpointError, match=str(bad)) as err:
        load_lora(model, bad)
    assert isinstance(err.value, ValueError)
    assert "\n" not in str(err.value).strip(), "one line naming the problem"
    assert not is_lora_model(model)
    assert_identical(before, full_state(model))
