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
hit them.

Also here, :func:`meta_copy`: what reports on a model (FLOPs, counts with adapters) works on a
structural copy, so nothing that reports on a model changes it.
"""
from __future__ import annotations

import copy
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


class _Source:
    """What one source tensor looked like: the tensor object (weakly), its address, version, dtype, device,
    shape and a value sample. With ``hold`` the storage is kept too, so its address cannot be reused."""

    __slots__ = ("ref", "storage", "ptr", "version", "dtype", "device", "shape", "sample")

    def __init__(self, t: torch.Tensor, hold: bool):
        self.ref, self.storage = weakref.ref(t), (t.untyped_storage() if hold else None)
        self.ptr, self.version = t.data_ptr(), t._version
        self.dtype, self.device, self.shape = t.dtype, t.device, t.shape
        # Off the CPU a value check would synchronise with the host: there the counter has to do.
        self.sample = _sample(t).clone() if t.device.type == "cpu" else None

    def matches(self, t: torch.Tensor) -> bool:
        return (self.ref() is t and t.data_ptr() == self.ptr and t._version == self.version and t.dtype == self.dtype
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
