"""Shared helpers for the data-layer tests."""

from __future__ import annotations

import zlib

import pytest
import torch

CTX = 16


def fake_tokenize(texts: list[str]) -> torch.Tensor:
    """Tiny stand-in for mmfm.tokenizer: word -> stable id, padded to CTX.

    Module-level (not a lambda) so DataLoader workers can use it.
    """
    out = torch.zeros(len(texts), CTX, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [1] + [2 + zlib.crc32(w.encode()) % 1000 for w in text.lower().split()][: CTX - 2] + [1]
        out[row, : len(ids)] = torch.tensor(ids)
    return out


@pytest.fixture
def tokenizer():
    return fake_tokenize
