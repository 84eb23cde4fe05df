"""One weights-version mechanism for every cache derived from a model's weights.

Why it exists: mmfm caches things computed from weights (feature fingerprints -> cached evaluation
features and zero-shot classifiers; oneDNN-packed and fused-QKV inference weights). Such a cache is
only safe if it notices every way weights change, and a tensor's ``_version`` alone misses several:
fused optimizer kernels (fused AdamW, the Trainer's) write parameters without bumping it, writes
through ``.data`` (PEFT's merge/unmerge, hand-written EMA) do not bump it, and a new tensor can reuse
a freed tensor's address. So a derived value is stamped (:class:`Stamp`) with

* ``version()``: a process-wide counter advanced by every torch optimizer step (a global post-hook,
  any optimizer, fused or foreach), by ``load_state_dict`` of mmfm models (a post-hook,
  :func:`track_loads`) and by mmfm's own mutators (LoRA inject/load/merge/unmerge/unload, WiSE-FT):
  they call :func:`bump`;
* per source tensor: the tensor object itself (weakly), its address, ``_version``, dtype, device,
  shape and, on CPU, a strided sample of ~64 values (~2 us: catches writes that nothing above sees);
  caches that hold derived tensors also hold the sources' storages, so an address cannot be reused;

and the cache is used only while the stamp still matches. That check is cheap enough for the
inference hot path (``PackedCache`` runs it per projection per forward).

What the stamp does not cover is the architecture: two models with equal weights but different
configs (GELU vs QuickGELU, a LoRA scale) compute different features. :func:`architecture_key` is the
part of every evaluation cache key that names it (the model's config, PEFT's adapter configs and each
module's type and ``extra_repr``); packed weights need no such key, they depend on their sources only.
Disk caches key on a content hash (weights + architecture), never on the stamp, so reloaded weights
hit them: :func:`model_fingerprint` (also ``mmfm.model_fingerprint`` and ``mmfm.eval.model_fingerprint``),
memoised per model object under a stamp.

Also here, :func:`meta_copy`: what reports on a model (FLOPs, counts with adapters) works on a
structural copy, so nothing that reports on a model changes it.
"""
from __future__ import annotations

import copy
import hashlib
import json
import weakref
from typing import Any, Iterable

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

_VERSION = [0]


def version() -> int:
    """The process's weights version: it only ever increases (see the module docstring for what bumps it)."""
    return _VERSION[0]


def bump(*_: Any) -> None:
    """Advance the weights version: every cached value derived from weights is re-checked from scratch.

    mmfm calls it after any write to weights it makes (accepts and ignores hook arguments).
    """
    _VERSION[0] += 1


register_optimizer_step_post_hook(bump)


def _loaded(module: nn.Module, incompatible_keys) -> None:
    bump()


def track_loads(module: nn.Module) -> None:
    """Bump the weights version whenever ``module.load_state_dict`` runs (mmfm models call this in __init__).

    The hook is a module-level function, so it survives ``deepcopy`` and pickling.
    """
    module.register_load_state_dict_post_hook(_loaded)


def _sample(t: torch.Tensor) -> torch.Tensor:
    """About 64 evenly spaced values of ``t`` (a view; ~2 us, so checking a stamp stays cheap)."""
    t = t.detach()
    n = t.numel()
    step = max(1, n // 64)
    if t.is_contiguous():
        return t.as_strided(((n + step - 1) // step,), (step,))
    return t.reshape(-1)[::step]


def _version_of(t: torch.Tensor) -> int | None:
    """The tensor's in-place write counter; None for inference tensors (made under ``torch.inference_mode``),
    which have none: they cannot be modified outside inference mode, and the value sample still guards them."""
    return None if t.is_inference() else t._version


class _Source:
    """What one source tensor looked like: the tensor object (weakly), its address, version, dtype, device,
    shape and a value sample. With ``hold`` the storage is kept too, so its address cannot be reused."""

    __slots__ = ("ref", "storage", "ptr", "version", "dtype", "device", "shape", "sample")

    def __init__(self, t: torch.Tensor, hold: bool):
        self.ref, self.storage = weakref.ref(t), (t.untyped_storage() if hold else None)
        self.ptr, self.version = t.data_ptr(), _version_of(t)
        self.dtype, self.device, self.shape = t.dtype, t.device, t.shape
        # Off the CPU a value check would synchronise with the host: there the counter has to do.
        self.sample = _sample(t).clone() if t.device.type == "cpu" else None

    def matches(self, t: torch.Tensor) -> bool:
        return (self.ref() is t and t.data_ptr() == self.ptr and _version_of(t) == self.version and t.dtype == self.dtype
                and t.device == self.device and t.shape == self.shape
                and (self.sample is None or torch.equal(_sample(t), self.sample)))


class Stamp:
    """The weights version and the state of the source tensors when a derived value was computed.

    hold: keep the sources' storages alive (their addresses cannot be reused while the stamp lives). Right
    for a cache that holds derived tensors anyway (packed weights); a memo of a whole model's hash uses
    ``hold=False``, or after ``model.cpu()`` it would keep the old GPU weights allocated.
    """

    __slots__ = ("version", "sources")

    def __init__(self, tensors: Iterable[torch.Tensor], hold: bool = True):
        self.version = _VERSION[0]
        self.sources = [_Source(t, hold) for t in tensors]

    def matches(self, tensors: Iterable[torch.Tensor]) -> bool:
        """Whether values derived then are still valid for ``tensors`` now."""
        if self.version != _VERSION[0]:
            return False
        tensors = list(tensors)
        return len(tensors) == len(self.sources) and all(s.matches(t) for s, t in zip(self.sources, tensors))


# ---------------------------------------------------------------------------------------------
# Architecture
def _tuner_state(m: nn.Module) -> dict[str, Any] | None:
    """What a PEFT tuner layer does beyond its weights (merged? which adapters, at which scale?)."""
    if not hasattr(m, "merged_adapters") or not hasattr(m, "scaling"):
        return None
    return {"merged": list(m.merged_adapters), "active": m.active_adapters,
            "disabled": bool(getattr(m, "disable_adapters", False)), "scaling": dict(m.scaling)}


def architecture_key(model: nn.Module) -> str:
    """Everything besides the weights that fixes what ``model`` computes, as one string.

    The model's config (mmfm models: ``config.to_dict()``), PEFT's adapter configs, and every module's
    name, type, ``extra_repr`` (activation variants, eps, strides...) and PEFT layer state. ~1 ms on
    ViT-B-32.
    """
    cfg = getattr(model, "config", None)
    parts: list[Any] = [cfg.to_dict() if hasattr(cfg, "to_dict") else repr(cfg) if cfg is not None else None]
    peft = getattr(model, "peft_config", None)
    if isinstance(peft, dict):
        parts.append({k: (v.to_dict() if hasattr(v, "to_dict") else repr(v)) for k, v in sorted(peft.items())})
    for name, m in model.named_modules():
        parts.append([name, f"{type(m).__module__}.{type(m).__qualname__}", m.extra_repr(), _tuner_state(m)])
    return json.dumps(parts, sort_keys=True, default=_stable)


def _stable(o: Any) -> Any:
    """JSON for what json cannot write, the same in every process (a set's order depends on the hash seed)."""
    return sorted(map(str, o)) if isinstance(o, (set, frozenset)) else str(o)


# ---------------------------------------------------------------------------------------------
# Fingerprint: a content hash of weights + architecture, for caches that outlive the model object
def state_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``model.state_dict(keep_vars=True)`` as plain (name, tensor) pairs, for hashing weights.

    A dynamically quantized Linear keeps its weights in a packed object whose state-dict entries are a dtype
    and a (quantized weight, bias) tuple, not tensors: they become the weight's int8 values, its scales and
    zero points and the bias, so caches keyed on the weights see them (the dtype is in the module's repr).
    """
    out: list[tuple[str, torch.Tensor]] = []

    def add(name: str, value) -> None:
        if isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                add(f"{name}.{i}", v)
        elif isinstance(value, torch.Tensor) and value.is_quantized:
            if value.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                scales, zeros = value.q_per_channel_scales(), value.q_per_channel_zero_points()
            else:
                scales, zeros = torch.tensor([value.q_scale()]), torch.tensor([value.q_zero_point()])
            out.extend([(f"{name}.int", value.int_repr()), (f"{name}.scale", scales), (f"{name}.zero", zeros)])
        elif isinstance(value, torch.Tensor):
            out.append((name, value))

    for name, value in model.state_dict(keep_vars=True).items():
        add(name, value)
    return out


# Memo per model object (weak: it dies with the model, so a new model at a reused id never hits it).
_FP_MEMO: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def model_fingerprint(model: nn.Module) -> str:
    """A hash of the model's architecture and of every parameter and buffer (names, dtypes, shapes, values).

    Two models with equal weights *and* equal architecture (config, module types and settings, LoRA
    scales: :func:`architecture_key`) get equal fingerprints whatever their object identity,
    so reloaded weights hit a cache; a GELU and a QuickGELU model with equal weights do not share one.
    The hash is memoised per object and recomputed whenever mmfm's weights-version mechanism says a
    tensor may have changed (any optimizer step, fused or not; ``load_state_dict``; LoRA and WiSE-FT
    mutations; a tensor replaced or modified in place), so a model being trained never reuses a stale one.
    """
    arch = architecture_key(model)
    named = state_tensors(model)   # int8 models' packed weights as tensors too
    names, tensors = [n for n, _ in named], [t for _, t in named]
    hit = _FP_MEMO.get(model)
    if hit is not None and hit[0] == arch and hit[1] == names and hit[2].matches(tensors):
        return hit[3]
    # Taken before hashing (a write during the hash invalidates it); not holding the storages: the memo must
    # not keep weights alive (model.cpu() would leave the old GPU copy allocated).
    stamp = Stamp(tensors, hold=False)
    h = hashlib.blake2b(digest_size=16)
    h.update(arch.encode())
    for name, t in named:
        t = t.detach()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # Byte view works for every dtype (bf16 has no numpy equivalent).
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    fp = h.hexdigest()
    _FP_MEMO[model] = (arch, names, stamp, fp)
    return fp


# ---------------------------------------------------------------------------------------------
# Reporting without modifying
def meta_copy(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` whose tensors all live on the meta device (no memory is copied).

    For anything that reports on a model (FLOPs, parameter counts with adapters added): it may move,
    cast or extend the copy; the caller's model is never touched. deepcopy is handed the meta
    replacements of every parameter and buffer through its memo.
    """
    memo: dict[int, Any] = {}
    for t in [*model.parameters(), *model.buffers()]:
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)
