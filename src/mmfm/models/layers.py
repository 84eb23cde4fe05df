"""Building blocks shared by every tower: attention, MLP, pre-LN residual block, transformer.

Why separate q/k/v/out projections instead of one fused ``in_proj`` like ``nn.MultiheadAttention``:
LoRA (through PEFT) targets modules *by name*, so each projection has to be its own ``nn.Linear``.
At inference, when nothing has hooked into the projections, the three matmuls are fused into one
(see ``Attention._qkv``) so we pay nothing for the flexibility.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


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
        self._fused: tuple | None = None  # (key, weight, bias) cache for the fused inference path

    def _fused_qkv_params(self):
        ps = (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight)
        bs = (self.q_proj.bias, self.k_proj.bias, self.v_proj.bias)
        # The cache key changes whenever a weight is modified in place (optimizer step, load_state_dict)
        # or replaced, so a stale fused copy is never used.
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in ps + tuple(b for b in bs if b is not None))
        if self._fused is None or self._fused[0] != key:
            w = torch.cat(ps, 0)
            b = torch.cat(bs, 0) if bs[0] is not None else None
            self._fused = (key, w, b)
        return self._fused[1], self._fused[2]

    def _qkv(self, x: torch.Tensor):
        fuse = (not torch.is_grad_enabled() or not any(p.requires_grad for p in (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))) \
            and _is_plain_linear(self.q_proj) and _is_plain_linear(self.k_proj) and _is_plain_linear(self.v_proj) \
            and not torch.jit.is_scripting() and not torch.compiler.is_compiling()
        if fuse:
            w, b = self._fused_qkv_params()
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
            q, k, v = self.q_proj(x), self.k_proj(kv), self.v_proj(kv)
        q, k, v = self._split(q), self._split(k), self._split(v)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal and attn_mask is None)
        b, h, n, d = o.shape
        return self.out_proj(o.transpose(1, 2).reshape(b, n, h * d))

    def __getstate__(self):  # never pickle/deepcopy the derived fused weights
        state = self.__dict__.copy()
        state["_fused"] = None
        return state


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, quick_gelu: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = activation(quick_gelu)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


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


class Transformer(nn.Module):
    """A stack of residual blocks operating on batch-first [B, N, D] tensors."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, quick_gelu: bool = False):
        super().__init__()
        self.width, self.layers = width, layers
        self.blocks = nn.ModuleList(ResidualBlock(width, heads, mlp_ratio, quick_gelu) for _ in range(layers))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, attn_mask, is_causal, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask, is_causal=is_causal)
        return x

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
