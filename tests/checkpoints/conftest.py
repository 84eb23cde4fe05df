"""Shared fixtures for checkpoint tests: deterministic random weights and inputs."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _single_thread():
    """These models are tiny: extra intra-op threads only add synchronisation, and on a busy machine
    OpenMP's spinning threads make the tests several times slower. Restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Perturb every floating tensor so LayerNorm gains/biases and BatchNorm statistics are not their
    defaults (a swapped ln_1/ln_2 or a dropped BN buffer would otherwise go unnoticed)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.add_(torch.randn(t.shape, generator=g) * 0.05)
    return model.eval()


@pytest.fixture
def randomize():
    return _randomize


@pytest.fixture
def inputs():
    """(images, token ids) for a model: ids never exceed vocab_size - 1, with an EOT-like max token."""
    def make(image_size: int, context_length: int, vocab_size: int, eot: int | None = None, batch: int = 3, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        images = torch.randn(batch, 3, image_size, image_size, generator=g)
        top = eot if eot is not None else vocab_size - 1
        ids = torch.randint(1, top, (batch, context_length), generator=g)
        for i in range(batch):   # an end token at a different place per row, padding after it
            end = context_length // 2 + i
            ids[i, end] = top
            ids[i, end + 1:] = 0
        return images, ids
    return make


@pytest.fixture(scope="session")
def open_clip():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import open_clip as oc
    return oc


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5, what: str = "") -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    diff = (actual - expected).abs().max().item()
    assert diff <= tol, f"{what}: max abs difference {diff:.3g} > {tol}"


@pytest.fixture
def close():
    return assert_close
