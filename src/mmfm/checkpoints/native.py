"""mmfm's own checkpoint format: a directory with ``config.json`` and ``model.safetensors``.

``config.json`` is ``{"format": "mmfm", "mmfm_version": ..., "family": ..., "config": cfg.to_dict()}``:
the config fixes every shape, so loading needs no inference and works for every model family
registered with ``mmfm.models.registry``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.precision import refuse_int8
from .io import atomic_save_safetensors, atomic_write_json, load_state_dict_file
from .validate import CheckpointError

FORMAT = "mmfm"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("mmfm")
    except Exception:
        try:
            from mmfm import __version__  # type: ignore[attr-defined]
            return str(__version__)
        except Exception:
            return "0+unknown"


def is_native_dir(directory: Path) -> bool:
    try:
        d = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and d.get("format") == FORMAT


def save_pretrained(model: nn.Module, directory: str | Path) -> Path:
    """Save ``model`` (which must carry its config as ``model.config``) in mmfm's format.

    Each file is written to a temporary name in ``directory``, fsynced and renamed, weights first
    and config.json last, so an interrupted save never leaves a config pointing at partial weights.
    """
    refuse_int8(model, "save")
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        raise CheckpointError(f"save_pretrained needs a model with a `config` (an mmfm config), got {type(model).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(directory / WEIGHTS_FILE, model.state_dict(), metadata={"format": "pt", "mmfm_format": FORMAT})
    atomic_write_json(directory / CONFIG_FILE, {
        "format": FORMAT,
        "mmfm_version": _version(),
        "family": getattr(cfg, "family", "clip"),
        "dtype": _dtype_name(model),
        "config": cfg.to_dict(),
    })
    return directory


def _dtype_name(model: nn.Module) -> str:
    """The floating dtype all parameters share, so ``from_pretrained`` restores fp16/bf16 models exactly."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return str(dtypes.pop()).removeprefix("torch.") if len(dtypes) == 1 else "float32"


_PRECISION_OF = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def saved_precision(directory: Path) -> str:
    """The ``create_model`` precision matching a saved model's dtype (fp32 when unknown)."""
    try:
        return _PRECISION_OF.get(json.loads((directory / CONFIG_FILE).read_text()).get("dtype", "float32"), "fp32")
    except (OSError, ValueError, AttributeError):
        return "fp32"


def read_native_dir(directory: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """(config, state dict) of an mmfm checkpoint directory."""
    from ..models.config import ConfigError
    from ..models.registry import config_from_dict
    path = directory / CONFIG_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read mmfm config {path}: {type(e).__name__}: {e}") from e
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path}: \"config\" is a {type(meta.get('config')).__name__}, expected a mapping of settings")
    try:
        cfg = config_from_dict({**meta["config"], "family": meta.get("family", "clip")})
    except (ConfigError, TypeError) as e:   # TypeError: a family's from_dict meeting a wrongly typed value
        raise CheckpointError(f"invalid mmfm config {path}: {e}") from e
    return cfg, load_state_dict_file(directory / WEIGHTS_FILE)

