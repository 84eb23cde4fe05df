"""Nothing that reports on a model changes it (issue 14 item 4).

``mmfm.model_info(model=m)`` counted FLOPs by moving the caller's image tower to the meta device (``m`` was
broken after), and with ``lora=`` injected adapters into the caller's model. Each reporting call must leave
every parameter and buffer (values, devices, dtypes, requires_grad), the module tree and every module's
training flag as they were.
"""
from __future__ import annotations

import pytest
import torch

import mmfm
from mmfm.measure import count_parameters, weight_memory


def full_state(model) -> dict:
    return {"modules": [(n, type(m).__name__, m.training) for n, m in model.named_modules()],
            "tensors": {n: (t.detach().clone(), t.dtype, t.device, t.requires_grad)
                        for n, t in model.state_dict(keep_vars=True).items()}}


def assert_unchanged(before: dict, model) -> None:
    after = full_state(model)
    assert after["modules"] == before["modules"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for n, (t, dtype, device, grad) in before["tensors"].items():
        u, dtype2, device2, grad2 = after["tensors"][n]
        assert (dtype2, device2, grad2) == (dtype, device, grad), n
        assert torch.equal(u, t), n


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = mmfm.create_model("ViT-tiny-test")
    m.train()
    m.lock_image_tower(unlocked_groups=1)   # a mix of trainable and frozen parameters
    m.text.eval()                           # and a submodule in another mode than its parent
    return m


@pytest.mark.parametrize("lora", [None, "qv-r16"])
def test_model_info_on_a_live_model_changes_nothing(model, lora):
    before = full_state(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.eval().encode_image(x)
    model.train()
    model.text.eval()
    info = mmfm.model_info(model=model, lora=lora)
    assert_unchanged(before, model)
    assert info["flops_per_image"] and info["flops_per_image"] > 0
    assert info["parameters"]["total"] >= count_parameters(model).total
    if lora:
        assert info["parameters"]["trainable"] > 0 and info["lora"] == lora
    with torch.no_grad():
        assert torch.equal(model.eval().encode_image(x), ref)   # still a working model on its device


def test_parameter_counts_and_memory_change_nothing(model):
    before = full_state(model)
    count_parameters(model)
    weight_memory(count_parameters(model).total)
    assert_unchanged(before, model)
