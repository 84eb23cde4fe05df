"""Fixtures shared by every test folder."""
import os
import subprocess
import sys

import pytest
import torch

# Under pytest-xdist every worker is a process of its own: with PyTorch's default of one thread per core,
# two workers on two cores run four spinning OpenMP threads, which made some tests 30x slower under load.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


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
