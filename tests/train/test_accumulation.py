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


def _chunked_grads(model, batch, k, chunk, local=False):
    model.zero_grad(set_to_none=True)
    obj = ContrastiveObjective("clip", local_loss=local, grad_chunk=chunk)
    out = obj.forward_backward(model, split_batch(batch, k), lambda l: l.backward(), nullcontext, lambda last: nullcontext())
    return out["loss"], {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _pairs(n=12):
    torch.manual_seed(1)
    batch = {"image": torch.randn(n, 3, 32, 32), "text": torch.randint(1, 1000, (n, 16))}
    batch["text"][:, 9] = 49407
    return batch


@pytest.mark.parametrize("local", [False, True])
def test_gradient_pass_in_chunks_gives_the_same_gradients(local):
    # Chunks smaller than the micro-batch (the memory saver) are the same sum of per-row gradient paths:
    # equal up to float summation order. Chunk 4 of micro-batch 6 also leaves a ragged last chunk of 2.
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").train()
    batch = _pairs()
    loss_whole, g_whole = _chunked_grads(model, batch, 2, None, local)
    for chunk in (1, 4):
        loss_cut, g_cut = _chunked_grads(model, batch, 2, chunk, local)
        assert loss_cut == pytest.approx(loss_whole, rel=1e-6)
        assert g_cut.keys() == g_whole.keys() and "logit_scale" in g_cut
        for n in g_whole:
            # atol 1e-5: summation order (the embedding gradients, ~10 in size, differ by ~5e-6).
            torch.testing.assert_close(g_cut[n], g_whole[n], rtol=1e-5, atol=1e-5, msg=f"chunk {chunk}: {n}")


def test_chunked_pass_replays_the_randomness_of_each_chunk():
    # A tower that draws random numbers in training (dropout) must see the same draws in the feature pass
    # and in the gradient pass, chunk by chunk: the cached negatives are then exactly the live features,
    # so the gradients match a plain run that uses the same draws (micro-batch whole, chunk = batch).
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").train()
    model.visual.register_forward_hook(lambda m, i, o: torch.nn.functional.dropout(o, 0.5, True))
    batch = _pairs(4)
    torch.manual_seed(7)
    _, g_chunked = _chunked_grads(model, batch, 2, 1)
    # Reference: 4 micro-batches of 1 with whole micro-batches: the same pieces, the same RNG sequence.
    torch.manual_seed(7)
    _, g_ref = _chunked_grads(model, batch, 4, None)
    for n in g_ref:
        torch.testing.assert_close(g_chunked[n], g_ref[n], rtol=1e-5, atol=1e-6, msg=n)


def test_batchnorm_model_is_not_chunked():
    # BatchNorm in training mode normalises each chunk by its own statistics: chunking would change the
    # results, so such a model runs whole micro-batches, bit for bit as without the option.
    torch.manual_seed(0)
    model = create_model("RN-tiny-test").train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batch = _pairs()
    loss_whole, g_whole = _chunked_grads(model, batch, 2, None)
    buffers_whole = [b.clone() for b in model.buffers()]
    model.load_state_dict(state)
    loss_cut, g_cut = _chunked_grads(model, batch, 2, 2)
    assert loss_cut == loss_whole
    assert g_cut.keys() == g_whole.keys()
    assert all(torch.equal(g_cut[n], g_whole[n]) for n in g_whole)
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), buffers_whole))


def test_train_config_sets_the_chunk_of_the_gradient_pass(tmp_path):
    from mmfm.train.config import TrainConfig
    from mmfm.train.trainer import Trainer
    model = create_model("ViT-tiny-test")
    assert Trainer(model, [], TrainConfig(grad_chunk=3), tmp_path).objective.grad_chunk == 3
    assert Trainer(model, [], TrainConfig(grad_chunk=None), tmp_path).objective.grad_chunk is None
    with pytest.raises(ValueError):
        TrainConfig(grad_chunk=0)
