"""Adapting a pretrained CLIP: LoRA (through ``peft``), WiSE-FT weight interpolation, locked towers.

    from mmfm.adapt import apply_lora, save_lora, load_lora, merge_lora, export_merged, wise_ft
    model = apply_lora(create_model("ViT-B-32", pretrained=...), preset="attn-mlp-r16")
    Trainer(model, data, TrainConfig(...), "runs/lora").fit()      # only the adapters train
    save_lora(model, "runs/lora/adapter")                         # PEFT's format, adapter weights only
    export_merged(model, "runs/lora/merged", format="hf")         # a plain HF CLIPModel directory

Few-shot: ``few_shot(model, train, test, method="lora")`` runs every (k, seed) episode of one of
the registered methods (:data:`FEW_SHOT_METHODS`: linear_probe, nearest_centroid, zero_shot, lora,
coop, clip_adapter, tip_adapter, tip_adapter_f; :mod:`mmfm.adapt.fewshot`). Locked towers: :func:`lit`
and :func:`hybrid_from_clip` (from :mod:`mmfm.models.hybrid`).

Run configs name adaptations in a model's ``adapt:`` list (lora, lock, freeze, wise_ft, or one of your
own): :data:`ADAPTATIONS`, :func:`register_adaptation`, :func:`apply_adaptations` (:mod:`.registry`).

This package sits above :mod:`mmfm.eval`: its methods reuse eval's feature extraction, zero-shot head
and k-shot draw, and eval never imports it.
"""
from ..api import hybrid_from_clip   # takes a CLIP model or a checkpoint path
from ..models.hybrid import HybridCLIP, HybridConfig, lit
from .lora import (LORA_PRESETS, LoraPreset, apply_lora, export_merged, is_lora_model, lora_parameters, merge_lora,
                   merged_copy, unload_lora, unmerge_lora)
from .lora_io import config_fingerprint, load_lora, save_lora
from .fewshot.lora import lora_few_shot
from .wise_ft import sweep_table, wise_ft, wise_ft_sweep, zero_shot_metric
from .fewshot import FEW_SHOT_METHODS, few_shot, register_few_shot_method
from .registry import ADAPTATIONS, AdaptContext, apply_adaptations, register_adaptation

__all__ = ["ADAPTATIONS", "AdaptContext", "apply_adaptations", "register_adaptation", "FEW_SHOT_METHODS", "few_shot", "register_few_shot_method", "LORA_PRESETS", "LoraPreset", "apply_lora",
           "config_fingerprint", "export_merged", "is_lora_model", "load_lora", "lora_few_shot", "lora_parameters", "merge_lora", "merged_copy", "save_lora", "unload_lora",
           "unmerge_lora", "sweep_table", "wise_ft", "wise_ft_sweep", "zero_shot_metric", "HybridCLIP",
           "HybridConfig", "hybrid_from_clip", "lit"]
