"""DDP on CPU (gloo): 2 ranks x batch B give the loss and gradients of 1 rank x batch 2B."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def _run(tmp_path, nproc, per_rank, accum, tag):
    out = tmp_path / f"{tag}.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), str(out), str(per_rank), str(accum)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(WORKER), str(out), str(per_rank), str(accum)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.mark.slow
def test_two_ranks_equal_one_rank_double_batch(tmp_path):
    single = _run(tmp_path, 1, 8, 1, "single")
    ddp = _run(tmp_path, 2, 4, 1, "ddp")
    ddp_acc = _run(tmp_path, 2, 4, 2, "ddp_acc")   # DDP and contrastive accumulation together
    for other in (ddp, ddp_acc):
        assert other["loss"] == pytest.approx(single["loss"], rel=1e-5)
        for n, g in single["grads"].items():
            torch.testing.assert_close(other["grads"][n], g, rtol=1e-4, atol=1e-6, msg=n)
