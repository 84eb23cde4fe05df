"""Checkpoints: reading open_clip/OpenAI, Hugging Face and mmfm weights; saving and exporting.

``load_pretrained`` is the single entry point ``mmfm.models.create_model`` uses: it resolves an
identifier to local files (``hub``), reads them safely (``io``), converts them to mmfm naming
(``openclip``, ``hf``, ``native``), and settles the config: the checkpoint's own, the one inferred
from tensor shapes, or the caller's, whose shapes are then checked against the checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from . import hub
from .hf import config_from_hf, export_hf, hf_to_mmfm, is_hf_clip_dir, read_hf_dir
from .io import load_state_dict_file
from .native import from_pretrained, is_native_dir, read_native_dir, save_pretrained
from .openclip import config_from_openclip, infer_config, openclip_to_mmfm, to_openclip_config, to_openclip_state_dict
from .validate import CheckpointError, check_shapes, expected_shapes, load_state_dict_strict

__all__ = ["load_pretrained", "save_pretrained", "from_pretrained", "export_hf", "to_openclip_state_dict",
           "to_openclip_config", "CheckpointError", "load_state_dict_strict", "load_state_dict_file"]

logger = logging.getLogger("mmfm.checkpoints")

# Keys that only open_clip/OpenAI naming has (ours says "blocks", attnpool.attn.out_proj, text.*).
_OPENCLIP_MARKERS = ("transformer.resblocks.", "visual.transformer.resblocks.", "text.transformer.resblocks.",
                     "visual.attnpool.c_proj.")


def _naming(sd: dict[str, torch.Tensor]) -> str:
    if any(k.startswith(("vision_model.", "text_model.")) for k in sd):
        return "hf"
    if any(k.startswith(_OPENCLIP_MARKERS) for k in sd) or "text_projection" in sd:
        return "openclip"
    return "mmfm"


def _read_openclip_dir(directory: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    cfg_path = directory / hub.OPENCLIP_CONFIG
    try:
        model_cfg = json.loads(cfg_path.read_text())["model_cfg"]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot read open_clip config {cfg_path}: {type(e).__name__}: {e}") from e
    weights = next((directory / w for w in hub.OPENCLIP_WEIGHTS if (directory / w).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{directory}: {hub.OPENCLIP_CONFIG} but no {' or '.join(hub.OPENCLIP_WEIGHTS)}")
    return config_from_openclip(model_cfg, str(cfg_path)), openclip_to_mmfm(load_state_dict_file(weights))


def _read(path: Path) -> tuple[Any | None, dict[str, torch.Tensor]]:
    """(the checkpoint's own config or None, state dict in mmfm naming)."""
    if path.is_dir():
        if is_native_dir(path):
            return read_native_dir(path)
        if (path / hub.OPENCLIP_CONFIG).is_file():
            return _read_openclip_dir(path)
        if is_hf_clip_dir(path):
            return read_hf_dir(path)
        raise CheckpointError(f"{path} is not a checkpoint directory: expected config.json with \"format\": \"mmfm\" "
                              f"(mmfm), {hub.OPENCLIP_CONFIG} (open_clip) or an HF CLIPModel config.json")
    sd = load_state_dict_file(path)
    naming = _naming(sd)
    if naming == "hf":
        sibling = path.parent / "config.json"   # a weights file picked out of an HF directory
        cfg = config_from_hf(json.loads(sibling.read_text()), str(sibling)) if is_hf_clip_dir(path.parent) else None
        return cfg, hf_to_mmfm(sd)
    return None, openclip_to_mmfm(sd) if naming == "openclip" else sd


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: list(d) if isinstance(d, tuple) else d}


# Config fields that cannot change what a loaded model computes.
_INERT_FIELDS = {"init_logit_scale"}


def _config_differences(ours: Any, theirs: Any) -> list[str]:
    a, b = _flat(ours.to_dict()), _flat(theirs.to_dict())
    inert = set(_INERT_FIELDS)
    if a.get("text.pool") == b.get("text.pool") == "argmax":
        inert.add("text.eot_token_id")   # only used by eot pooling
    return [f"{k}: {a.get(k)!r} (given) vs {b.get(k)!r} (checkpoint)"
            for k in sorted(set(a) | set(b)) if k not in inert and a.get(k) != b.get(k)]


def load_pretrained(pretrained: str | os.PathLike, model_name: str | None = None, config: Any | None = None,
                    cache_dir: str | None = None) -> tuple[Any, dict[str, torch.Tensor]]:
    """(config, state dict in mmfm naming) for a local checkpoint or a pretrained identifier.

    Without ``config`` the checkpoint's own config is used (mmfm, HF and open_clip hub directories
    carry one) or, for bare state dicts and TorchScript archives, one is inferred from the tensor
    shapes by OpenAI's rules (see ``openclip.infer_config``). With ``config`` (e.g. from a model
    name), the checkpoint's shapes are checked against it and any other disagreement is warned about;
    the given config wins.
    """
    resolved = hub.resolve(pretrained, model_name, cache_dir)
    source = str(resolved.path) if os.fspath(pretrained) == str(resolved.path) else f"{os.fspath(pretrained)} ({resolved.path})"
    ckpt_cfg, sd = _read(resolved.path)
    if config is None:
        if ckpt_cfg is None:
            quick_gelu = True if resolved.quick_gelu is None else resolved.quick_gelu
            ckpt_cfg = infer_config(sd, quick_gelu=quick_gelu, source=source)
            logger.info("inferred the architecture of %s from its tensor shapes (OpenAI's rules: 64-wide heads, "
                        "argmax text pooling, quick_gelu=%s); pass a model name to override", source, quick_gelu)
        return ckpt_cfg, sd
    check_shapes(expected_shapes(config), sd, source)
    if ckpt_cfg is not None and type(ckpt_cfg) is type(config) and dataclasses.is_dataclass(config):
        diffs = _config_differences(config, ckpt_cfg)
        if diffs:
            warnings.warn(f"the given model config differs from the config stored with {source}; using the given one: "
                          + "; ".join(diffs), stacklevel=2)
    if resolved.quick_gelu is not None and getattr(config, "quick_gelu", resolved.quick_gelu) != resolved.quick_gelu:
        warnings.warn(f"pretrained {os.fspath(pretrained)!r} was trained with quick_gelu={resolved.quick_gelu}, but the "
                      f"model config has quick_gelu={config.quick_gelu}; outputs will differ from the original (use the "
                      f"'-quickgelu' model name or set quick_gelu)", stacklevel=2)
    return config, sd
