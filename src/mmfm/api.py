"""The one door: ``create_model`` and ``from_pretrained`` build every model, from a name, a config or a checkpoint.

It sits above ``models`` (configs, towers, the builders) and ``checkpoints`` (config + state dict in and out),
as open_clip's factory sits on model, pretrained and convert, so neither of those imports the other back.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoints import load_pretrained
from .checkpoints.language_model import build_language_model
from .checkpoints.native import is_native_dir, saved_precision
from .checkpoints.validate import (check_claimed_depth, check_shapes, check_state_dict, expected_shapes,
                                   load_state_dict_strict)
from .models import factory as builders   # builders.build_model, looked up per call so tests can spy on it
from .models.precision import cast_bf16, check_bf16_cpu, quantize_int8
from .models.registry import get_model_config

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
              "amp": torch.float32, "amp_bf16": torch.float32, "int8": torch.float32}


def create_model(name: str | Any | None = None, pretrained: str | None = None, device: str | torch.device | None = None,
                 precision: str = "fp32", cache_dir: str | None = None, strict: bool = True) -> nn.Module:
    """Build a model.

    name: a registered config name (``mmfm.list_models()``), a config object, or None to take the
        architecture from ``pretrained`` (its config, or its shapes when the format fixes the activation:
        a plain state dict needs a name, e.g. ``ViT-B-32`` for GELU or ``ViT-B-32-quickgelu`` for OpenAI's).
    pretrained: a local checkpoint (our directory, an open_clip/OpenAI ``.pt``/``.bin``/``.safetensors``,
        an OpenAI TorchScript archive, an HF ``CLIPModel`` directory) or an identifier such as
        ``openai``, ``laion2b_s34b_b79k`` (with a name) or ``hf-hub:openai/clip-vit-base-patch32``,
        downloaded when online. Offline, identifiers fail at once; never silently random weights.
    precision: ``fp32`` | ``fp16`` | ``bf16`` (weights cast; inputs and embeddings stay float32 at the
        towers' boundary) | ``amp`` | ``amp_bf16`` (weights fp32) | ``int8`` (CPU inference: the Linear layers
        dynamically quantized, see ``mmfm.models.precision``).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {sorted(PRECISIONS)}")
    cfg = get_model_config(name) if isinstance(name, str) else name
    if pretrained is not None:
        model = _load(name, cfg, pretrained, cache_dir, strict)
    else:
        if cfg is None:
            raise ValueError("create_model needs a model name/config, a pretrained checkpoint, or both")
        model = builders.build_model(cfg, **_build_options(cfg))
    if precision == "bf16":
        model = cast_bf16(model)
    elif precision == "fp16":
        model = model.to(PRECISIONS[precision])
    if device is not None:
        model = model.to(device)
    if precision == "bf16" and _on_cpu(model):
        check_bf16_cpu()
    if precision == "int8":
        model = quantize_int8(model)
    return model


def _load(name: str | Any | None, cfg: Any, pretrained: str, cache_dir: str | None, strict: bool) -> nn.Module:
    cfg, state_dict = load_pretrained(pretrained, model_name=name if isinstance(name, str) else None,
                                      config=cfg, cache_dir=cache_dir)
    # The config may come from an untrusted file: build it on the meta device and check it against the
    # weights first, so a small folder claiming a huge model is refused before anything real is allocated.
    source = str(pretrained)
    if strict:
        check_claimed_depth(cfg, state_dict, source)
        check_state_dict(expected_shapes(cfg), state_dict, source)
    else:   # missing/unexpected keys are logged once, by load_state_dict_strict below
        check_shapes(expected_shapes(cfg), state_dict, source)
    model = builders.build_model(cfg, **_build_options(cfg))
    load_state_dict_strict(model, state_dict, source=source, strict=strict)
    return model


def _build_options(cfg: Any) -> dict[str, Any]:
    # Weights a config names by path or identifier are read here, by the door, never by models: a hybrid's
    # text_pretrained (a CLIP checkpoint) and Frozen's pretrained_lm (a causal LM).
    options: dict[str, Any] = {}
    if getattr(cfg, "text_pretrained", None) is not None:
        options["text_pretrained_loader"] = lambda path: create_model(None, pretrained=str(path))
    if getattr(cfg, "pretrained_lm", None) is not None:
        options["lm_loader"] = build_language_model
    return options


def hybrid_from_clip(clip: nn.Module | str | os.PathLike, *args: Any, **kwargs: Any) -> nn.Module:
    """``mmfm.models.hybrid.hybrid_from_clip`` from a CLIP model or a checkpoint path (read here)."""
    from .models import hybrid
    if isinstance(clip, (str, os.PathLike)):
        return hybrid.hybrid_from_clip(create_model(None, pretrained=str(clip)), *args, source=str(clip), **kwargs)
    return hybrid.hybrid_from_clip(clip, *args, **kwargs)


def from_pretrained(directory: str | Path, device: str | torch.device | None = None, precision: str | None = None,
                    strict: bool = True) -> nn.Module:
    """Load a model saved by ``save_pretrained`` (any format ``create_model`` reads works too).

    ``precision=None`` restores the dtype the model was saved in (fp32, fp16 or bf16).
    """
    if precision is None:
        precision = saved_precision(Path(directory)) if is_native_dir(Path(directory)) else "fp32"
    return create_model(None, pretrained=str(directory), device=device, precision=precision, strict=strict)


def _on_cpu(model: nn.Module) -> bool:
    return all(p.device.type == "cpu" for p in model.parameters())
