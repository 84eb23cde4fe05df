"""WiSE-FT: weight-space interpolation between a base model and its fine-tune, and the alpha sweep."""
from __future__ import annotations

import pytest
import torch

from mmfm.adapt import apply_lora, lora_parameters, sweep_table, wise_ft, wise_ft_sweep, zero_shot_metric
from mmfm.api import create_model


def tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("ViT-tiny-test")


def test_interpolates_every_float_tensor_and_leaves_inputs_alone():
    base, ft = tiny(0), tiny(1)
    sb = {k: v.clone() for k, v in base.state_dict().items()}
    sf = {k: v.clone() for k, v in ft.state_dict().items()}
    for alpha in (0.0, 0.3, 1.0):
        out = wise_ft(base, ft, alpha).state_dict()
        for k in sb:
            torch.testing.assert_close(out[k], (1 - alpha) * sb[k] + alpha * sf[k], rtol=0, atol=1e-6)
    for k in sb:   # inputs untouched
        assert torch.equal(base.state_dict()[k], sb[k]) and torch.equal(ft.state_dict()[k], sf[k])


def test_lora_finetune_interpolates_the_adapter_update():
    base = tiny(0)
    ft = apply_lora(tiny(0), "qv-r16", r=2)
    with torch.no_grad():
        for p in lora_parameters(ft).values():
            p.normal_(0, 0.3)
    q = ft.visual.transformer.blocks[0].attn.q_proj
    delta = q.get_delta_weight("default")
    half = wise_ft(base, ft, 0.5)
    torch.testing.assert_close(half.visual.transformer.blocks[0].attn.q_proj.weight,
                               base.visual.transformer.blocks[0].attn.q_proj.weight + 0.5 * delta, rtol=0, atol=1e-6)


def test_different_architectures_are_refused():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="same architecture"):
        wise_ft(tiny(0), create_model("RN-tiny-test"), 0.5)


def test_sweep_rows_with_custom_and_zero_shot_evaluations():
    from mmfm.data import get_dataset
    base, ft = tiny(0), tiny(1)
    ref = base.logit_scale.item(), ft.logit_scale.item()
    test = get_dataset("shapes", split="test", size=12, image_size=32)
    evaluations = {"scale": lambda m: m.logit_scale.item(), "held-out": zero_shot_metric(test, "color"),
                   "both": lambda m: {"a": 1.0, "b": 2.0}}
    rows = wise_ft_sweep(base, ft, evaluations, alphas=(0.0, 0.5, 1.0))
    assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0]
    assert rows[0]["scale"] == pytest.approx(ref[0]) and rows[2]["scale"] == pytest.approx(ref[1])
    assert rows[1]["scale"] == pytest.approx(sum(ref) / 2)
    assert all(0.0 <= r["held-out"] <= 1.0 and r["both/b"] == 2.0 for r in rows)
    table = sweep_table(rows)
    assert table.startswith("| alpha") and table.count("\n") == 4
