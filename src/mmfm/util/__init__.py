"""Leaf helpers used by every layer of mmfm. Nothing here imports from the rest of the package."""
from .atomic import atomic_save_safetensors, atomic_torch_save, atomic_write, atomic_write_json, atomic_write_text

__all__ = ["atomic_save_safetensors", "atomic_torch_save", "atomic_write", "atomic_write_json", "atomic_write_text"]
