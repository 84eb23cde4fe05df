"""Optimizer and learning-rate schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float, on: str = "matrices") -> list[dict]:
    """Trainable parameters split into decayed (matrices) and not decayed (gains, biases, embeddings, temperature);
    ``on="all"``: one group, every parameter decayed."""
    if on == "all":
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    exempt = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or name in exempt or "embedding" in name or "logit_" in name or name.endswith(".bias")
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = [g for g in param_groups(model, cfg.weight_decay, cfg.weight_decay_on) if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters: everything is frozen")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **adamw_kernel(groups))


def adamw_kernel(groups: list[dict]) -> dict:
    """Which AdamW implementation to use: the fused kernel wherever the parameters allow it (one device,
    floating point), else ``foreach``. On CPU the fused kernel is ~4x faster than foreach (ViT-B-32, one
    thread: 0.19 s vs 0.70 s per step). It writes parameters without bumping their version counters, which
    is why the inference caches in ``models/layers.py`` also watch optimizer steps."""
    params = [p for g in groups for p in g["params"]]
    devices = {p.device.type for p in params}
    fusable = all(p.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64) for p in params)
    return {"fused": True} if fusable and len(devices) == 1 and devices <= {"cpu", "cuda"} else {"foreach": True}


def lr_lambda(total_steps: int, warmup: int, schedule: str, min_ratio: float = 0.0):
    if schedule == "cosine_whole":
        return _cosine_whole(total_steps, warmup, min_ratio)

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def _cosine_whole(total_steps: int, warmup: int, min_ratio: float):
    """The warmup ramp times one cosine over all steps (nanoGPT-style; the cosine does not wait for warmup)."""
    def f(step: int) -> float:
        ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
        return ramp * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(step / total_steps, 1.0))))
    return f


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total_steps, cfg.warmup_steps, cfg.schedule, cfg.min_lr_ratio))
