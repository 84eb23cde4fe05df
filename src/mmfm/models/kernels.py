"""Inference kernels over a layer's weights, and when their cached copies are stale.

When no gradient is needed, fp32 or bf16 on CPU, the projections of ``layers.py`` run as oneDNN matmuls on
weights packed once into oneDNN's blocked layout (what torch.compile's CPU "freezing" does), with GELU fused
into the first MLP matmul and q/k/v as one matmul on their concatenated weights: 1.3-1.5x faster than addmm
on ViT-B-32 shapes at batch 1 and about 1.1x at batch 64, same results to ~1e-6 (bf16: to bf16 rounding).
A ViT's patchifying convolution runs the same way, as one matmul of the patches (``patch_embed``).
bf16 too: oneDNN's packed bf16 matmul writes its bias and GELU in the same pass, where addmm copies the bias
into every output first and GELU reads the output again (~14% of a bf16 ViT-B-32's time at batch 64).
A block's residual adds run as the add post-op of out_proj and fc2 where the residual has the matmul's dtype
(fp32; a bf16 model's fp32 residual stream cannot: oneDNN's post-op takes the output's dtype only).

The packed copies are a cache (``PackedCache``) checked on every use by mmfm's one weights-version mechanism
(``mmfm.util.weights``); they double weight memory while a model is used for inference. Weights about to be
stepped by an optimizer get no copies (``about_to_step``). MMFM_PACKED_LINEAR=0 (or
``set_packed_inference(False)``) turns the packed path off.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..util.weights import Stamp

_PACKED = os.environ.get("MMFM_PACKED_LINEAR", "1") != "0"


def set_packed_inference(enabled: bool) -> None:
    """Use (or not) oneDNN-packed weights for fp32/bf16 CPU inference; see the module note."""
    global _PACKED
    _PACKED = bool(enabled)


def _packed_kernels_available() -> bool:
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


_HAVE_PACKED = _packed_kernels_available()
_PACKED_DTYPES = (torch.float32, torch.bfloat16)


def is_plain_linear(m: nn.Module) -> bool:
    # PEFT replaces a projection by a wrapper module; hooks or subclasses change behaviour too.
    return type(m) is nn.Linear and not m._forward_hooks and not m._forward_pre_hooks


def _tracing() -> bool:
    return torch.jit.is_scripting() or torch.compiler.is_compiling()


def use_packed(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    """Whether the oneDNN inference path applies: fp32 or bf16 CPU tensors (weights of the input's dtype)
    and no autograd graph to record."""
    if not (_PACKED and _HAVE_PACKED) or x.device.type != "cpu" or x.dtype not in _PACKED_DTYPES:
        return False
    if any(w.dtype != x.dtype for w in weights) or _tracing():
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


def _linear_add(x: torch.Tensor, residual: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``residual + F.linear(x, weight, bias)`` with ``packed = pack(weight)``: the add is the matmul's post-op."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, packed, bias, "add")


def linear(module: nn.Linear, x: torch.Tensor, cache: PackedCache, name: str, act: nn.Module | None = None,
           residual: torch.Tensor | None = None):
    """``act(module(x))`` (``module(x)`` without ``act``; ``residual + module(x)`` with ``residual``), through the
    packed inference path when it applies; there an exact GELU, or the residual add, runs inside the matmul.

    The fused add reads the residual once in the matmul's output pass instead of a separate add over the
    whole activation: bit-identical in fp32, and one bf16 rounding instead of two in bf16.
    """
    if act is not None and residual is not None:
        raise ValueError("linear: an activation and a residual cannot both be applied")
    if is_plain_linear(module) and use_packed(x, module.weight) and not about_to_step(module, module.weight):
        w = module.weight
        packed = cache.derived(name, lambda: pack(w), w)
        if residual is not None:
            if residual.dtype == x.dtype and residual.shape[:-1] == x.shape[:-1] \
                    and residual.shape[-1] == w.shape[0] and residual.is_contiguous() \
                    and not (torch.is_grad_enabled() and residual.requires_grad):
                return _linear_add(x, residual, packed, module.bias)
            return residual + packed_linear(x, packed, module.bias)
        gelu = type(act) is nn.GELU and act.approximate == "none"
        y = packed_linear(x, packed, module.bias, gelu=gelu)
        return y if gelu or act is None else act(y)
    if residual is not None:
        return residual + module(x)
    if type(act) is nn.GELU and act.approximate == "none" and hasattr(module, "forward_gelu") \
            and not module._forward_hooks and not module._forward_pre_hooks:
        return module.forward_gelu(x)   # a quantized Linear whose kernel applies GELU in its output pass
    y = module(x)
    return y if act is None else act(y)


def _concat(projs) -> tuple[torch.Tensor, torch.Tensor | None]:
    ws, bs = [p.weight for p in projs], [p.bias for p in projs]
    return torch.cat(ws, 0), (torch.cat(bs, 0) if bs[0] is not None else None)


def qkv(owner: nn.Module, projs: tuple[nn.Linear, nn.Linear, nn.Linear], x: torch.Tensor, cache: PackedCache):
    """``tuple(p(x) for p in projs)``; at inference one matmul on the concatenated weights (packed in fp32/bf16).

    ``owner`` is the attention module: in training mode with trainable weights no copy is made.
    """
    weights = [p.weight for p in projs]
    plain = all(is_plain_linear(p) for p in projs) and not _tracing() and not about_to_step(owner, *weights)
    sources = weights + [p.bias for p in projs]
    if plain and use_packed(x, *weights):
        def build():
            w, b = _concat(projs)
            return pack(w), b
        packed, bias = cache.derived("qkv_packed", build, *sources)
        return packed_linear(x, packed, bias).chunk(3, dim=-1)
    if plain and x.device.type == "cpu" and (not torch.is_grad_enabled() or not any(w.requires_grad for w in weights)):
        # Other CPU dtypes: still one matmul instead of three (weights concatenated once, cached). Not on
        # accelerators, where checking the cache's value sample would synchronise with the host.
        w, b = cache.derived("qkv", lambda: _concat(projs), *sources)
        return F.linear(x, w, b).chunk(3, dim=-1)
    return tuple(p(x) for p in projs)


def patch_embed(conv: nn.Conv2d, x: torch.Tensor, cache: PackedCache) -> torch.Tensor:
    """``conv(x).flatten(2).transpose(1, 2)`` for a patchifying convolution (kernel = stride, no padding): the
    patch tokens, [B, patches, channels].

    At inference that convolution is one matmul of the patches (copied out once) with the packed weight:
    oneDNN's convolution with a 32x32 stride-32 kernel ran at about half that speed (ViT-B-32, batch 64).
    """
    k = conv.kernel_size
    b, c, h, w = x.shape
    if (type(conv) is nn.Conv2d and conv.stride == k and conv.padding == (0, 0) and conv.dilation == (1, 1)
            and conv.groups == 1 and h % k[0] == 0 and w % k[1] == 0 and not conv._forward_hooks
            and not conv._forward_pre_hooks and use_packed(x, conv.weight)
            and not about_to_step(conv, conv.weight)):
        gh, gw = h // k[0], w // k[1]
        patches = x.reshape(b, c, gh, k[0], gw, k[1]).permute(0, 2, 4, 1, 3, 5).reshape(b * gh * gw, c * k[0] * k[1])
        weight = conv.weight
        packed = cache.derived("patch", lambda: pack(weight.reshape(weight.shape[0], -1)), weight)
        return packed_linear(patches, packed, conv.bias).view(b, gh * gw, -1)
    return conv(x).flatten(2).transpose(1, 2)
