"""Model configurations: plain dataclasses, serialisable to/from JSON/YAML.

A model is a config plus weights: the config alone fixes every shape, so parameter counts, memory
estimates and checkpoint validation need no weights at all.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal


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


class ModelConfig:
    """The one ``from_dict`` / ``to_dict`` of every model family's config (a dataclass with a ``family`` field).

    ``NESTED`` names the fields that hold a config of their own: their mappings are built (and checked for
    unknown keys) into that class, or into ``NESTED[field](mapping)`` when it is a function that chooses the
    class; ``None`` and non-mappings are passed through for the dataclass to judge.
    """

    NESTED: ClassVar[dict[str, Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        if not isinstance(d, dict):
            raise ConfigError(f"model: expected a mapping, got {type(d).__name__}")
        d = dict(d)
        family = d.pop("family", cls.family)
        if family != cls.family:
            raise ConfigError(f"model: family {family!r} is not {cls.family!r} ({cls.__name__})")
        for name, sub in cls.NESTED.items():
            if isinstance(d.get(name), dict):
                sub_cls = sub if isinstance(sub, type) else sub(d[name])
                d[name] = _from_dict(sub_cls, d[name], name)
        return _from_dict(cls, d, "model")


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
    """An mmfm image tower: ``kind`` names one registered in ``mmfm.models.towers`` (``'vit'``: a Vision
    Transformer, ``'modified_resnet'``: OpenAI's ResNet); the fields mean what that tower says."""

    kind: str = "vit"
    image_size: int = 224
    width: int = 768                      # ViT: token width; ResNet: stem width (features = width * 32)
    layers: int | tuple[int, ...] = 12    # ViT: depth; ResNet: blocks per stage (4 stages)
    patch_size: int = 32                  # ViT only
    head_width: int = 64                  # heads = width // head_width (ResNet pool: width*32 // head_width)
    mlp_ratio: float = 4.0

    def __post_init__(self):
        from .towers import image_tower_class
        tower = image_tower_class(self.kind, where="vision.kind")
        if isinstance(self.layers, list):
            self.layers = tuple(self.layers)
        _check_int(self, "vision", "image_size", "width", "patch_size", "head_width")
        _check_number(self, "vision", "mlp_ratio", positive=True)
        tower.check_config(self)
        if self.feature_dim % self.head_width:
            raise ConfigError(f"vision: attention width {self.feature_dim} is not a multiple of head_width {self.head_width}")

    @property
    def heads(self) -> int:
        return self.feature_dim // self.head_width

    @property
    def feature_dim(self) -> int:
        """Width of the features before the projection (what a linear probe sees)."""
        from .towers import image_tower_class
        return image_tower_class(self.kind).feature_width(self)


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
class CLIPConfig(ModelConfig):
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    quick_gelu: bool = False
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None    # set (e.g. -10) for SigLIP-style training
    family: Literal["clip"] = "clip"

    NESTED: ClassVar[dict[str, Any]] = {"vision": VisionConfig, "text": TextConfig}

    def __post_init__(self):
        _check_int(self, "model", "embed_dim")
        if not isinstance(self.quick_gelu, bool):
            raise ConfigError(f"model.quick_gelu: {self.quick_gelu!r} is not true or false")
        _check_number(self, "model", "init_logit_scale")
        _check_number(self, "model", "init_logit_bias", optional=True)
        if not isinstance(self.vision, VisionConfig) or not isinstance(self.text, TextConfig):
            raise ConfigError("model: vision and text must be a VisionConfig and a TextConfig")
