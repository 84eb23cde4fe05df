"""DDP on CPU (gloo): 2 ranks x batch B give the loss and gradients of 1 rank x batch 2B."""
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.slow
def test_two_ranks_equal_one_rank_double_batch(tmp_path, run_ranks):
    single = run_ranks(WORKER, tmp_path / "single.pt", 1, 8, 1)
    ddp = run_ranks(WORKER, tmp_path / "ddp.pt", 2, 4, 1)
    ddp_acc = run_ranks(WORKER, tmp_path / "ddp_acc.pt", 2, 4, 2)   # DDP and contrastive accumulation together
    for other in (ddp, ddp_acc):
        assert other["loss"] == pytest.approx(single["loss"], rel=1e-5)
        for n, g in single["grads"].items():
            torch.testing.assert_close(other["grads"][n], g, rtol=1e-4, atol=1e-6, msg=n)
