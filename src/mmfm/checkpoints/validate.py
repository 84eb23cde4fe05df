"""Checking a state dict against a model *before* any weight is copied.

``nn.Module.load_state_dict`` copies tensor by tensor and raises on the first shape mismatch, which
can leave a model half old, half new. Here every key and shape is compared first, all problems are
reported together (a few of each kind, with counts), and only a state dict that passes is loaded.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch import nn

logger = logging.getLogger("mmfm.checkpoints")

# BatchNorm's step counter only matters for momentum=None; old checkpoints (and some exporters) omit it,
# so its absence is never an error.
OPTIONAL_SUFFIXES = ("num_batches_tracked",)
_SHOW = 5  # how many keys of each kind an error message lists


class CheckpointError(ValueError):
    """A checkpoint cannot be read, is corrupt, or does not fit the model it is loaded into."""


def _listing(kind: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    more = f", ... and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"  {len(items)} {kind}: {shown}{more}"


def compare_shapes(expected: Mapping[str, torch.Size | tuple[int, ...]], state_dict: Mapping[str, torch.Tensor]
                   ) -> tuple[list[str], list[str], list[str]]:
    """(missing keys, unexpected keys, shape mismatches as readable strings)."""
    missing = [k for k in expected if k not in state_dict and not k.endswith(OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k} (checkpoint {list(state_dict[k].shape)} vs model {list(expected[k])})"
                  for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])]
    return missing, unexpected, mismatched


def check_state_dict(expected: Mapping[str, torch.Size | tuple[int, ...]], state_dict: Mapping[str, torch.Tensor],
                     source: str, strict: bool = True) -> None:
    """Raise ``CheckpointError`` naming ``source`` if the state dict does not fit the expected shapes.

    Shape mismatches are always errors (there is nothing sensible to load); missing and unexpected
    keys are errors only when ``strict``, otherwise they are logged.
    """
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"checkpoint {source}: entry {k!r} is a {type(v).__name__}, not a tensor")
    missing, unexpected, mismatched = compare_shapes(expected, state_dict)
    problems = []
    if mismatched:
        problems.append(_listing("shape mismatch(es)", mismatched))
    if strict and missing:
        problems.append(_listing("missing key(s)", missing))
    if strict and unexpected:
        problems.append(_listing("unexpected key(s)", unexpected))
    if problems:
        raise CheckpointError(f"checkpoint {source} does not match the model; nothing was loaded:\n" + "\n".join(problems))
    if missing or unexpected:
        logger.warning("checkpoint %s: loading non-strictly\n%s", source,
                       "\n".join(p for p in (missing and _listing("missing key(s) (left as initialised)", missing),
                                             unexpected and _listing("unexpected key(s) (ignored)", unexpected)) if p))


def check_shapes(expected: Mapping[str, torch.Size | tuple[int, ...]], state_dict: Mapping[str, torch.Tensor],
                 source: str) -> None:
    """Raise ``CheckpointError`` if any shape differs; missing/unexpected keys alone are left to loading
    (which may be non-strict), but are listed alongside mismatches to help spot a wrong model name."""
    missing, unexpected, mismatched = compare_shapes(expected, state_dict)
    if mismatched:
        problems = [_listing("shape mismatch(es)", mismatched)]
        problems += [_listing("missing key(s)", missing)] if missing else []
        problems += [_listing("unexpected key(s)", unexpected)] if unexpected else []
        raise CheckpointError(f"checkpoint {source} does not match the model config; nothing was loaded:\n"
                              + "\n".join(problems))


def _claimed_blocks(d: Any) -> int:
    """How many blocks a config's ``layers`` settings ask for, in all towers (``layers``: a depth or stage depths)."""
    if isinstance(d, dict):
        return sum(_claimed_blocks(v) if k != "layers" else _depth(v) for k, v in d.items())
    return 0


def _depth(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    return sum(x for x in v if isinstance(x, int) and not isinstance(x, bool)) if isinstance(v, (list, tuple)) else 0


def check_claimed_depth(cfg: Any, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ``CheckpointError`` if the config asks for more blocks than the checkpoint has tensors.

    Every block holds at least one weight, so a strictly loaded checkpoint has at least as many tensors
    as blocks. Checked before ``expected_shapes``: even on the meta device, each block costs tens of KB
    of Python objects, so a config claiming 10**9 layers must not reach the builder.
    """
    blocks = _claimed_blocks(cfg.to_dict()) if hasattr(cfg, "to_dict") else 0
    if blocks > len(state_dict):
        raise CheckpointError(f"checkpoint {source}: its config asks for {blocks:,} layers in all, but the file holds only "
                              f"{len(state_dict):,} tensors; the config does not belong to these weights")


def expected_shapes(cfg: Any) -> dict[str, torch.Size]:
    """The state-dict shapes of the model a config describes, without allocating any weights."""
    from ..models.factory import build_model
    with torch.device("meta"):
        model = build_model(cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "<state dict>",
                           strict: bool = True) -> nn.Module:
    """Validate ``state_dict`` against ``model`` completely, then load it (all or nothing).

    Tensors are copied into the existing parameters, so dtype (e.g. OpenAI's fp16 weights into an
    fp32 model) and device follow the model.
    """
    own = model.state_dict()
    check_state_dict({k: v.shape for k, v in own.items()}, state_dict, source, strict=strict)
    bad_dtype = [k for k, v in state_dict.items() if k in own and own[k].is_floating_point() and not v.is_floating_point()]
    if bad_dtype:
        raise CheckpointError(f"checkpoint {source}: non-floating tensors for floating parameters; nothing was loaded:\n"
                              + _listing("key(s)", bad_dtype))
    usable = {k: v for k, v in state_dict.items() if k in own}
    model.load_state_dict(usable, strict=False)
    return model
