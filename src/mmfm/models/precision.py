"""Low-precision CPU inference: bf16 weights, and int8 weights for the Linear layers (dynamic quantization).

bf16: weights are cast once; inputs are cast to the tower's dtype at the tower boundary (``CLIP.encode_image``
/ ``encode_text``) and embeddings come back float32, so callers see the same types as in fp32. oneDNN runs
bf16 matmuls natively on CPUs with AVX512-BF16 or AMX (about 2.5x the fp32 rate on this project's machine);
elsewhere it emulates them, which is correct but slower than fp32, so we say so once.

int8: ``torch.ao.quantization.quantize_dynamic`` replaces every ``nn.Linear`` (the attention and MLP
projections, 2/3 of the FLOPs of a ViT) by one with int8 weights (per output channel) whose activations are
quantized per batch at run time; convolutions, LayerNorms and the final projections stay fp32. CPU only,
inference only: the quantized weights are not parameters, so they cannot be trained or saved as a checkpoint.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch
from torch import nn

# Flags in /proc/cpuinfo that mean bf16 matmuls run natively (x86: AVX512-BF16 or AMX; Arm: BF16).
_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


@functools.cache
def cpu_has_native_bf16() -> bool | None:
    """True/False when the CPU's flags say whether it computes bf16 natively; None when they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & _NATIVE_BF16_FLAGS) and torch.backends.mkldnn.is_available()


def bf16_fallback_message() -> str:
    return ("precision='bf16' on a CPU without native bf16 (no avx512_bf16/amx_bf16 in its flags): the results are "
            "correct but slower than fp32; use precision='fp32' (or 'int8') for speed on this CPU")


def check_bf16_cpu() -> None:
    """Warn when bf16 inference on this CPU would be emulated (once per calling line: Python's default filter)."""
    if cpu_has_native_bf16() is False:
        warnings.warn(bf16_fallback_message(), RuntimeWarning, stacklevel=3)


def quantize_int8(model: nn.Module) -> nn.Module:
    """``model`` with every ``nn.Linear`` replaced (in place) by a dynamically quantized int8 one."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("precision='int8' is CPU inference only (dynamic quantization has no GPU kernels); "
                         "use device='cpu', or bf16/fp16 on a GPU")
    model.eval().requires_grad_(False)
    with warnings.catch_warnings():   # torch.ao's deprecation notice is torch's plan, not the user's to act on
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
        # Per-output-channel weight scales: the default (one scale per matrix) costs agreement with fp32.
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


def module_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of a module's floating-point weights (float32 when it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32
