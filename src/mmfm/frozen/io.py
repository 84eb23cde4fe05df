"""Saving and loading a trained Frozen model: a directory in mmfm's own checkpoint format.

    DIR/config.json         {"format": "mmfm", "family": "frozen", "config": {..., "pretrained_lm": PATH, "tokenizer": PATH}}
    DIR/model.safetensors   the vision encoder and the linear map (plus the LM only if it has no pretrained_lm)
    DIR/tokenizer/          only when a tokenizer was given and the config names none

The frozen LM is not copied: the config records where it is (a hub identifier or a local directory,
stored as an absolute path so the model loads from any working directory). ``mmfm.from_pretrained(DIR)``
reads it too; ``load_frozen`` also returns the tokenizer and can re-point a moved LM.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..api import create_model
from ..models.frozen import FrozenConfig, FrozenModel
from .text import FrozenTokenizer


def _absolute_if_local(path: str | None) -> str | None:
    if path is None:
        return None
    local = Path(path).expanduser()
    return str(local.resolve()) if local.exists() else path


def save_frozen(model: FrozenModel, directory: str | Path, tokenizer: FrozenTokenizer | None = None) -> Path:
    from ..checkpoints import save_pretrained
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    updates = {"pretrained_lm": _absolute_if_local(cfg.pretrained_lm), "tokenizer": _absolute_if_local(cfg.tokenizer)}
    if tokenizer is not None and cfg.tokenizer_path is None:
        tokenizer.tokenizer.save_pretrained(str(directory / "tokenizer"))
        updates["tokenizer"] = str((directory / "tokenizer").resolve())
    model.config = dataclasses.replace(cfg, **updates)
    return save_pretrained(model, directory)


def load_frozen(directory: str | Path, device: str | torch.device | None = None, pretrained_lm: str | None = None,
                tokenizer: str | None = None) -> tuple[FrozenModel, FrozenTokenizer | None]:
    """(model in eval mode, its tokenizer or None). ``pretrained_lm`` / ``tokenizer`` override the saved paths."""
    from ..checkpoints.native import is_native_dir, read_native_dir
    from ..checkpoints.validate import CheckpointError, load_state_dict_strict
    directory = Path(directory)
    if not is_native_dir(directory):
        raise FileNotFoundError(f"{directory} is not a saved model directory (config.json with \"format\": \"mmfm\")")
    cfg, state_dict = read_native_dir(directory)
    if not isinstance(cfg, FrozenConfig):
        raise CheckpointError(f"{directory} holds a {getattr(cfg, 'family', type(cfg).__name__)!r} model, not Frozen")
    if pretrained_lm is not None or tokenizer is not None:
        cfg = dataclasses.replace(cfg, pretrained_lm=pretrained_lm or cfg.pretrained_lm,
                                  tokenizer=tokenizer or cfg.tokenizer)
    model = create_model(cfg)   # the door reads cfg.pretrained_lm
    load_state_dict_strict(model, state_dict, source=str(directory))
    if device is not None:
        model = model.to(device)
    tok = FrozenTokenizer.from_pretrained(cfg.tokenizer_path, cfg.context_length) if cfg.tokenizer_path else None
    return model.eval(), tok
