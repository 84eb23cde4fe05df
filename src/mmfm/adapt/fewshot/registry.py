"""The registry of few-shot adaptation methods: name -> ``method(episode) -> predictions``.

Every built-in method is listed here, so ``few_shot(..., method="lora")`` finds it without any import
having run for its side effect; :func:`register_few_shot_method` adds one of your own (and the CLI's
``--method`` then accepts it in the same process).
"""
from __future__ import annotations

from ...eval.few_shot import FewShotMethod
from .clip_adapter import clip_adapter_method
from .coop import coop_method
from .lora import lora_few_shot
from .probe import linear_probe_method, nearest_centroid_method
from .tip_adapter import tip_adapter_f_method, tip_adapter_method
from .zero_shot import zero_shot_method

FEW_SHOT_METHODS: dict[str, FewShotMethod] = {
    "linear_probe": linear_probe_method, "nearest_centroid": nearest_centroid_method, "zero_shot": zero_shot_method,
    "lora": lora_few_shot, "coop": coop_method, "clip_adapter": clip_adapter_method,
    "tip_adapter": tip_adapter_method, "tip_adapter_f": tip_adapter_f_method,
}

#: Methods that classify from the evaluation's feature pass (their labels come from it too).
FEATURE_METHODS = frozenset({"linear_probe", "nearest_centroid"})


def register_few_shot_method(name: str, method: FewShotMethod, overwrite: bool = False) -> None:
    """Make ``method`` available as ``few_shot(..., method=name)`` (and on the CLI)."""
    if name in FEW_SHOT_METHODS and not overwrite:
        raise ValueError(f"few-shot method {name!r} is already registered")
    FEW_SHOT_METHODS[name] = method


def get_few_shot_method(name: str) -> FewShotMethod:
    try:
        return FEW_SHOT_METHODS[name]
    except KeyError:
        raise KeyError(f"unknown few-shot method {name!r}; registered: {sorted(FEW_SHOT_METHODS)}") from None
