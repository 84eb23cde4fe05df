"""mmfm: train, adapt, evaluate and measure vision-language models (CLIP, CLIP + LoRA, locked towers, Frozen).

The public API, re-exported lazily so that ``import mmfm`` (and the CLI) start fast.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "create_model": "mmfm.api", "build_model": "mmfm.models", "list_models": "mmfm.models",
    "get_model_config": "mmfm.models", "register_model": "mmfm.models", "register_model_file": "mmfm.models",
    "CLIP": "mmfm.models", "CLIPConfig": "mmfm.models",
    "tokenize": "mmfm.tokenizer", "get_tokenizer": "mmfm.tokenizer",
    "image_transform": "mmfm.data.transforms",
    "count_parameters": "mmfm.measure", "model_fingerprint": "mmfm.util.weights",
    "save_pretrained": "mmfm.checkpoints", "from_pretrained": "mmfm.api", "export_hf": "mmfm.checkpoints",
    "apply_lora": "mmfm.adapt",
    "model_info": "mmfm.info",
    "export_onnx": "mmfm.export",
    "embed_images": "mmfm.deploy", "embed_texts": "mmfm.deploy", "load_index": "mmfm.deploy",
    "write_index": "mmfm.deploy", "search": "mmfm.deploy", "keep_large_blocks": "mmfm.util.malloc",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmfm' has no attribute {name!r}")


def __dir__():
    return __all__
