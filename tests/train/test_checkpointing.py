"""Checkpoint folder hygiene: pruning counts only checkpoints that load, incomplete ones are skipped,
temporaries a kill left are removed, a failed write says where and how much space is free, and Ctrl-C
saves a checkpoint the run resumes from exactly."""
import errno
import json
import signal

import pytest
import torch

from mmfm.api import create_model
from mmfm.train import TrainConfig, Trainer
from mmfm.train.checkpointing import (TRAINING_KEYS, latest_valid_checkpoint, list_checkpoints, prune_checkpoints,
                                      save_checkpoint)
from mmfm.util.atomic import atomic_torch_save


def _ckpt(step: int) -> dict:
    return {k: {} for k in TRAINING_KEYS} | {"state": {"step": step}}


def _write(folder, step, obj=None):
    atomic_torch_save(_ckpt(step) if obj is None else obj, folder / f"ckpt-{step:08d}.pt")


def _tear(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_unreadable_newest_checkpoint_does_not_count_toward_keep_last(tmp_path):
    for s in (1, 2, 3, 9):
        _write(tmp_path, s)
    _tear(tmp_path / "ckpt-00000009.pt")
    prune_checkpoints(tmp_path, keep_last=1)
    # the good step-3 checkpoint survives; the torn one is left for the user to inspect, not counted
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 9]
    with pytest.warns(UserWarning, match="ckpt-00000009.pt"):
        path, ckpt = latest_valid_checkpoint(tmp_path)
    assert ckpt["state"]["step"] == 3


def test_loadable_but_incomplete_checkpoint_is_skipped_not_keyerror(tmp_path):
    _write(tmp_path, 1)
    _write(tmp_path, 2, {})                       # loads, but holds nothing to resume from
    _write(tmp_path, 3, {"model": {}})            # a weights-only file under a checkpoint name
    with pytest.warns(UserWarning, match="missing"):
        path, ckpt = latest_valid_checkpoint(tmp_path)
    assert path.name == "ckpt-00000001.pt"
    prune_checkpoints(tmp_path, keep_last=1)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 2, 3]


def test_failed_write_names_folder_and_free_space_and_keeps_old_checkpoints(tmp_path, monkeypatch):
    _write(tmp_path, 1)
    before = (tmp_path / "ckpt-00000001.pt").read_bytes()

    def full_disk(obj, f, *a, **k):               # what torch.save raises when the disk fills mid-write
        open(f, "wb").write(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 832 vs 726")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError) as info:
        save_checkpoint(_ckpt(2), tmp_path / "ckpt-00000002.pt")
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path) in msg and "free" in msg and "enforce fail" not in msg
    assert info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000001.pt"]   # no temporary, no torn file
    assert (tmp_path / "ckpt-00000001.pt").read_bytes() == before


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n=16, sigint_at=0):
        g = torch.Generator().manual_seed(0)
        self.images, self.texts = torch.randn(n, 3, 32, 32, generator=g), torch.randint(1, 1000, (n, 16), generator=g)
        self.calls, self.sigint_at = 0, sigint_at

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.calls += 1
        if self.calls == self.sigint_at:
            signal.raise_signal(signal.SIGINT)      # Ctrl-C while the loader is busy
        return {"image": self.images[i] + 0.1 * torch.randn(3, 32, 32), "text": self.texts[i]}


def _fit(out, steps, data=None, **kw):
    torch.manual_seed(0)
    kw = {"ckpt_every": 1, "keep_last": 2, **kw}
    cfg = TrainConfig(max_steps=steps, batch_size=4, lr=1e-3, log_every=1, progress=False, tensorboard=False, **kw)
    return Trainer(create_model("ViT-tiny-test"), data or Pairs(), cfg, out).fit()


def _weights(out):
    return latest_valid_checkpoint(out / "checkpoints")[1]["model"]


def test_ctrl_c_saves_a_checkpoint_says_how_to_resume_and_resume_is_exact(tmp_path, capsys):
    ref = tmp_path / "ref"
    _fit(ref, 5, ckpt_every=None)
    run = tmp_path / "run"
    handler = signal.getsignal(signal.SIGINT)   # the process's own (once seen as SIG_IGN in a pytest-xdist worker)
    with pytest.raises(KeyboardInterrupt):
        _fit(run, 5, Pairs(sigint_at=10), ckpt_every=None)     # item 10 is fetched for step 3
    assert "interrupted at step 2; resume with the same command" in capsys.readouterr().err
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2]
    assert signal.getsignal(signal.SIGINT) is handler    # the handler is put back
    assert _fit(run, 5, ckpt_every=None).resumed_from_step == 2
    a, b = _weights(ref), _weights(run)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


def test_resume_removes_stale_temporaries_and_metrics_keep_one_row_per_step(tmp_path):
    _fit(tmp_path, 2)
    ckpts = tmp_path / "checkpoints"
    (ckpts / ".ckpt-00000003.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    (ckpts / "ckpt-00000002.pt").unlink()        # as if killed after step 2's rows were logged, before its save
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"split": "train", "step": 3, "lo')   # and a torn row of a step that never finished
    result = _fit(tmp_path, 3)
    assert result.resumed_from_step == 1
    assert not list(ckpts.glob("*.tmp"))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3]


class Unreadable(Pairs):
    def __getitem__(self, i):
        return None                                    # as ImageTextView returns for a file it cannot decode


def test_data_that_is_all_unreadable_is_a_clear_error_not_an_endless_loop(tmp_path):
    with pytest.raises(ValueError, match="no readable batch"):
        _fit(tmp_path, 3, Unreadable())


def test_latency_measurement_restores_every_modules_mode(tmp_path):
    """Measuring inference latency after training is a report: it must leave each module's train/eval flag
    as it found it (it used to end with model.train(), switching on a tower the caller keeps in eval)."""
    from contextlib import nullcontext
    model = create_model("ViT-tiny-test")
    trainer = Trainer(model, Pairs(), TrainConfig(max_steps=1, batch_size=4, progress=False, tensorboard=False),
                      tmp_path, val_data=Pairs())
    model.train()
    model.visual.eval()
    assert trainer._latency(model, torch.device("cpu"), nullcontext)["batch_1"]["n"] > 0
    assert model.training and not model.visual.training and not model.visual.transformer.blocks[0].training
