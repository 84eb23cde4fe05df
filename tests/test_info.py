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


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = mmfm.create_model("ViT-tiny-test")
    m.train()
    m.lock_image_tower(unlocked_groups=1)   # a mix of trainable and frozen parameters
    m.text.eval()                           # and a submodule in another mode than its parent
    return m


@pytest.mark.parametrize("lora", [None, "qv-r16"])
def test_model_info_on_a_live_model_changes_nothing(model, lora, model_state):
    before = model_state(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.eval().encode_image(x)
    model.train()
    model.text.eval()
    info = mmfm.model_info(model=model, lora=lora)
    before.assert_same(model)
    assert info["flops_per_image"] and info["flops_per_image"] > 0
    assert info["parameters"]["total"] >= count_parameters(model).total
    if lora:
        assert info["parameters"]["trainable"] > 0 and info["lora"] == lora
    with torch.no_grad():
        assert torch.equal(model.eval().encode_image(x), ref)   # still a working model on its device


def test_parameter_counts_and_memory_change_nothing(model, model_state):
    before = model_state(model)
    count_parameters(model)
    weight_memory(count_parameters(model).total)
    before.assert_same(model)
