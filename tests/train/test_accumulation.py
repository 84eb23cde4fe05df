"""Contrastive-correct gradient accumulation: k micro-batches of B give the gradients of one batch of kB."""
from contextlib import nullcontext

import pytest
import torch

from mmfm.api import create_model
from mmfm.train.objectives import ContrastiveObjective, split_batch


def _grads(model, batch, k, loss="clip", local=False):
    model.zero_grad(set_to_none=True)
    obj = ContrastiveObjective(loss, local_loss=local)
    out = obj.forward_backward(model, split_batch(batch, k), lambda l: l.backward(), nullcontext, lambda last: nullcontext())
    return out["loss"], {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["ViT-tiny-test", "RN-tiny-test"])
@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_accumulated_gradients_equal_full_batch(name, loss):
    torch.manual_seed(0)
    cfg_name = name
    model = create_model(cfg_name)
    if loss == "siglip":
        from mmfm.models import get_model_config, build_model
        cfg = get_model_config(cfg_name)
        cfg.init_logit_bias = -10.0
        model = build_model(cfg)
    if name.startswith("RN"):
        model.eval()   # BatchNorm batch statistics differ between micro-batches and the full batch
    else:
        model.train()
    torch.manual_seed(1)
    batch = {"image": torch.randn(12, 3, 32, 32), "text": torch.randint(1, 1000, (12, 16))}
    batch["text"][:, 9] = 49407
    loss_full, g_full = _grads(model, batch, 1, loss)
    loss_acc, g_acc = _grads(model, batch, 4, loss)
    assert loss_full == pytest.approx(loss_acc, rel=1e-5)
    assert g_full.keys() == g_acc.keys() and "logit_scale" in g_full
    for n in g_full:
        # atol 1e-5: each micro-batch's text is cut at its own last end-of-text token, so matmul shapes (and
        # fp32 summation order) differ from the full batch's; a wrong accumulation is off by far more (below).
        torch.testing.assert_close(g_acc[n], g_full[n], rtol=1e-4, atol=1e-5, msg=n)


def test_naive_accumulation_would_differ():
    """Guard against a vacuous test: per-micro-batch losses (no shared negatives) give other gradients."""
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test")
    batch = {"image": torch.randn(12, 3, 32, 32), "text": torch.randint(1, 1000, (12, 16))}
    _, g_full = _grads(model, batch, 1)
    _, g_local = _grads(model, batch, 4, local=True)
    diff = max((g_full[n] - g_local[n]).abs().max().item() for n in g_full)
    assert diff > 1e-4
