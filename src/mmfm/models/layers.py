"""Building blocks shared by every tower: attention, MLP, pre-LN residual block, transformer.

Why separate q/k/v/out projections instead of one fused ``in_proj`` like ``nn.MultiheadAttention``:
LoRA (through PEFT) targets modules *by name*, so each projection has to be its own ``nn.Linear``.
On CPU at inference, when nothing has hooked into the projections, the three matmuls are fused into one
so we pay nothing for the flexibility; in fp32 and bf16 the inference matmuls also run on oneDNN-packed
weights with GELU fused in. Those kernels, and when their cached weight copies are stale, are ``kernels.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .kernels import PackedCache, linear, qkv


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

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The attention output; ``residual + output`` when ``residual`` is given (added inside the output
        projection's matmul at inference, see ``kernels.linear``)."""
        c = self._cache
        if kv is None:   # self-attention: at inference one matmul for q, k and v (see kernels.qkv)
            q, k, v = qkv(self, (self.q_proj, self.k_proj, self.v_proj), x, c)
        else:
            q, k, v = linear(self.q_proj, x, c, "q"), linear(self.k_proj, kv, c, "k"), linear(self.v_proj, kv, c, "v")
        q, k, v = self._split(q), self._split(k), self._split(v)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal and attn_mask is None)
        b, h, n, d = o.shape
        return linear(self.out_proj, o.transpose(1, 2).reshape(b, n, h * d), c, "out", residual=residual)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, quick_gelu: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = activation(quick_gelu)
        self.fc2 = nn.Linear(hidden, dim)
        self._cache = PackedCache()   # packed weights for the inference path

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The MLP's output; ``residual + output`` when ``residual`` is given (added inside fc2's matmul)."""
        hidden = linear(self.fc1, x, self._cache, "fc1", act=self.act)
        return linear(self.fc2, hidden, self._cache, "fc2", residual=residual)


class ResidualBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, quick_gelu: bool = False):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio), quick_gelu)

    @staticmethod
    def _residual(sub: nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``x + sub(*args, **kwargs)``, the add run inside ``sub``'s last matmul at inference, unless a forward
        hook on ``sub`` expects its own output (then the add is done here, as written)."""
        if sub._forward_hooks:
            return x + sub(*args, **kwargs)
        return sub(*args, residual=x, **kwargs)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = self._residual(self.attn, x, self.ln_1(x), attn_mask=attn_mask, is_causal=is_causal)
        return self._residual(self.mlp, x, self.ln_2(x))

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
        own = self._residual(self.attn, own, self.ln_1(own), kv=self.ln_1(x), attn_mask=mask)
        return self._residual(self.mlp, own, self.ln_2(own))


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
