"""WiSE-FT: interpolate the weights of a zero-shot model and its fine-tuned version.

``theta(alpha) = (1 - alpha) * theta_base + alpha * theta_finetuned`` (Wortsman et al., 2022). Moving
alpha from 0 to 1 trades the base model's robustness (accuracy on tasks it was never tuned for)
against the fine-tuned model's target accuracy; intermediate alphas often keep most of both.

A LoRA fine-tune is merged before interpolating. For LoRA the interpolation is exactly the base
model plus ``alpha`` times the adapter's update (``W + alpha * scale * B @ A``), since the base
weights are shared.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..util.weights import bump

Evaluation = Callable[[nn.Module], float | Mapping[str, float]]


def _plain(model: nn.Module) -> nn.Module:
    """The model itself, or a merged plain copy if it carries LoRA adapters (left untouched)."""
    from .lora import is_lora_model, merged_copy
    return merged_copy(model) if is_lora_model(model) else model


def wise_ft(base_model: nn.Module, finetuned_model: nn.Module, alpha: float) -> nn.Module:
    """A new model with weights ``(1 - alpha) * base + alpha * finetuned``; the inputs are not modified.

    Both models must have the same parameter and buffer names and shapes (the fine-tune of that
    base). Floating-point tensors (including BatchNorm running statistics) are interpolated; integer
    buffers (BatchNorm's step counter) are taken from the fine-tuned model. ``alpha`` outside [0, 1]
    extrapolates, which is allowed but rarely useful.
    """
    base, ft = _plain(base_model), _plain(finetuned_model)
    sb, sf = base.state_dict(), ft.state_dict()
    missing, extra = sorted(set(sb) - set(sf)), sorted(set(sf) - set(sb))
    mismatched = [f"{k} {list(sb[k].shape)} vs {list(sf[k].shape)}" for k in sb if k in sf and sb[k].shape != sf[k].shape]
    if missing or extra or mismatched:
        parts = [f"{what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}" for what, keys in
                 (("only in the base model", missing), ("only in the fine-tuned model", extra),
                  ("different shapes", mismatched)) if keys]
        raise ValueError("wise_ft needs two models of the same architecture; " + "; ".join(parts))
    merged = {}
    for k, b in sb.items():
        f = sf[k].to(b.device)
        merged[k] = torch.lerp(b, f.to(b.dtype), float(alpha)) if b.is_floating_point() else f.clone()
    out = copy.deepcopy(base)
    out.load_state_dict(merged)
    bump()   # mmfm models bump on load_state_dict themselves; any other module gets it here
    return out


def zero_shot_metric(dataset, task: str | None = None, metric: str = "top1", **kwargs: Any) -> Evaluation:
    """An evaluation for :func:`wise_ft_sweep`: ``mmfm.eval.zero_shot(model, dataset, task=task)`` -> ``metric``."""
    from ..eval import zero_shot

    def evaluate(model: nn.Module) -> float:
        result = zero_shot(model, dataset, task=task, progress=False, **kwargs)
        return float(getattr(result.metrics, metric))
    return evaluate


def wise_ft_sweep(base_model: nn.Module, finetuned_model: nn.Module, evaluations: Mapping[str, Evaluation],
                  alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> list[dict[str, Any]]:
    """Evaluate ``wise_ft(base, finetuned, alpha)`` for every alpha: one row per alpha for a table.

    evaluations: name -> ``f(model)`` returning a number or a dict of numbers, e.g.
        ``{"target": zero_shot_metric(target_test, "color"), "held-out": zero_shot_metric(source_test, "shape")}``.
    Rows: ``{"alpha": a, "target": ..., "held-out": ..., "eval_s": ...}`` (dict results are
    flattened as ``name/key``).
    """
    rows = []
    base, ft = _plain(base_model), _plain(finetuned_model)   # merge LoRA once, not per alpha
    for alpha in alphas:
        model = wise_ft(base, ft, alpha).eval()
        row: dict[str, Any] = {"alpha": float(alpha)}
        t0 = time.perf_counter()
        with torch.no_grad():
            for name, evaluate in evaluations.items():
                value = evaluate(model)
                if isinstance(value, Mapping):
                    row.update({f"{name}/{k}": float(v) for k, v in value.items()})
                else:
                    row[name] = float(value)
        row["eval_s"] = time.perf_counter() - t0
        rows.append(row)
        del model
    return rows


def sweep_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows of :func:`wise_ft_sweep` as a markdown table."""
    from ..report import markdown_table
    if not rows:
        return ""
    headers = list(rows[0])
    return markdown_table(headers, [[r.get(h) for h in headers] for r in rows])
