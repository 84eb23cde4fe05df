"""Streaming (WebDataset) training resumes at the exact sample: Ctrl-C mid-epoch and resume ends with the
weights of an uninterrupted run, as test_resume.py checks for map-style data."""
import signal
import zlib
from pathlib import Path

import pytest
import torch

from mmfm.data import Shapes, ShardDataset, write_shards
from mmfm.api import create_model
from mmfm.train import TrainConfig, Trainer
from mmfm.train.checkpointing import latest_valid_checkpoint


class Tokenize:
    """word -> stable id in ViT-tiny-test's context of 16; Ctrl-C on call ``sigint_at`` (a sample being read)."""

    def __init__(self, sigint_at=0):
        self.calls, self.sigint_at = 0, sigint_at

    def __call__(self, texts):
        self.calls += 1
        if self.calls == self.sigint_at:
            signal.raise_signal(signal.SIGINT)
        out = torch.zeros(len(texts), 16, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [1] + [2 + zlib.crc32(w.encode()) % 900 for w in text.split()][:14] + [999]
            out[row, :len(ids)] = torch.tensor(ids)
        return out


def _fit(shards, out, tokenize, steps=8):
    stream = ShardDataset(shards, shuffle_shards=True, shuffle_buffer=8, seed=1).with_transforms(None, tokenize, seed=1)
    torch.manual_seed(0)
    cfg = TrainConfig(max_steps=steps, batch_size=4, lr=1e-3, log_every=1, progress=False, tensorboard=False, seed=4)
    return Trainer(create_model("ViT-tiny-test"), stream, cfg, out).fit()


@pytest.mark.slow
def test_interrupted_stream_resumes_at_the_exact_sample(tmp_path):
    write_shards(Shapes(size=24, image_size=32), tmp_path / "shards", maxcount=6)   # 6 batches an epoch
    ref = _fit(tmp_path / "shards", tmp_path / "ref", Tokenize())
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "shards", tmp_path / "run", Tokenize(sigint_at=18))   # while reading step 5's batch
    resumed = _fit(tmp_path / "shards", tmp_path / "run", Tokenize())         # crosses into epoch 1
    assert resumed.resumed_from_step == 4 and resumed.steps == ref.steps == 8
    assert resumed.samples_seen == ref.samples_seen == 32
    a = latest_valid_checkpoint(tmp_path / "ref" / "checkpoints")[1]["model"]
    b = latest_valid_checkpoint(tmp_path / "run" / "checkpoints")[1]["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


def test_stream_shorter_than_one_batch_is_a_clear_error_not_an_endless_loop(tmp_path):
    write_shards(Shapes(size=3, image_size=32), tmp_path / "shards")
    with pytest.raises(ValueError, match="no full batch"):
        _fit(tmp_path / "shards", tmp_path / "run", Tokenize(), steps=2)


STREAM_WORKER = Path(__file__).with_name("ddp_stream_worker.py")


@pytest.mark.slow
def test_ranks_end_stream_epochs_together(tmp_path, run_ranks):
    """With uneven shards per rank, the rank whose stream ends first ends the epoch for all (it used to run
    ahead into the next epoch, and a rank with no shard at all spun forever while the others waited)."""
    write_shards(Shapes(size=12, image_size=32), tmp_path / "uneven", maxcount=4)   # rank 0: 8 pairs, rank 1: 4
    out = run_ranks(STREAM_WORKER, tmp_path / "uneven.pt", 2, tmp_path / "uneven", 5, timeout=240)
    assert out["epochs"] == [2.5, 2.5] and out["steps"] == [5, 5]    # 2 steps an epoch: rank 1's 4 pairs / 2
    write_shards(Shapes(size=4, image_size=32), tmp_path / "one", maxcount=4)       # rank 1 gets no shard
    out = run_ranks(STREAM_WORKER, tmp_path / "one.pt", 2, tmp_path / "one", 5, timeout=240)
    assert all("no full batch" in e for e in out["errors"]), out
