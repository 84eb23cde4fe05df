"""Adapting a pretrained CLIP: LoRA (through ``peft``), WiSE-FT weight interpolation, locked towers.

    from mmfm.adapt import apply_lora, save_lora, load_lora, merge_lora, export_merged, wise_ft
    model = apply_lora(create_model("ViT-B-32", pretrained=...), preset="attn-mlp-r16")
    Trainer(model, data, TrainConfig(...), "runs/lora").fit()      # only the adapters train
    save_lora(model, "runs/lora/adapter")                         # PEFT's format, adapter weights only
    export_merged(model, "runs/lora/merged", format="hf")         # a plain HF CLIPModel directory

Few-shot: ``mmfm.eval.few_shot(model, train, test, method="lora")`` once this package is imported
(or ``method=lora_few_shot``). Locked towers: :func:`lit` and :func:`hybrid_from_clip` (from
:mod:`mmfm.models.hybrid`).
"""
from ..api import hybrid_from_clip   # takes a CLIP model or a checkpoint path
from ..models.hybrid import HybridCLIP, HybridConfig, lit
from .lora import (LORA_PRESETS, LoraPreset, apply_lora, config_fingerprint, export_merged, is_lora_model,
                   load_lora, lora_few_shot, lora_parameters, merge_lora, merged_copy, save_lora, unload_lora,
                   unmerge_lora)
from .wise_ft import sweep_table, wise_ft, wise_ft_sweep, zero_shot_metric
from . import fewshot  # noqa: E402,F401  registers coop, clip_adapter, tip_adapter(_f), zero_shot

__all__ = ["LORA_PRESETS", "LoraPreset", "apply_lora", "config_fingerprint", "export_merged", "is_lora_model",
           "load_lora", "lora_few_shot", "lora_parameters", "merge_lora", "merged_copy", "save_lora", "unload_lora",
           "unmerge_lora", "sweep_table", "wise_ft", "wise_ft_sweep", "zero_shot_metric", "HybridCLIP",
           "HybridConfig", "hybrid_from_clip", "lit"]
