"""The inference kernels (kernels.py: oneDNN-packed weights, fused QKV and GELU, cache staleness) against the plain path."""
import copy
import pickle

import pytest
import torch

from mmfm.api import create_model
from mmfm.models import kernels, precision


def _encode(model, img, ids):
    with torch.no_grad():
        return model.encode_image(img), model.encode_text(ids)


@pytest.mark.skipif(not kernels._HAVE_PACKED, reason="this torch build has no oneDNN linear kernels")
@pytest.mark.parametrize("name", ["ViT-tiny-test", "RN-tiny-test"])
def test_packed_inference_equals_plain_path_and_follows_weight_changes(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    img, ids = torch.randn(3, 3, 32, 32), torch.randint(1, 1000, (3, 16))
    try:
        kernels.set_packed_inference(False)
        plain = _encode(model, img, ids)
        kernels.set_packed_inference(True)
        packed = _encode(model, img, ids)
    finally:
        kernels.set_packed_inference(True)
    for a, b in zip(plain, packed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # The packed copies are rebuilt after load_state_dict (in-place copy) and after an optimizer-style update.
    state = {k: v * 1.5 if k.endswith("fc1.weight") else v for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    kernels.set_packed_inference(False)
    plain2 = _encode(model, img, ids)
    kernels.set_packed_inference(True)
    packed2 = _encode(model, img, ids)
    assert not torch.allclose(plain2[1], plain[1])
    for a, b in zip(plain2, packed2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not kernels._HAVE_PACKED, reason="this torch build has no oneDNN linear kernels")
def test_bf16_packed_inference_equals_plain_bf16_path_and_follows_weight_changes(monkeypatch):
    # bf16 models use the packed kernels too (bias and GELU fused into the matmul); the results differ from
    # the plain bf16 path by bf16 rounding only (GELU of a rounded vs an unrounded product), and a weight
    # change reaches the packed copies through the same weights-version checks as in fp32.
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test", precision="bf16").eval()
    img, ids = torch.randn(4, 3, 32, 32), torch.randint(1, 1000, (4, 16))
    calls = []
    real = kernels.packed_linear
    monkeypatch.setattr(kernels, "packed_linear", lambda *a, **k: calls.append(a[0].dtype) or real(*a, **k))

    def both():
        kernels.set_packed_inference(False)
        try:
            plain = _encode(model, img, ids)
        finally:
            kernels.set_packed_inference(True)
        return plain, _encode(model, img, ids)

    def agree(plain, packed):
        for a, b in zip(plain, packed):
            assert a.dtype == b.dtype == torch.float32
            assert torch.nn.functional.cosine_similarity(a, b).min() > 0.9999
            torch.testing.assert_close(b, a, rtol=0.02, atol=0.02)

    plain, packed = both()
    assert calls and set(calls) == {torch.bfloat16}
    agree(plain, packed)
    state = {k: v * 1.5 if k.endswith("fc1.weight") else v for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    plain2, packed2 = both()
    assert not torch.allclose(packed2[1], packed[1], atol=0.02)
    agree(plain2, packed2)


def test_packed_path_is_not_used_when_gradients_are_needed():
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").train()
    ids = torch.randint(1, 1000, (2, 16))
    out = model.encode_text(ids)
    assert out.requires_grad
    out.sum().backward()
    assert model.text.transformer.blocks[0].mlp.fc1.weight.grad is not None
    assert model.text.transformer.blocks[0].attn.q_proj.weight.grad is not None


def test_derived_weights_are_not_copied_or_pickled():
    model = create_model("ViT-tiny-test").eval()
    with torch.no_grad():
        model.encode_text(torch.randint(1, 1000, (1, 8)))
    attn = model.text.transformer.blocks[0].attn
    assert attn._cache._entries                         # something was cached
    assert not copy.deepcopy(attn)._cache._entries
    assert not pickle.loads(pickle.dumps(attn))._cache._entries
    assert "_cache" not in "".join(model.state_dict())


def _plain_and_cached(model, img, ids):
    cached = _encode(model, img, ids)
    try:
        kernels.set_packed_inference(False)
        for m in model.modules():               # the plain reference must not reuse any cached copy
            if isinstance(getattr(m, "_cache", None), kernels.PackedCache):
                m._cache = kernels.PackedCache()
        plain = _encode(model, img, ids)
    finally:
        kernels.set_packed_inference(True)
    return plain, cached


@pytest.mark.parametrize("write", ["fused_adamw", "data_inplace", "data_replaced"])
def test_cached_weights_follow_writes_that_bypass_version_counters(write):
    # Fused AdamW and writes through .data leave ``tensor._version`` unchanged; an inference pass after them
    # must still see the new weights (a stale cache once broke exact resume of a fused-AdamW run).
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").eval()
    img, ids = torch.randn(2, 3, 32, 32), torch.randint(1, 1000, (2, 16))
    before = _encode(model, img, ids)                 # fills the caches
    fc1 = model.text.transformer.blocks[0].mlp.fc1
    q = model.visual.transformer.blocks[0].attn.q_proj
    version = fc1.weight._version
    if write == "fused_adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
        out = model(img, ids)
        (out["image_features"] * out["text_features"]).sum().backward()
        opt.step()
    elif write == "data_inplace":
        fc1.weight.data.mul_(1.5)
        q.weight.data.mul_(1.5)
    else:
        fc1.weight.data = fc1.weight.data * 1.5
        q.weight.data = q.weight.data * 1.5
    if write != "data_replaced":
        assert fc1.weight._version == version          # the case this test is about
    plain, cached = _plain_and_cached(model, img, ids)
    for a, b, old in zip(plain, cached, before):
        assert not torch.allclose(a, old, atol=1e-4)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def _cache_entries(model) -> int:
    return sum(len(m._cache._entries) for m in model.modules() if isinstance(getattr(m, "_cache", None), kernels.PackedCache))


def test_no_derived_weights_are_built_for_weights_about_to_be_stepped():
    # Contrastive accumulation runs a no-grad feature pass in training mode; its weights change at the next
    # optimizer step, so packed/concatenated copies made there are wasted work and double the weight memory.
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").train()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32), torch.randint(1, 1000, (2, 16)))
    assert _cache_entries(model) == 0


@pytest.mark.parametrize("how", ["eval", "locked"])
def test_derived_weights_still_serve_inference_and_locked_towers(how):
    # eval() + no_grad with trainable parameters (inference after training) packs; so does a locked tower
    # in a training run, whose weights are never stepped.
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test")
    img, ids = torch.randn(2, 3, 32, 32), torch.randint(1, 1000, (2, 16))
    if how == "eval":
        model.eval()
        assert all(p.requires_grad for p in model.parameters())
        _encode(model, img, ids)
        assert _cache_entries(model.visual) and _cache_entries(model.text)
        return
    model.train()
    model.lock_image_tower(0)
    model.visual.train()                 # even in training mode: frozen weights are not going to change
    _encode(model, img, ids)
    assert _cache_entries(model.visual) and not _cache_entries(model.text)


@pytest.mark.skipif(not kernels._HAVE_PACKED, reason="this torch build has no oneDNN linear kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_patch_embedding_runs_as_one_packed_matmul_and_follows_weight_changes(dtype):
    # A ViT's patchifying convolution (kernel = stride) is a matmul of the patches: oneDNN's convolution
    # with such a kernel was about 2x slower. Same tokens as the convolution, rebuilt when the weight moves.
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, kernel_size=8, stride=8, bias=False).to(dtype).eval()
    x = torch.randn(2, 3, 32, 24, dtype=dtype)
    cache = kernels.PackedCache()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=0.02, atol=0.02)
    with torch.no_grad():
        for scale in (1.0, 1.5):
            conv.weight.mul_(scale)
            got = kernels.patch_embed(conv, x, cache)
            torch.testing.assert_close(got, conv(x).flatten(2).transpose(1, 2), **tol)
            assert "patch" in cache._entries
        # channels-last images and an input whose size is not a multiple of the patch take a correct path too
        cl = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(kernels.patch_embed(conv, cl, cache), conv(cl).flatten(2).transpose(1, 2), **tol)
        odd = torch.randn(1, 3, 30, 24, dtype=dtype)
        torch.testing.assert_close(kernels.patch_embed(conv, odd, cache), conv(odd).flatten(2).transpose(1, 2), **tol)


def test_vit_patch_embedding_takes_the_packed_path_at_inference_only():
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test")
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.train().encode_image(img)
        assert "patch" not in model.visual._cache._entries       # weights about to be stepped: no copy
        model.eval().encode_image(img)
    assert ("patch" in model.visual._cache._entries) == kernels._HAVE_PACKED


@pytest.mark.skipif(not kernels._HAVE_PACKED, reason="this torch build has no oneDNN linear kernels")
def test_residual_add_runs_inside_the_last_matmul_bit_identical_in_fp32(monkeypatch):
    # At inference a block's two residual adds run as oneDNN's add post-op of out_proj and fc2: in fp32 the
    # same sums to the bit as x + attn(...) and x + mlp(...); a hook on a sub-layer still sees its own output.
    from mmfm.models.layers import ResidualBlock
    torch.manual_seed(0)
    block = ResidualBlock(64, 4).eval()
    x = torch.randn(3, 17, 64)
    fused_calls = []
    real = kernels._linear_add
    monkeypatch.setattr(kernels, "_linear_add", lambda *a: fused_calls.append(1) or real(*a))
    with torch.no_grad():
        fused, pooled = block(x), block.forward_pooled(x)
        seen = []
        hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o)) for m in (block.attn, block.mlp)]
        unfused, unfused_pooled = block(x), block.forward_pooled(x)
        for h in hooks:
            h.remove()
        h = block.ln_1(x)
        attn = block.attn(h)
    # the full block's two adds, and the pooled block's MLP add (its first residual, a slice, is not contiguous)
    assert fused_calls == [1, 1, 1]
    assert torch.equal(fused, unfused) and torch.equal(pooled, unfused_pooled)
    assert torch.equal(seen[0], attn)       # the hooked attention's output, without the residual
    with pytest.raises(ValueError, match="activation and a residual"):
        kernels.linear(block.mlp.fc1, x, block.mlp._cache, "fc1", act=block.mlp.act, residual=x)


@pytest.mark.skipif(not kernels._HAVE_PACKED, reason="this torch build has no oneDNN linear kernels")
def test_fused_residual_add_rounds_bf16_once():
    # In bf16 the post-op adds the residual to the fp32 accumulator and rounds once, where matmul-then-add
    # rounds twice: closer to the exact sum.
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 256).to(torch.bfloat16).eval()
    x, r = torch.randn(64, 256).to(torch.bfloat16), torch.randn(64, 256).to(torch.bfloat16)
    with torch.no_grad():
        fused = kernels.linear(lin, x, kernels.PackedCache(), "w", residual=r)
        twice = r + kernels.linear(lin, x, kernels.PackedCache(), "w")
        exact = x.double() @ lin.weight.double().T + lin.bias.double() + r.double()
    assert fused.dtype == torch.bfloat16
    assert (fused.double() - exact).abs().mean() < 0.9 * (twice.double() - exact).abs().mean()
