"""Fixtures shared by every test folder."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

# Under pytest-xdist every worker is a process of its own: with PyTorch's default of one thread per core,
# two workers on two cores run four spinning OpenMP threads, which made some tests 30x slower under load.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# The CLI's inference commands set glibc's allocator policy for the whole process (mmfm.util.malloc); a test
# process runs many commands in-process, and its memory-measuring tests expect glibc's default.
# tests/test_cli.py checks the policy is applied when this is unset.
os.environ.setdefault("MMFM_KEEP_LARGE_BLOCKS", "0")


@pytest.fixture
def run_ranks():
    """``run(worker, out, nproc, *args)``: run a worker script as ``nproc`` CPU processes (torchrun, gloo;
    one plain process for ``nproc=1``) with ``out`` and ``args`` on its command line; return what it saved to
    ``out``. One thread per process, so the ranks do not fight over the cores."""
    def run(worker, out, nproc: int, *args, timeout: int = 300):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
        argv = [str(worker), str(out), *map(str, args)]
        cmd = ([sys.executable, *argv] if nproc == 1 else
               [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *argv])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return torch.load(out, weights_only=True)
    return run


class ModelState:
    """Everything a report must not change: each parameter and buffer (values, dtype, device,
    requires_grad), the module tree and each module's training flag (a locked tower may be in eval mode
    while its parent trains)."""

    def __init__(self, model):
        self.modules = [(n, type(m).__name__, m.training) for n, m in model.named_modules()]
        self.tensors = {n: (t.detach().clone(), t.dtype, t.device, t.requires_grad)
                        for n, t in model.state_dict(keep_vars=True).items()}

    def assert_same(self, model) -> None:
        after = ModelState(model)
        assert after.modules == self.modules
        assert after.tensors.keys() == self.tensors.keys()
        for n, (t, dtype, device, grad) in self.tensors.items():
            u, dtype2, device2, grad2 = after.tensors[n]
            assert (dtype2, device2, grad2) == (dtype, device, grad), n
            assert torch.equal(u, t), n


@pytest.fixture
def model_state():
    """``before = model_state(model)`` ... ``before.assert_same(model)``."""
    return ModelState


# ---------------------------------------------------------------------------------------------
# Tiny models and datasets for the evaluations: eval's own, adapt's few-shot evaluation and mmfm.evaluate's.
class PixelModel(nn.Module):
    """A fixed, training-free "image tower": features = 8x8 average-pooled pixels (192 dims),
    embedding = a fixed random projection of them. Counts forward calls so tests can tell cache hits."""

    def __init__(self, image_size: int = 32, embed_dim: int = 16, seed: int = 0):
        super().__init__()
        self.image_size = image_size
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Parameter(torch.randn(192, embed_dim, generator=g))
        self.calls = 0

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return F.adaptive_avg_pool2d(x, 8).flatten(1)

    def encode_image(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        out = self.image_features(x) @ self.proj
        return F.normalize(out, dim=-1) if normalize else out


@pytest.fixture
def pixel_model() -> PixelModel:
    return PixelModel()


@pytest.fixture(scope="session")
def tiny_clip():
    from mmfm.api import create_model
    torch.manual_seed(0)
    return create_model("ViT-tiny-test").eval()


@pytest.fixture(scope="session")
def digits_splits():
    from mmfm.data import Digits
    return Digits("train"), Digits("val"), Digits("test")


@pytest.fixture(scope="session")
def shapes_small():
    from mmfm.data import Shapes
    return Shapes("test", size=48, image_size=32)


@pytest.fixture(scope="session")
def transform32():
    from mmfm.data.transforms import image_transform
    return image_transform(32)


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    """A saved random ViT-tiny-test folder, for evaluations that load weights by path (`mmfm eval`/`mmfm run`)."""
    from mmfm.checkpoints import save_pretrained
    from mmfm.api import create_model
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny"
    save_pretrained(create_model("ViT-tiny-test"), path)
    return str(path)
