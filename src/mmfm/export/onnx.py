"""ONNX export of a CLIP model's two encoders: ``image_encoder.onnx`` and ``text_encoder.onnx``.

Each file maps one input to the tower's (unnormalised) embedding, exactly ``model.encode_image`` /
``model.encode_text``, with a dynamic batch axis:

* ``image_encoder.onnx``: ``pixel_values`` float32 [batch, 3, S, S] (preprocessed as ``mmfm.image_transform(S)``)
  -> ``image_embeds`` float32 [batch, D];
* ``text_encoder.onnx``: ``input_ids`` int64 [batch, context_length] (as ``model.get_tokenizer()`` pads them)
  -> ``text_embeds`` float32 [batch, D]. The end-of-text position is found in the graph from the ids, as in
  mmfm, so pooling is exact; mmfm's skipping of the padding after the longest caption depends on the data and
  is left out (it saves time only, the result is the same).

Why the TorchScript-based exporter (``dynamo=False``): it needs nothing beyond ``onnx`` and covers every op the
towers use. The export runs with autograd recording, so the towers take their plain ``nn.Linear`` path rather
than mmfm's CPU inference kernels (oneDNN-packed and fused weights, which ONNX cannot express); the model's
``requires_grad`` flags and mode are restored afterwards: exporting a model does not change it.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
from torch import nn

from ..util.modes import eval_mode, requires_grad

OPSET = 17
FILES = {"image": "image_encoder.onnx", "text": "text_encoder.onnx"}


class ImageEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.visual = model.visual

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual(pixel_values)


class TextEncoder(nn.Module):
    """``model.encode_text`` without the data-dependent truncation (ONNX graphs have static control flow)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.text = model.text

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = self.text
        pool = t.pool_index(input_ids)
        x = t.transformer.forward_pooled(t.embed(input_ids), pool, is_causal=True)
        return t.forward_head(t.ln_final(x))


def export_onnx(model: nn.Module, out_dir: str | Path, opset: int = OPSET) -> dict[str, Path]:
    """Write ``image_encoder.onnx`` and ``text_encoder.onnx`` for ``model`` (a fp32 CLIP) into ``out_dir``.

    Returns ``{"image": path, "text": path}``. Files are written through mmfm's atomic writer, so a reader
    never sees half an export.
    """
    _check_exportable(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size, ctx = model.config.vision.image_size, model.config.text.context_length
    ids = model.get_tokenizer()(["a photo of a cat.", "a diagram"])
    if ids.shape[1] != ctx:
        raise ValueError(f"the tokenizer pads to {ids.shape[1]} tokens, the text tower expects {ctx}")
    jobs = {"image": (ImageEncoder(model), torch.zeros(2, 3, size, size), "pixel_values", "image_embeds"),
            "text": (TextEncoder(model), ids, "input_ids", "text_embeds")}
    paths = {}
    with _plain_forward(model):
        for tower, (module, example, input_name, output_name) in jobs.items():
            paths[tower] = _export_one(module, example, input_name, output_name, out / FILES[tower], opset)
    return paths


def _check_exportable(model: nn.Module) -> None:
    if not (hasattr(model, "visual") and hasattr(model, "text") and hasattr(model, "config")):
        raise ValueError(f"ONNX export needs a CLIP model (image and text towers), not {type(model).__name__}")
    for name, p in model.named_parameters():
        if p.dtype != torch.float32 or p.device.type != "cpu":
            raise ValueError(f"ONNX export takes a fp32 CPU model ({name} is {p.dtype} on {p.device}); build it "
                             f"with create_model(..., precision='fp32', device='cpu')")
    if any(type(m).__module__.startswith(("torch.ao.", "peft.")) for m in model.modules()):
        raise ValueError("ONNX export takes a plain model: merge LoRA adapters first and export before int8 "
                         "quantization")


@contextlib.contextmanager
def _plain_forward(model: nn.Module):
    """Eval mode with autograd recording (see the module docstring); flags and mode restored on exit."""
    with requires_grad(model, True), eval_mode(model), torch.enable_grad():
        yield


def _export_one(module: nn.Module, example: torch.Tensor, input_name: str, output_name: str, path: Path,
                opset: int) -> Path:
    from ..util.atomic import atomic_write

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():   # the tracer's notes on Python ints in shape checks (shapes are fixed)
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(tmp), input_names=[input_name], output_names=[output_name],
                              dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                              opset_version=opset, dynamo=False, do_constant_folding=True)
    atomic_write(path, write)
    return path
