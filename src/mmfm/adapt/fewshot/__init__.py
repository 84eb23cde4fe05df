"""Few-shot adaptation methods of CLIP, compared on equal terms through ``few_shot(model, train, test, method=...)``.

====================  ==================================================  =====================================
method                what trains                                          source of the defaults
====================  ==================================================  =====================================
``zero_shot``         nothing (the baseline)                               CLIP
``linear_probe``      logistic regression on frozen features               CLIP paper
``nearest_centroid``  nothing: cosine similarity to class mean features     prototype classifier
``lora``              LoRA adapters in both towers                         mmfm.adapt.fewshot.lora
``coop``              16 context vectors in front of the class name        CoOp (Zhou et al. 2022)
``clip_adapter``      residual bottleneck MLP on image embeddings          CLIP-Adapter (Gao et al. 2023)
``tip_adapter``       nothing: a cache of the shots, alpha/beta searched   Tip-Adapter (Zhang et al. 2022)
``tip_adapter_f``     the cache keys                                       Tip-Adapter-F (same paper)
====================  ==================================================  =====================================

Each method's module documents its hyper-parameters; ``few_shot(..., method_options={...})`` overrides them.
"""
from .clip_adapter import clip_adapter_method
from .coop import coop_method
from .evaluation import few_shot
from .lora import lora_few_shot
from .probe import linear_probe_method, nearest_centroid_method
from .registry import FEATURE_METHODS, FEW_SHOT_METHODS, get_few_shot_method, register_few_shot_method
from .tip_adapter import tip_adapter_f_method, tip_adapter_method, tip_logits
from .zero_shot import zero_shot_method

__all__ = ["FEATURE_METHODS", "FEW_SHOT_METHODS", "clip_adapter_method", "coop_method", "few_shot",
           "get_few_shot_method", "linear_probe_method", "lora_few_shot", "nearest_centroid_method", "register_few_shot_method",
           "tip_adapter_f_method", "tip_adapter_method", "tip_logits", "zero_shot_method"]
