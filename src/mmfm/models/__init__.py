"""Model configs, towers and the builders shared by every model family."""
from .clip import CLIP
from .config import CLIPConfig, ConfigError, TextConfig, VisionConfig
from .factory import build_model, register_builder
from .modified_resnet import ModifiedResNet
from .registry import (config_from_dict, get_model_config, list_models, register_config_class, register_model,
                       register_model_file)
from .text import TextTransformer
from .vit import VisionTransformer
from . import hybrid  # noqa: E402  registers the locked-tower hybrid family and its named configs
from . import frozen  # noqa: E402  registers the Frozen family (transformers is imported lazily)
from .hybrid import HybridCLIP, HybridConfig, hybrid_from_clip, lit  # noqa: E402
from .pretrained_text import PretrainedTextConfig, PretrainedTextTower  # noqa: E402

__all__ = ["CLIP", "CLIPConfig", "ConfigError", "TextConfig", "VisionConfig", "build_model",
           "register_builder", "ModifiedResNet", "config_from_dict", "get_model_config", "list_models",
           "register_config_class", "register_model", "register_model_file", "TextTransformer", "VisionTransformer", "HybridCLIP", "HybridConfig",
           "hybrid_from_clip", "lit", "PretrainedTextConfig", "PretrainedTextTower"]

