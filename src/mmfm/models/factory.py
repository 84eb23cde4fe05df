"""The model builders: config class -> model. ``mmfm.api.create_model`` (the door above models and checkpoints)
builds through here; each family registers its builder, so this module knows no checkpoint format."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .clip import CLIP
from .config import CLIPConfig

# config class -> model builder; other families (hybrid, frozen) register here.
MODEL_BUILDERS: dict[type, Callable[[Any], nn.Module]] = {CLIPConfig: CLIP}


def register_builder(config_cls: type, builder: Callable[[Any], nn.Module]) -> None:
    MODEL_BUILDERS[config_cls] = builder


def build_model(cfg: Any, **options: Any) -> nn.Module:
    """The model ``cfg`` describes; ``options`` go to its builder (e.g. a hybrid's ``text_pretrained_loader``)."""
    try:
        builder = MODEL_BUILDERS[type(cfg)]
    except KeyError:
        raise TypeError(f"no model builder registered for config type {type(cfg).__name__}") from None
    return builder(cfg, **options)
