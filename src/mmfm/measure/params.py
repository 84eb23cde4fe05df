"""Parameter counts: total / trainable / frozen, overall and per top-level module (tower)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn


@dataclass
class ParamCount:
    total: int
    trainable: int
    frozen: int
    per_tower: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def trainable_share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["trainable_share"] = self.trainable_share
        return d


def _count(params) -> tuple[int, int]:
    total = trainable = 0
    seen: set[int] = set()
    for p in params:
        if id(p) in seen:   # tied weights count once
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def count_parameters(model: nn.Module) -> ParamCount:
    """Counts of a model's parameters; ``per_tower`` splits them by top-level child (visual, text, ...)."""
    total, trainable = _count(model.parameters())
    per_tower = {}
    base = getattr(model, "get_base_model", None)   # PEFT wrappers: report the wrapped model's towers
    root = base() if callable(base) else model
    for name, child in root.named_children():
        t, tr = _count(child.parameters())
        if t:
            per_tower[name] = {"total": t, "trainable": tr, "frozen": t - tr}
    direct = [p for n, p in root.named_parameters(recurse=False)]
    if direct:
        t, tr = _count(direct)
        per_tower["other"] = {"total": t, "trainable": tr, "frozen": t - tr}
    return ParamCount(total, trainable, total - trainable, per_tower)


def weight_memory(num_params: int) -> dict[str, int]:
    """Bytes the weights alone take in each precision."""
    return {"fp32": num_params * 4, "bf16": num_params * 2, "fp16": num_params * 2, "int8": num_params}
