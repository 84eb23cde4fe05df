"""Model configurations: plain dataclasses, serialisable to/from JSON/YAML.

A model is a config plus weights: the config alone fixes every shape, so parameter counts, memory
estimates and checkpoint validation need no weights at all.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A model config has an unknown key or an invalid value."""


def _from_dict(cls, d: dict[str, Any], where: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed keys: {sorted(names)}")
    return cls(**d)


@dataclass
class VisionConfig:
    """Image tower. ``kind='vit'`` is a Vision Transformer, ``'modified_resnet'`` OpenAI's ResNet."""

    kind: Literal["vit", "modified_resnet"] = "vit"
    image_size: int = 224
    width: int = 768                      # ViT: token width; ResNet: stem width (features = width * 32)
    layers: int | tuple[int, ...] = 12    # ViT: depth; ResNet: blocks per stage (4 stages)
    patch_size: int = 32                  # ViT only
    head_width: int = 64                  # heads = width // head_width (ResNet pool: width*32 // head_width)
    mlp_ratio: float = 4.0

    def __post_init__(self):
        if self.kind not in ("vit", "modified_resnet"):
            raise ConfigError(f"vision.kind: {self.kind!r} is not one of ['vit', 'modified_resnet']")
        if isinstance(self.layers, list):
            self.layers = tuple(self.layers)
        if self.kind == "modified_resnet":
            if isinstance(self.layers, int) or len(self.layers) != 4:
                raise ConfigError(f"vision.layers: a ModifiedResNet needs 4 stage depths, got {self.layers!r}")
        elif not isinstance(self.layers, int):
            raise ConfigError(f"vision.layers: a ViT needs an int depth, got {self.layers!r}")
        if self.kind == "vit" and self.image_size % self.patch_size:
            raise ConfigError(f"vision: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def heads(self) -> int:
        return (self.width * 32 if self.kind == "modified_resnet" else self.width) // self.head_width

    @property
    def feature_dim(self) -> int:
        """Width of the features before the projection (what a linear probe sees)."""
        return self.width * 32 if self.kind == "modified_resnet" else self.width


@dataclass
class TextConfig:
    """Causal text transformer; the feature is taken at the end-of-text token."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    pool: Literal["argmax", "eot"] = "argmax"   # argmax of ids (OpenAI/open_clip) or first eot_token_id (HF)
    eot_token_id: int = 49407

    def __post_init__(self):
        if self.pool not in ("argmax", "eot"):
            raise ConfigError(f"text.pool: {self.pool!r} is not one of ['argmax', 'eot']")
        if self.width % self.heads:
            raise ConfigError(f"text: width {self.width} is not divisible by heads {self.heads}")


@dataclass
class CLIPConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    quick_gelu: bool = False
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None    # set (e.g. -10) for SigLIP-style training
    family: Literal["clip"] = "clip"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CLIPConfig":
        d = dict(d)
        d.pop("family", None)
        vision = _from_dict(VisionConfig, d.pop("vision", {}), "vision")
        text = _from_dict(TextConfig, d.pop("text", {}), "text")
        cfg = _from_dict(cls, d, "model")
        cfg.vision, cfg.text = vision, text
        return cfg
