"""Building blocks shared by every tower: attention, MLP, pre-LN residual block, transformer.

Why separate q/k/v/out projections instead of one fused ``in_proj`` like ``nn.MultiheadAttention``:
LoRA (through PEFT) targets modules *by name*, so each projection has to be its own ``nn.Linear``.
On CPU at inference, when nothing has hooked into the projections, the three matmuls are fused into one
(see ``Attention._qkv``) so we pay nothing for the flexibility; in fp32 and bf16 the inference matmuls
also run on oneDNN-packed weights with GELU fused in (see "Inference kernels" below).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..util.weights import Stamp


class LayerNorm(nn.LayerNorm):
    """LayerNorm that computes in fp32 and returns the input dtype (stable under fp16/bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig = x.dtype
        if orig in (torch.float16, torch.bfloat16) and not torch.is_autocast_enabled():
            x = F.layer_norm(x.float(), self.normalized_shape, self.weight.float() if self.weight is not None else None,
                             self.bias.float() if self.bias is not None else None, self.eps)
            return x.to(orig)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that OpenAI's CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(quick_gelu: bool) -> nn.Module:
    return QuickGELU() if quick_gelu else nn.GELU()


def _is_plain_linear(m: nn.Module) -> bool:
    # PEFT replaces a projection by a wrapper module; hooks or subclasses change behaviour too.
    return type(m) is nn.Linear and not m._forward_hooks and not m._forward_pre_hooks


# ------------------------------------------------------------------------------------------
# Inference kernels. When no gradient is needed, fp32 or bf16 on CPU, the projections run as oneDNN matmuls on
# weights packed once into oneDNN's blocked layout (what torch.compile's CPU "freezing" does), with GELU
# fused into the first MLP matmul: 1.3-1.5x faster than addmm on ViT-B-32 shapes at batch 1 and about 1.1x
# at batch 64, same results to ~1e-6 (bf16: to bf16 rounding). The packed copies are a cache checked on every
# use by mmfm's one weights-version mechanism (``mmfm.util.weights``, see ``PackedCache``); they double weight
# memory while a model is used for inference. MMFM_PACKED_LINEAR=0 (or ``set_packed_inference(False)``) turns this off.
_PACKED = os.environ.get("MMFM_PACKED_LINEAR", "1") != "0"


def set_packed_inference(enabled: bool) -> None:
    """Use (or not) oneDNN-packed weights for fp32/bf16 CPU inference; see the note above."""
    global _PACKED
    _PACKED = bool(enabled)


def _packed_kernels_available() -> bool:
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


_HAVE_PACKED = _packed_kernels_available()


# bf16 too: oneDNN's packed bf16 matmul writes its bias and GELU in the same pass, where addmm copies the bias
# into every output first and GELU reads the output again (~14% of a bf16 ViT-B-32's time at batch 64).
_PACKED_DTYPES = (torch.float32, torch.bfloat16)


def use_packed(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    """Whether the oneDNN inference path applies: fp32 or bf16 CPU tensors (weights of the input's dtype)
    and no autograd graph to record."""
    if not (_PACKED and _HAVE_PACKED) or x.device.type != "cpu" or x.dtype not in _PACKED_DTYPES:
        return False
    if any(w.dtype != x.dtype for w in weights):
        return False
    if torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False
    return not torch.is_grad_enabled() or not (x.requires_grad or any(w.requires_grad for w in weights))


def about_to_step(module: nn.Module, *weights: torch.Tensor) -> bool:
    """Whether these weights change at the next optimizer step: trainable weights of a module in training mode.

    No derived copy is built for them, even in a no-grad pass: contrastive accumulation's feature pass runs
    the whole model without grad once per step, and packing there would rebuild every copy each step (the
    weights moved) and hold a second set of weights through the step (0.6 GB for ViT-B-32). A locked tower
    (frozen weights) keeps its copies in a training run, and ``eval()`` inference always packs.
    """
    return module.training and any(w.requires_grad for w in weights)


class PackedCache:
    """Tensors derived from weights (packed or concatenated copies), rebuilt when a source changes.

    "Changes" is decided by mmfm's one weights-version mechanism (``mmfm.util.weights.Stamp``): any
    optimizer step, ``load_state_dict``, LoRA/WiSE-FT mutation, or a change of a source's identity,
    version, dtype or sampled values. Plain attribute of a module, not a buffer: never saved, pickled or
    deep-copied.
    """

    def __init__(self):
        self._entries: dict[str, tuple[Stamp, object]] = {}

    def derived(self, name: str, build, *sources: torch.Tensor | None):
        sources = [t for t in sources if t is not None]
        hit = self._entries.get(name)
        if hit is None or not hit[0].matches(sources):
            with torch.no_grad():
                hit = (Stamp(sources), build())
            self._entries[name] = hit
        return hit[1]

    def __deepcopy__(self, memo):
        return PackedCache()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self._entries = {}


def pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` (then exact GELU if ``gelu``) with ``packed = pack(weight)``."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "gelu" if gelu else "none", [], "none" if gelu else "")


def linear(module: nn.Linear, x: torch.Tensor, cache: PackedCache, name: str, act: nn.Module | None = None):
    """``act(module(x))`` (``module(x)`` without ``act``), through the packed inference path when it
    applies; there an exact GELU runs inside the matmul."""
    if _is_plain_linear(module) and use_packed(x, module.weight) and not about_to_step(module, module.weight):
        w = module.weight
        gelu = type(act) is nn.GELU and act.approximate == "none"
        y = packed_linear(x, cache.derived(name, lambda: pack(w), w), module.bias, gelu=gelu)
        return y if gelu or act is None else act(y)
    y = module(x)
    return y if act is None else act(y)


class Attention(nn.Module):
    """Multi-head attention with named projections, computed by ``scaled_dot_product_attention``.

    ``forward(x)`` is self-attention; ``forward(x, kv=...)`` attends from ``x`` to ``kv`` (used by
    the ResNet attention pool, which queries with one pooled token).
    """

    def __init__(self, dim: int, heads: int, out_dim: int | None = None, bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.dim, self.heads = dim, heads
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, out_dim or dim, bias=bias)
        self._cache = PackedCache()   # derived fused/packed weights for the inference path

    def _fused_qkv(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        ws = (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight)
        bs = (self.q_proj.bias, self.k_proj.bias, self.v_proj.bias)
        return torch.cat(ws, 0), (torch.cat(bs, 0) if bs[0] is not None else None)

    def _packed_qkv(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w, b = self._fused_qkv()
        return pack(w), b

    def _qkv(self, x: torch.Tensor):
        projs = (self.q_proj, self.k_proj, self.v_proj)
        weights = [p.weight for p in projs]
        plain = all(_is_plain_linear(p) for p in projs) and not torch.jit.is_scripting() \
            and not torch.compiler.is_compiling() and not about_to_step(self, *weights)
        sources = weights + [p.bias for p in projs]
        if plain and use_packed(x, *weights):
            # One packed matmul for q, k and v, on the concatenated weights packed once.
            packed, bias = self._cache.derived("qkv_packed", self._packed_qkv, *sources)
            return packed_linear(x, packed, bias).chunk(3, dim=-1)
        if plain and x.device.type == "cpu" and (not torch.is_grad_enabled()
                                                 or not any(w.requires_grad for w in weights)):
            # Other CPU dtypes: still one matmul instead of three (weights concatenated once, cached). Not on
            # accelerators, where checking the cache's value sample would synchronise with the host.
            w, b = self._cache.derived("qkv", self._fused_qkv, *sources)
            return F.linear(x, w, b).chunk(3, dim=-1)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if kv is None:
            q, k, v = self._qkv(x)
        else:
            c = self._cache
            q, k, v = linear(self.q_proj, x, c, "q"), linear(self.k_proj, kv, c, "k"), linear(self.v_proj, kv, c, "v")
        q, k, v = self._split(q), self._split(k), self._split(v)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal and attn_mask is None)
        b, h, n, d = o.shape
        return linear(self.out_proj, o.transpose(1, 2).reshape(b, n, h * d), self._cache, "out")


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, quick_gelu: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = activation(quick_gelu)
        self.fc2 = nn.Linear(hidden, dim)

        self._cache = PackedCache()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.fc2, linear(self.fc1, x, self._cache, "fc1", act=self.act), self._cache, "fc2")


class ResidualBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, quick_gelu: bool = False):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio), quick_gelu)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask=attn_mask, is_causal=is_causal)
        return x + self.mlp(self.ln_2(x))

    def forward_pooled(self, x: torch.Tensor, index: torch.Tensor | None = None,
                       is_causal: bool = False) -> torch.Tensor:
        """This block's output at one token per sequence, [B, 1, D]: token 0, or ``index[b]`` for row b.

        Exactly ``forward(x)[arange(B), index]``, but only that token is a query and only it goes through
        the output projection and the MLP: about 80% of the block's work is skipped. With ``is_causal``
        the pooled token attends to the tokens up to its own position only, as it would in ``forward``.
        """
        if index is None:
            if is_causal:
                raise ValueError("a causal pooled block needs the pooled positions (index)")
            own, mask = x[:, :1], None
        else:
            own = x[torch.arange(x.shape[0], device=x.device), index].unsqueeze(1)
            mask = None
            if is_causal:   # [B, 1, 1, N]: keys at or before the pooled position
                mask = (torch.arange(x.shape[1], device=x.device) <= index[:, None])[:, None, None, :]
        own = own + self.attn(self.ln_1(own), kv=self.ln_1(x), attn_mask=mask)
        return own + self.mlp(self.ln_2(own))


class Transformer(nn.Module):
    """A stack of residual blocks operating on batch-first [B, N, D] tensors."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, quick_gelu: bool = False):
        super().__init__()
        self.width, self.layers = width, layers
        self.blocks = nn.ModuleList(ResidualBlock(width, heads, mlp_ratio, quick_gelu) for _ in range(layers))
        self.grad_checkpointing = False

    def _checkpointing(self) -> bool:
        return self.grad_checkpointing and self.training and torch.is_grad_enabled()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        for block in self.blocks:
            if self._checkpointing():
                x = checkpoint(block, x, attn_mask, is_causal, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask, is_causal=is_causal)
        return x

    def forward_pooled(self, x: torch.Tensor, index: torch.Tensor | None = None,
                       is_causal: bool = False) -> torch.Tensor:
        """The last block's output at the pooled token only, [B, D] (see ``ResidualBlock.forward_pooled``).

        Towers that read one token (the class token, the end-of-text token) use this: every block but the
        last still needs all tokens, the last one only needs the pooled token as a query.
        """
        *body, last = self.blocks
        for block in body:
            if self._checkpointing():
                x = checkpoint(block, x, None, is_causal, use_reentrant=False)
            else:
                x = block(x, is_causal=is_causal)
        if self._checkpointing():
            return checkpoint(last.forward_pooled, x, index, is_causal, use_reentrant=False)[:, 0]
        return last.forward_pooled(x, index, is_causal)[:, 0]

    def init_weights(self) -> None:
        """The GPT-2-style init OpenAI used for the text tower (scaled residual projections)."""
        proj_std = (self.width ** -0.5) * ((2 * self.layers) ** -0.5)
        attn_std = self.width ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.blocks:
            for p in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj):
                nn.init.normal_(p.weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.fc1.weight, std=fc_std)
            nn.init.normal_(block.mlp.fc2.weight, std=proj_std)
