"""Contrastive accumulation's gradient pass holds the activations of one tower of one micro-batch at a time.

Issue 18: ViT-B-32 at 8 x accumulation 4 peaked while the text tower's backward ran with the image tower's
whole graph still waiting behind it. Each tower's gradient is its own path (dL/dF_image dF_image/dtheta and
dL/dF_text dF_text/dtheta, both against the cached features of the other), so the two towers can be re-run
and back-propagated one after the other: the same gradients, the larger tower's activations at the peak.
"""
from contextlib import nullcontext

import pytest
import torch

from mmfm.api import create_model
from mmfm.train import objectives
from mmfm.train.objectives import ContrastiveObjective, split_batch


def _pairs(n=12):
    torch.manual_seed(1)
    batch = {"image": torch.randn(n, 3, 32, 32), "text": torch.randint(1, 1000, (n, 16))}
    batch["text"][:, 9] = 49407
    return batch


def _run(model, batch, k, by_tower, loss="clip", local=False, keep_less=True):
    """(loss, gradients, bytes of activations each backward call held) of one accumulated step."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    held, per_backward = {}, []
    pack = objectives._pack if keep_less else (lambda t: t)

    def counting_pack(t):
        packed = pack(t)
        if torch.is_tensor(packed):   # kept as is (a recipe holds nothing new)
            s = packed.untyped_storage()
            if s.data_ptr() not in params:   # weights saved for backward are not activations
                held[s.data_ptr()] = s.nbytes()
        return packed

    def backward(l):
        per_backward.append(sum(held.values()))
        held.clear()
        l.backward()

    obj = ContrastiveObjective(loss, local_loss=local)
    obj.tower_by_tower = by_tower
    model.zero_grad(set_to_none=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(objectives, "_pack", counting_pack)
        mp.setattr(objectives, "_unpack", objectives._unpack if keep_less else (lambda t: t))
        out = obj.forward_backward(model, split_batch(batch, k), backward, nullcontext, lambda last: nullcontext())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out["loss"], grads, per_backward


def _tower_activations(model, batch):
    """Bytes of activations one micro-batch of ``batch`` saves in each tower alone."""
    sizes = []
    for kw in ({"image": batch["image"]}, {"text": batch["text"]}):
        held = {}
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(**kw)
        sizes.append(sum(held.values()))
    return sizes


def test_gradient_pass_holds_one_tower_at_a_time():
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").train()
    batch = _pairs()
    _, _, joint = _run(model, batch, 4, by_tower=False, keep_less=False)
    _, _, split = _run(model, batch, 4, by_tower=True, keep_less=False)
    image, text = _tower_activations(model, split_batch(batch, 4)[0])
    assert max(joint) >= 0.99 * (image + text)         # the old way: both towers' graphs at once
    assert len(split) == 2 * len(joint)
    # each backward holds one tower's graph (plus the few bytes of the loss over 12 x 12 logits)
    assert max(split) < max(image, text) + min(image, text) / 2


@pytest.mark.parametrize("loss,local", [("clip", False), ("clip", True), ("siglip", False)])
def test_tower_by_tower_gives_the_gradients_of_both_at_once(loss, local):
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").train()
    if loss == "siglip":
        with torch.no_grad():
            model.logit_bias = torch.nn.Parameter(torch.tensor(-10.0))
    batch = _pairs()
    loss_joint, g_joint, _ = _run(model, batch, 3, False, loss, local, keep_less=False)
    loss_split, g_split, _ = _run(model, batch, 3, True, loss, local, keep_less=False)
    assert loss_split == pytest.approx(loss_joint, rel=1e-6)
    assert g_split.keys() == g_joint.keys() and "logit_scale" in g_split
    for n in g_joint:
        torch.testing.assert_close(g_split[n], g_joint[n], rtol=1e-6, atol=1e-6, msg=n)


def _watch(model, k, by_tower=True):
    """Per backward call of one accumulated step: (image grads exist, text grads exist, token table grad sparse),
    taken just before the call."""
    seen = []

    def has(tower):
        return any(p.grad is not None for p in tower.parameters())

    def backward(l):
        g = model.text.token_embedding.weight.grad
        seen.append((has(model.visual), has(model.text), g is not None and g.is_sparse))
        l.backward()

    obj = ContrastiveObjective()
    obj.tower_by_tower = by_tower
    model.zero_grad(set_to_none=True)
    obj.forward_backward(model, split_batch(_pairs(), k), backward, nullcontext, lambda last: nullcontext())
    return seen


def test_image_halves_run_before_any_text_gradient_exists():
    # ViT-B-32 at 8 x accumulation 4: the image tower's activations are the largest thing the pass holds, and
    # the text tower's gradients (0.24 GB) are the largest thing that can wait: every image half runs first.
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").train()
    seen = _watch(model, 4)
    assert len(seen) == 8
    assert not any(text for _, text, _ in seen[:4])       # image halves: no text gradient yet
    assert all(image for image, _, _ in seen[4:])


def test_token_embedding_gradient_is_sparse_during_the_pass_and_dense_after():
    # A dense embedding backward builds a table-sized gradient (49408 x 512 for CLIP) before adding it into
    # .grad: that transient was the pass's peak. Inside the pass the table's gradient is sparse; after it, one
    # dense .grad as the optimizer and clipping expect, and the module is as it was.
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").train()
    seen = _watch(model, 3)
    assert [sparse for _, _, sparse in seen] == [False] * 3 + [False, True, True]   # sparse from the 2nd text half
    table = model.text.token_embedding
    assert table.weight.grad is not None and table.weight.grad.layout == torch.strided and not table.sparse
    # the joint pass (DDP's) keeps dense embedding gradients throughout
    assert not any(sparse for _, _, sparse in _watch(model, 3, by_tower=False))


def test_tower_by_tower_replays_the_randomness_of_both_towers():
    # Each half must draw what the feature pass drew for it: the image half from the piece's recorded state,
    # the text half from the state the image half left (now that the text halves run after all image halves).
    def grads(by_tower):
        torch.manual_seed(0)
        model = create_model("ViT-tiny-test").train()
        for tower in (model.visual, model.text):
            tower.register_forward_hook(lambda m, i, o: torch.nn.functional.dropout(o, 0.5, True))
        torch.manual_seed(7)
        loss, g, _ = _run(model, _pairs(), 3, by_tower, keep_less=False)
        return loss, g, torch.get_rng_state()
    loss_joint, g_joint, rng_joint = grads(False)
    loss_split, g_split, rng_split = grads(True)
    assert loss_split == pytest.approx(loss_joint, rel=1e-6)
    assert torch.equal(rng_split, rng_joint)             # the caller's stream ends where it did
    for n in g_joint:
        torch.testing.assert_close(g_split[n], g_joint[n], rtol=1e-6, atol=1e-6, msg=n)


def test_gradient_pass_keeps_gelu_outputs_as_their_recipe():
    # The MLP's GELU output (fc2's input) is recomputed from fc1's output, which GELU's backward keeps
    # anyway: the same bits, so the same gradients exactly, and a quarter less to hold.
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").train()
    batch = _pairs()
    loss_all, g_all, held_all = _run(model, batch, 4, by_tower=True, keep_less=False)
    loss_less, g_less, held_less = _run(model, batch, 4, by_tower=True, keep_less=True)
    assert loss_less == loss_all
    assert g_less.keys() == g_all.keys()
    assert all(torch.equal(g_less[n], g_all[n]) for n in g_all)
    # ViT-tiny-test: 3 images of 16 + 1 tokens per micro-batch; the last block runs the pooled token only
    blocks = model.visual.transformer.blocks
    gelu_outputs = (len(blocks) - 1) * blocks[0].mlp.fc1.out_features * 3 * 17 * 4
    assert max(held_less) <= max(held_all) - gelu_outputs

