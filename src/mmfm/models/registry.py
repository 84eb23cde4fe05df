"""A registry of named model configs (timm-style): every model is built from a name or a config.

Configs are data: each family (CLIP, locked-tower hybrid, Frozen) registers its config class once,
and named configs can come from Python or from a user's JSON/YAML file.
"""
from __future__ import annotations

import copy
import difflib
import json
from pathlib import Path
from typing import Any, Callable

from .config import CLIPConfig, ConfigError, TextConfig, VisionConfig

# family name -> config class (with from_dict / to_dict)
CONFIG_CLASSES: dict[str, type] = {"clip": CLIPConfig}
_MODELS: dict[str, Any] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_config_class(family: str, cls: type) -> None:
    CONFIG_CLASSES[family] = cls


def config_from_dict(d: dict[str, Any]) -> Any:
    family = d.get("family", "clip")
    if family not in CONFIG_CLASSES:
        raise ConfigError(f"model family {family!r} is unknown; known families: {sorted(CONFIG_CLASSES)}")
    return CONFIG_CLASSES[family].from_dict(d)


def register_model(name: str, cfg: Any, description: str = "", overwrite: bool = False) -> None:
    if isinstance(cfg, dict):
        cfg = config_from_dict(cfg)
    if name in _MODELS and not overwrite:
        raise ValueError(f"model config {name!r} is already registered (pass overwrite=True to replace it)")
    _MODELS[name] = cfg
    _DESCRIPTIONS[name] = description


def register_model_file(path: str | Path, name: str | None = None, overwrite: bool = False) -> str:
    """Register a config from a JSON or YAML file: ``{"name": ..., "family": "clip", "embed_dim": ..., ...}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model config file {path} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml
        d = yaml.safe_load(text)
    else:
        d = json.loads(text)
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    d = dict(d)
    name = name or d.pop("name", None) or path.stem
    d.pop("name", None)
    description = d.pop("description", f"from {path.name}")
    try:
        cfg = config_from_dict(d)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    register_model(name, cfg, description, overwrite=overwrite)
    return name


def get_model_config(name: str) -> Any:
    """A fresh copy of the named config (safe to modify)."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.4)
        hint = f"; did you mean {close}?" if close else ""
        raise KeyError(f"unknown model {name!r}{hint} (`mmfm models` lists all {len(_MODELS)} configs)")
    return copy.deepcopy(_MODELS[name])


def list_models(family: str | None = None) -> list[str]:
    return sorted(n for n, c in _MODELS.items() if family is None or getattr(c, "family", "clip") == family)


def describe(name: str) -> str:
    return _DESCRIPTIONS.get(name, "")


# ------------------------------------------------------------------------------------------
# Built-in CLIP configs. Shapes match open_clip's configs of the same names, so parameter counts
# and checkpoints agree (ViT-B-32: 151,277,313 parameters).
def _clip(embed, vision: dict, text: dict | None = None, **kw) -> CLIPConfig:
    return CLIPConfig(embed_dim=embed, vision=VisionConfig(**vision), text=TextConfig(**(text or {})), **kw)


_BASE_TEXT = dict(width=512, heads=8, layers=12)
_BUILTIN: dict[str, tuple[Callable[[], CLIPConfig], str]] = {
    "ViT-B-32": (lambda: _clip(512, dict(width=768, layers=12, patch_size=32), _BASE_TEXT), "ViT-B/32, 224px"),
    "ViT-B-16": (lambda: _clip(512, dict(width=768, layers=12, patch_size=16), _BASE_TEXT), "ViT-B/16, 224px"),
    "ViT-L-14": (lambda: _clip(768, dict(width=1024, layers=24, patch_size=14), dict(width=768, heads=12, layers=12)),
                 "ViT-L/14, 224px"),
    "RN50": (lambda: _clip(1024, dict(kind="modified_resnet", width=64, layers=(3, 4, 6, 3)), _BASE_TEXT),
             "ModifiedResNet-50, 224px"),
    "RN101": (lambda: _clip(512, dict(kind="modified_resnet", width=64, layers=(3, 4, 23, 3)), _BASE_TEXT),
              "ModifiedResNet-101, 224px"),
    # The from-scratch CIFAR-10 setup: 32x32 inputs, a small ModifiedResNet, 6-layer text transformer.
    "RN-cifar10": (lambda: _clip(512, dict(kind="modified_resnet", image_size=32, width=32, layers=(2, 2, 2, 2)),
                                 dict(width=512, heads=8, layers=6)), "CIFAR-10 from scratch: ModifiedResNet (2,2,2,2) w32, 32px"),
    # Small configs for CPU training and tests.
    "ViT-S-64": (lambda: _clip(128, dict(image_size=64, patch_size=8, width=128, layers=4, head_width=32),
                               dict(context_length=24, width=128, heads=4, layers=3)), "small ViT for CPU runs, 64px"),
    "ViT-S-32": (lambda: _clip(128, dict(image_size=32, patch_size=4, width=128, layers=4, head_width=32),
                               dict(context_length=24, width=128, heads=4, layers=3)), "small ViT for CPU runs, 32px"),
    "RN-S-64": (lambda: _clip(128, dict(kind="modified_resnet", image_size=64, width=16, layers=(1, 1, 1, 1)),
                              dict(context_length=24, width=128, heads=4, layers=2)), "small ModifiedResNet for CPU runs, 64px"),
    "RN-S-32": (lambda: _clip(128, dict(kind="modified_resnet", image_size=32, width=16, layers=(1, 1, 1, 1)),
                              dict(context_length=24, width=128, heads=4, layers=2)), "small ModifiedResNet for CPU runs, 32px"),
    "ViT-tiny-test": (lambda: _clip(32, dict(image_size=32, patch_size=8, width=64, layers=2, head_width=16),
                                    dict(context_length=16, width=32, heads=4, layers=2)), "tiny ViT for unit tests"),
    "RN-tiny-test": (lambda: _clip(32, dict(kind="modified_resnet", image_size=32, width=16, layers=(1, 1, 1, 1), head_width=16),
                                   dict(context_length=16, width=32, heads=4, layers=2)), "tiny ModifiedResNet for unit tests"),
}

# Architectures whose shapes alone rebuild them (OpenAI's rules: 64-wide heads, argmax pooling) also get a
# QuickGELU twin: a bare state dict of one of them is refused without a name, and the refusal names both
# ("ViT-B-32" for GELU weights, "ViT-B-32-quickgelu" for OpenAI's); tests/checkpoints keep the list complete.
_QUICKGELU_TWINS = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50", "RN101", "RN-cifar10")

for _name, (_make, _desc) in _BUILTIN.items():
    register_model(_name, _make(), _desc)
    if _name in _QUICKGELU_TWINS:
        _cfg = _make()
        _cfg.quick_gelu = True   # what OpenAI's released weights need
        register_model(f"{_name}-quickgelu", _cfg, _desc + ", QuickGELU (OpenAI's activation)")
