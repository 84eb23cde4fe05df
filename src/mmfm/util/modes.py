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
