"""Low-precision CPU inference: bf16 weights, and int8 weights for the Linear layers (dynamic quantization).

bf16: weights are cast once (all of them, so a saved bf16 model reloads as bf16); inputs are cast to the
tower's dtype at the tower boundary (``CLIP.encode_image`` / ``encode_text``) and embeddings come back float32,
so callers see the same types as in fp32. Inside mmfm's transformer towers only the matmuls run in bf16: the
residual stream stays fp32 (``ln_pre`` / the token embedding start it in fp32, each block adds its bf16 output
to it in fp32) and every LayerNorm normalises in fp32 and hands bf16 to the matmul after it (``cast_bf16``);
attention runs in SDPA's bf16 kernel, which accumulates and takes its softmax in fp32. At inference the
projections run on oneDNN-packed bf16 weights with bias and GELU fused in, as fp32 does (``kernels.use_packed``).
The ModifiedResNet and other towers are plainly cast. oneDNN runs bf16 matmuls natively on CPUs with
AVX512-BF16 or AMX (2.1x the best fp32 kernel's rate on this project's AVX512-BF16 machine, far more with AMX);
elsewhere it emulates them, which is correct but slower than fp32, so we say so once.

int8: ``torch.ao.quantization.quantize_dynamic`` replaces every ``nn.Linear`` (the attention and MLP
projections, 2/3 of the FLOPs of a ViT) by one with int8 weights (per output channel) whose activations are
quantized per batch (one scale per tensor) at run time; convolutions, LayerNorms and the final projections
stay fp32. On VNNI CPUs the activations use all 8 bits (torch.ao's default 7, ``reduce_range``, only guards
pre-VNNI kernels against saturating their 16-bit sums), and the int8 matmuls run in oneDNN's kernel (the
same int8 weights, scales and activations; bias and GELU applied in its output pass) rather than fbgemm's:
1.2x faster on ViT-B-32 at batch 64 (1 thread; see the commit). CPU only, inference only: the quantized
weights are not parameters, so they cannot be trained or saved (``refuse_int8`` says so).

What was measured (tiny trained CLIPs of tests/models/test_precision.py, colours 300 / digits 359 images; the
record is benchmarks/results/precision.json):
- bf16: a plain ``model.to(bfloat16)`` (stream rounded after every block) flipped 6 digit predictions, the
  fp32 stream 4 (98.3% -> 98.9%); all 4 come from the text tower (bf16 image tower + fp32 text tower: 0) and
  are near-ties (fp32 top-1/top-2 margins 0.008-0.016, median 0.42). Final projections in fp32: no change.
- int8: 8-bit activations cut the embedding error 2-4x (min image cosine 0.99956 -> 0.99982, text 0.9926 ->
  0.9976) but not the digit flips (~18, 95%), which come from the text tower of that model: a random tower
  whose class prompts differ little, read through a ridge-fitted projection that amplifies its features'
  relative error ~3x. Leaving one kind of layer in fp32 (fc1, fc2, out_proj or q/k/v) removed 0-7 of the
  flips; a per-token activation scale (torch._int_mm) removed none, so neither is used. With the text tower
  trained as well (same recipe otherwise) both precisions meet the targets: bf16 100% / 99.7%, int8 100% / 100%.
- bf16 speed (ViT-B-32 image encode, batch 64, 2 threads, interleaved on a loaded 2-core EPYC, so ratios only):
  packed bf16 matmuls 1.24-1.63x fp32 (plain addmm 1.11-1.30x); agreement in tests/models/test_precision.py.
  What is left beyond the matmuls is the fp32 stream's price: per block two bf16->fp32 casts into the
  residual adds and two fp32->bf16 casts after the LayerNorms, each as slow as the LayerNorm itself. A bf16
  stream (LayerNorm reading bf16, no casts) ran 1.2x faster again but flipped 6 digit predictions of the
  tests' model (98.3%, under the 98.5% bound), as the plain cast did, so the stream stays fp32; a fused
  add+LayerNorm+cast kernel would remove the casts. torch 2.14's eager CPU ops cannot express it: a bf16
  matmul cannot write fp32 (``aten::mm.dtype`` / ``addmm.dtype`` have no CPU kernel) and oneDNN's
  residual-add post-op (``_linear_pointwise.binary``) wants the residual in the output's dtype, so that
  fusion needs a compiled kernel (torch.compile or C++), not done.
"""
from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LayerNorm

# Flags in /proc/cpuinfo that mean bf16 matmuls run natively (x86: AVX512-BF16 or AMX; Arm: BF16).
_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}
# Flags that mean u8 x s8 dot products accumulate in 32 bits (VNNI, AMX): no 16-bit saturation to avoid.
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


@functools.cache
def _cpu_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def cpu_has_native_bf16() -> bool | None:
    """True/False when the CPU's flags say whether it computes bf16 natively; None when they cannot be read."""
    flags = _cpu_flags()
    return None if flags is None else bool(flags & _NATIVE_BF16_FLAGS) and torch.backends.mkldnn.is_available()


def cpu_has_vnni() -> bool:
    """Whether int8 matmuls accumulate without 16-bit saturation here (x86 VNNI/AMX), so activations may use
    all 8 bits; False when unknown (the safe 7-bit range)."""
    flags = _cpu_flags()
    return bool(flags and flags & _VNNI_FLAGS) and torch.backends.quantized.engine in ("x86", "fbgemm")


def bf16_fallback_message() -> str:
    return ("precision='bf16' on a CPU without native bf16 (no avx512_bf16/amx_bf16 in its flags): the results are "
            "correct but slower than fp32; use precision='fp32' (or 'int8') for speed on this CPU")


def check_bf16_cpu() -> None:
    """Warn when bf16 inference on this CPU would be emulated (once per calling line: Python's default filter)."""
    if cpu_has_native_bf16() is False:
        warnings.warn(bf16_fallback_message(), RuntimeWarning, stacklevel=3)


class StreamLayerNorm(LayerNorm):
    """A pre-matmul LayerNorm of a bf16 model: reads the fp32 residual stream, normalises in fp32 and
    returns the weights' dtype, the input of the bf16 matmul that follows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        y = F.layer_norm(x.float(), self.normalized_shape, None if w is None else w.float(),
                         None if b is None else b.float(), self.eps)
        return y.to(w.dtype if w is not None else x.dtype)


class StreamStartLayerNorm(StreamLayerNorm):
    """The LayerNorm that starts a residual stream (a ViT's ``ln_pre``): its output is the stream, fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).float()


class StreamStartEmbedding(nn.Embedding):
    """A text tower's token embedding (bf16 table) that starts the residual stream in fp32."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids).float()


def cast_bf16(model: nn.Module) -> nn.Module:
    """``model`` with bf16 weights whose transformer towers keep their residual stream in fp32 (in place)."""
    from .text import TextTransformer
    from .vit import VisionTransformer
    model.to(torch.bfloat16)
    for m in model.modules():
        if type(m) is LayerNorm:
            m.__class__ = StreamLayerNorm
    for m in model.modules():
        if isinstance(m, VisionTransformer):
            m.ln_pre.__class__ = StreamStartLayerNorm
        elif isinstance(m, TextTransformer) and type(m.token_embedding) is nn.Embedding:
            m.token_embedding.__class__ = StreamStartEmbedding
    return model


class _Derived:
    """Values derived from a quantized Linear's packed weights, valid while the packed object is the same one
    (``set_weight_bias`` replaces it). Plain attribute, never copied or pickled, like ``kernels.PackedCache``."""

    def __init__(self):
        self.source, self.value = None, None

    def __deepcopy__(self, memo):
        return _Derived()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.source, self.value = None, None


def _onednn_int8_available() -> bool:
    return hasattr(torch.ops, "onednn") and hasattr(torch.ops.onednn, "qlinear_pointwise") \
        and hasattr(torch.ops.onednn, "qlinear_prepack")


def _activation_qparams(lo: float, hi: float, qmin: int = 0, qmax: int = 255) -> tuple[float, int]:
    """Scale and zero point of an 8-bit activation range [lo, hi], as torch.ao's dynamic quantization chooses
    them (ATen's ``ChooseQuantizationParams``: the range widened to hold 0, the zero point nudged to an
    integer), so that both int8 kernels see the same quantized activations."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (qmax - qmin)
    as_float = float(torch.tensor(scale, dtype=torch.float32))
    if as_float == 0 or math.isinf(1 / as_float):
        scale = 0.1
    from_min, from_max = qmin - lo / scale, qmax - hi / scale
    zero = from_min if abs(qmin) - abs(lo / scale) < abs(qmax) - abs(hi / scale) else from_max
    return scale, qmin if zero < qmin else qmax if zero > qmax else int(round(zero))


def _quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """``x`` quantized per tensor to uint8 (values, scale, zero point) in two passes: one for the range, one to
    quantize. ``quantize_per_tensor_dynamic`` + ``int_repr`` took four (min, max, quantize, copy out), which
    cost as much as the int8 matmuls themselves at batch 64."""
    lo, hi = torch.aminmax(x)
    scale, zero = _activation_qparams(float(lo), float(hi))
    q = torch.quantize_per_tensor(x, scale, zero, torch.quint8)
    # The quantized tensor's bytes as a plain uint8 tensor (the kernel's input type), without a copy.
    return torch.empty(0, dtype=torch.uint8).set_(q.untyped_storage(), q.storage_offset(), q.shape, q.stride()), \
        scale, zero


@functools.cache
def _int8_linear_classes():
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    class FullRangeInt8Linear(DynamicLinear):
        """torch.ao's dynamic int8 Linear with 8-bit activations (``reduce_range=False``), for VNNI CPUs."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)
            return y.to(x.dtype)

    class OneDNNInt8Linear(FullRangeInt8Linear):
        """The same int8 computation (the same int8 weights and per-channel scales, activations quantized per
        batch to 8 bits exactly as above) run by oneDNN's int8 matmul, which dequantizes, adds the bias and can
        apply GELU in its output pass: fbgemm's kernel was as fast or slower on ViT-B-32's shapes and GELU took
        a pass of its own (~10% of int8 image encode at batch 64)."""

        def _onednn(self):
            src = self._packed_params._packed_params
            if "_derived" not in self.__dict__:
                self._derived = _Derived()
            d = self._derived
            if d.source is not src:
                w = self.weight()          # qint8, one scale per output channel, zero points 0
                if w.qscheme() != torch.per_channel_affine:
                    scales = torch.full((w.shape[0],), w.q_scale(), dtype=torch.float32)
                else:
                    scales = w.q_per_channel_scales().float()
                zero = torch.zeros(w.shape[0], dtype=torch.int64)
                d.source, d.value = src, (torch.ops.onednn.qlinear_prepack(w.int_repr(), None), scales, zero,
                                          self.bias())
            return d.value

        def forward(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
            if x.dtype != torch.float32 or x.dim() < 2:
                y = super().forward(x)
                return F.gelu(y) if gelu else y
            packed, scales, zero, bias = self._onednn()
            shape = x.shape
            xq, x_scale, x_zero = _quantize_activations(x.reshape(-1, shape[-1]))
            y = torch.ops.onednn.qlinear_pointwise(xq, x_scale, x_zero, packed, scales, zero, bias, 1.0, 0,
                                                   torch.float32, "gelu" if gelu else "none", [],
                                                   "none" if gelu else "")
            return y.view(*shape[:-1], y.shape[-1])

        def forward_gelu(self, x: torch.Tensor) -> torch.Tensor:
            """``F.gelu(self(x))`` (exact GELU) in one pass; ``kernels.linear`` calls it for an MLP's fc1."""
            return self.forward(x, gelu=True)

    return FullRangeInt8Linear, OneDNNInt8Linear


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
        model = quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    if cpu_has_vnni():
        # torch.ao quantizes activations to 7 bits (reduce_range) so that pre-VNNI x86 kernels cannot saturate
        # their 16-bit intermediate sums; with VNNI the full 8 bits are safe and halve the activation error.
        full, onednn = _int8_linear_classes()
        cls = onednn if _onednn_int8_available() else full
        for m in model.modules():
            if type(m) is full.__mro__[1]:
                m.__class__ = cls
    return model


def int8_layers(model: nn.Module) -> str | None:
    """Which int8 layers ``model`` runs (None when it is not int8): they follow the CPU that quantized it, and the
    same weights give other embeddings through another kind. "8-bit activations, oneDNN" and "8-bit
    activations, fbgemm" on VNNI CPUs; "7-bit activations" (torch.ao's reduce_range) elsewhere."""
    if not is_int8(model):
        return None
    full, onednn = _int8_linear_classes()
    kinds = {type(m) for m in model.modules()}
    if onednn in kinds:
        return "8-bit activations, oneDNN"
    return "8-bit activations, fbgemm" if full in kinds else "7-bit activations"


def is_int8(model: nn.Module) -> bool:
    """Whether ``model`` holds dynamically quantized int8 layers (``create_model(precision="int8")``)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    return any(isinstance(m, DynamicLinear) for m in model.modules())


def refuse_int8(model: nn.Module, action: str) -> None:
    """One clear error where an int8 model would otherwise fail deep inside torch (saving, training)."""
    if is_int8(model):
        raise ValueError(f"cannot {action} an int8 model: its quantized weights are packed for CPU inference, not "
                         f"parameters; {action} the fp32 model and quantize it when loading "
                         f"(create_model(pretrained=..., precision='int8'))")


def module_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of a module's floating-point weights (float32 when it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32
