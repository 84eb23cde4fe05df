"""Switching a model to eval mode for a measurement without changing it (a leaf helper)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put the model in eval mode for the block and restore every module's previous mode afterwards.

    Per module, not just the top flag: ``model.train(True)`` would also switch on submodules the caller
    had put in eval mode (a locked tower, frozen BatchNorm), and reporting must not change a model.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


@contextmanager
def requires_grad(model: nn.Module, flag: bool) -> Iterator[nn.Module]:
    """Set ``requires_grad`` of every weight of ``model`` to ``flag`` for the block; each weight's own flag
    comes back afterwards (a locked tower stays locked)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(flag)
    try:
        yield model
    finally:
        for p, old in flags:
            p.requires_grad_(old)
