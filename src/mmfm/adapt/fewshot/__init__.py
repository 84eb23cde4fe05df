"""Few-shot adaptation methods of CLIP, compared on equal terms through ``mmfm.eval.few_shot(method=...)``.

===================  ==================================================  =====================================
method               what trains                                          source of the defaults
===================  ==================================================  =====================================
``zero_shot``        nothing (the baseline)                               CLIP
``linear_probe``     logistic regression on frozen features               CLIP paper (in mmfm.eval.few_shot)
``lora``             LoRA adapters in both towers                         mmfm.adapt.lora
``coop``             16 context vectors in front of the class name        CoOp (Zhou et al. 2022)
``clip_adapter``     residual bottleneck MLP on image embeddings          CLIP-Adapter (Gao et al. 2023)
``tip_adapter``      nothing: a cache of the shots, alpha/beta searched   Tip-Adapter (Zhang et al. 2022)
``tip_adapter_f``    the cache keys                                       Tip-Adapter-F (same paper)
===================  ==================================================  =====================================

Each method's module documents its hyper-parameters; ``few_shot(..., method_options={...})`` overrides them.
"""
from .clip_adapter import clip_adapter_method
from .coop import coop_method
from .tip_adapter import tip_adapter_f_method, tip_adapter_method, tip_logits
from .zero_shot import zero_shot_method

METHODS = {"zero_shot": zero_shot_method, "coop": coop_method, "clip_adapter": clip_adapter_method,
           "tip_adapter": tip_adapter_method, "tip_adapter_f": tip_adapter_f_method}


def register() -> None:
    from ...eval.few_shot import register_few_shot_method
    for name, fn in METHODS.items():
        register_few_shot_method(name, fn, overwrite=True)


register()

__all__ = ["METHODS", "clip_adapter_method", "coop_method", "tip_adapter_f_method", "tip_adapter_method", "tip_logits",
           "zero_shot_method"]
