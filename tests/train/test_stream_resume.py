"""Streaming (WebDataset) training resumes at the exact sample: Ctrl-C mid-epoch and resume ends with the
weights of an uninterrupted run, as test_resume.py checks for map-style data."""
import signal
import zlib

import pytest
import torch

from mmfm.data import Shapes, ShardDataset, write_shards
from mmfm.models import create_model
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
