"""Checkpoints: reading open_clip/OpenAI, Hugging Face and mmfm weights; saving and exporting.

``load_pretrained`` is the single entry point ``mmfm.api.create_model`` uses: it resolves an
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

from ..models.config import CLIPConfig
from ..models.registry import get_model_config, list_models
from . import hub
from .hf import export_hf, hf_to_mmfm, is_hf_clip_dir, read_hf_config, read_hf_dir
from .io import is_torchscript_archive, load_state_dict_file
from .native import WEIGHTS_FILE as NATIVE_WEIGHTS
from .native import is_native_dir, read_native_dir, save_pretrained
from .openclip import config_from_openclip, infer_config, openclip_to_mmfm, to_openclip_config, to_openclip_state_dict
from .validate import CheckpointError, check_shapes, expected_shapes, load_state_dict_strict

__all__ = ["load_pretrained", "save_pretrained", "export_hf", "to_openclip_state_dict",
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


def _read_openclip_dir(directory: Path, weights: Path | None = None) -> tuple[Any, dict[str, torch.Tensor]]:
    cfg_path = directory / hub.OPENCLIP_CONFIG
    try:
        model_cfg = json.loads(cfg_path.read_text())["model_cfg"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot read open_clip config {cfg_path}: {type(e).__name__}: {e}") from e
    weights = weights or next((directory / w for w in hub.OPENCLIP_WEIGHTS if (directory / w).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{directory}: {hub.OPENCLIP_CONFIG} but no {' or '.join(hub.OPENCLIP_WEIGHTS)}")
    return config_from_openclip(model_cfg, str(cfg_path)), openclip_to_mmfm(load_state_dict_file(weights))


def _read(path: Path) -> tuple[Any | None, dict[str, torch.Tensor], bool | None]:
    """(the checkpoint's own config or None, state dict in mmfm naming, quick_gelu if the format fixes it).

    A weights file inside a checkpoint folder is read with that folder's config. Of bare files only
    OpenAI's TorchScript archives say their activation (QuickGELU: nobody else ships that format).
    """
    if path.is_dir():
        if is_native_dir(path):
            return (*read_native_dir(path), None)
        if (path / hub.OPENCLIP_CONFIG).is_file():
            return (*_read_openclip_dir(path), None)
        if is_hf_clip_dir(path):
            return (*read_hf_dir(path), None)
        raise CheckpointError(f"{path} is not a checkpoint directory: expected config.json with \"format\": \"mmfm\" "
                              f"(mmfm), {hub.OPENCLIP_CONFIG} (open_clip) or an HF CLIPModel config.json")
    folder = path.parent
    if path.name == NATIVE_WEIGHTS and is_native_dir(folder):
        return (*read_native_dir(folder), None)
    if path.name in hub.OPENCLIP_WEIGHTS and (folder / hub.OPENCLIP_CONFIG).is_file():
        return (*_read_openclip_dir(folder, path), None)
    script = is_torchscript_archive(path)
    sd = load_state_dict_file(path)
    naming = _naming(sd)
    if naming == "hf":
        cfg = read_hf_config(folder) if is_hf_clip_dir(folder) else None   # a weights file from an HF folder
        return cfg, hf_to_mmfm(sd), None
    return None, openclip_to_mmfm(sd) if naming == "openclip" else sd, True if script else None


def _registered_matches(inferred: CLIPConfig) -> dict[bool, list[str]]:
    """Registered CLIP names whose config equals ``inferred`` up to the activation, by their quick_gelu."""
    out: dict[bool, list[str]] = {False: [], True: []}
    for name in list_models("clip"):
        cfg = get_model_config(name)
        quick, cfg.quick_gelu = cfg.quick_gelu, inferred.quick_gelu
        if not _config_differences(cfg, inferred):
            out[bool(quick)].append(name)
    return out


def _activation_unknown(sd: dict[str, torch.Tensor], source: str) -> CheckpointError:
    """The refusal for a bare state dict: its shapes fix the architecture, but not GELU vs QuickGELU."""
    inferred = infer_config(sd, quick_gelu=False, source=source)
    found = _registered_matches(inferred)
    why = (f"{source} is a plain state dict: it does not record whether the model uses GELU or QuickGELU, and "
           "a guess changes the outputs")
    if found[False] and found[True]:
        gelu, quick = found[False][0], found[True][0]
        return CheckpointError(f"{why}; name the model: {gelu!r} for GELU weights (most open_clip/LAION checkpoints) "
                               f"or {quick!r} for QuickGELU (OpenAI's), e.g. create_model({gelu!r}, pretrained=...) "
                               f"or mmfm eval --model {gelu}")
    half = [f"{names[0]!r} (quick_gelu={quick})" for quick, names in found.items() if names]
    known = f" (only {half[0]} has its shapes)" if half else ""
    return CheckpointError(f"{why}, and no registered model pair has its architecture{known}; register its config "
                           "(mmfm.models.register_model or register_model_file) with quick_gelu false for GELU weights "
                           "(most open_clip/LAION checkpoints) or true for QuickGELU (OpenAI's) and pass that name")


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
    carry one) or, for OpenAI's TorchScript archives and open_clip registry tags (whose activation
    is known), one is inferred from the tensor shapes by OpenAI's rules (see ``openclip.infer_config``).
    A plain state dict does not say GELU or QuickGELU, so without a name it is refused, with an
    error naming the registered model of each activation. With ``config`` (e.g. from a model
    name), the checkpoint's shapes are checked against it and any other disagreement is warned about;
    the given config wins.
    """
    resolved = hub.resolve(pretrained, model_name, cache_dir)
    source = str(resolved.path) if os.fspath(pretrained) == str(resolved.path) else f"{os.fspath(pretrained)} ({resolved.path})"
    ckpt_cfg, sd, quick_gelu = _read(resolved.path)
    if config is None:
        if ckpt_cfg is None:
            quick_gelu = resolved.quick_gelu if resolved.quick_gelu is not None else quick_gelu
            if quick_gelu is None:
                raise _activation_unknown(sd, source)
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
    known = resolved.quick_gelu if resolved.quick_gelu is not None else quick_gelu   # a tag's, or OpenAI's archive's
    if known is not None and getattr(config, "quick_gelu", known) != known:
        warnings.warn(f"pretrained {os.fspath(pretrained)!r} was trained with quick_gelu={known}, but the "
                      f"model config has quick_gelu={config.quick_gelu}; outputs will differ from the original (use the "
                      f"'-quickgelu' model name or set quick_gelu)", stacklevel=2)
    return config, sd

