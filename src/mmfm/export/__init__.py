"""Exports of mmfm models to other runtimes (ONNX)."""
from .onnx import export_onnx

__all__ = ["export_onnx"]
