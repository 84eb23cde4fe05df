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


def _check_int(obj: Any, where: str, *names: str, minimum: int = 1) -> None:
    # Configs come from untrusted files too: a string, float or zero size must be this error, not a
    # ZeroDivisionError or TypeError deep inside a layer (bool is an int in Python, but never a size).
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{where}.{name}: {value!r} is not an integer >= {minimum}")


def _check_number(obj: Any, where: str, name: str, positive: bool = False, optional: bool = False) -> None:
    value = getattr(obj, name)
    if optional and value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        raise ConfigError(f"{where}.{name}: {value!r} is not a {'positive ' if positive else ''}finite number")


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
        _check_int(self, "vision", "image_size", "width", "patch_size", "head_width")
        _check_number(self, "vision", "mlp_ratio", positive=True)
        resnet = self.kind == "modified_resnet"
        if resnet:
            if not isinstance(self.layers, tuple) or len(self.layers) != 4 or \
                    any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.layers):
                raise ConfigError(f"vision.layers: a ModifiedResNet needs 4 stage depths (integers >= 1), got {self.layers!r}")
            if self.image_size % 32:
                raise ConfigError(f"vision.image_size: {self.image_size} is not a multiple of 32 (a ModifiedResNet "
                                  "downsamples 32x)")
            if self.width % 2:
                raise ConfigError(f"vision.width: {self.width} is odd (a ModifiedResNet's stem is width // 2 wide)")
        else:
            _check_int(self, "vision", "layers")
            if self.image_size % self.patch_size:
                raise ConfigError(f"vision: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.feature_dim % self.head_width:
            raise ConfigError(f"vision: attention width {self.feature_dim} is not a multiple of head_width {self.head_width}")

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
        _check_int(self, "text", "context_length", "vocab_size", "width", "heads", "layers")
        _check_int(self, "text", "eot_token_id", minimum=0)
        _check_number(self, "text", "mlp_ratio", positive=True)
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

    def __post_init__(self):
        _check_int(self, "model", "embed_dim")
        if not isinstance(self.quick_gelu, bool):
            raise ConfigError(f"model.quick_gelu: {self.quick_gelu!r} is not true or false")
        _check_number(self, "model", "init_logit_scale")
        _check_number(self, "model", "init_logit_bias", optional=True)
        if not isinstance(self.vision, VisionConfig) or not isinstance(self.text, TextConfig):
            raise ConfigError("model: vision and text must be a VisionConfig and a TextConfig")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CLIPConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"model: expected a mapping, got {type(d).__name__}")
        d = dict(d)
        d.pop("family", None)
        vision = _from_dict(VisionConfig, d.pop("vision", {}), "vision")
        text = _from_dict(TextConfig, d.pop("text", {}), "text")
        return _from_dict(cls, {**d, "vision": vision, "text": text}, "model")
