"""Checkpoints: a run killed with SIGKILL and resumed ends with the weights of an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmfm.train.checkpointing import TRAINING_KEYS, atomic_torch_save, latest_valid_checkpoint, list_checkpoints

WORKER = Path(__file__).with_name("train_worker.py")
STEPS = 12


def _cmd(out, delay, steps=STEPS, nan_at=0):
    return [sys.executable, str(WORKER), str(out), str(delay), str(steps), str(nan_at)]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def _final_weights(out):
    steps, path = list_checkpoints(Path(out) / "checkpoints")[-1]
    assert steps == STEPS
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(_cmd(ref, 0.0), env=_env(), check=True, capture_output=True, timeout=300)

    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(run, 0.02), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline:
        done = [s for s, _ in list_checkpoints(run / "checkpoints")]
        if done and max(done) >= 4:
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(s for s, _ in list_checkpoints(run / "checkpoints"))
    assert killed_at < STEPS, "the run finished before it could be killed"

    resumed = subprocess.run(_cmd(run, 0.0), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _final_weights(ref), _final_weights(run)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    # issue 14: the steps run again after the kill are logged once, not twice
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, STEPS + 1))


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path):
    proc = subprocess.run(_cmd(tmp_path, 0.0, steps=STEPS, nan_at=5), env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "TrainingDiverged" in proc.stderr and "loss is nan" in proc.stderr
    kept = list_checkpoints(tmp_path / "checkpoints")
    assert kept and max(s for s, _ in kept) == 4          # steps 2 and 4 were saved; 5 diverged
    path, ckpt = latest_valid_checkpoint(tmp_path / "checkpoints")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_atomic_save_and_corrupt_checkpoint_is_skipped(tmp_path):
    ckpt = {k: {} for k in TRAINING_KEYS}
    atomic_torch_save(ckpt | {"model": {"x": torch.ones(3)}}, tmp_path / "ckpt-00000001.pt")
    atomic_torch_save(ckpt | {"model": {"x": torch.zeros(3)}}, tmp_path / "ckpt-00000002.pt")
    data = (tmp_path / "ckpt-00000002.pt").read_bytes()
    (tmp_path / "ckpt-00000002.pt").write_bytes(data[: len(data) // 2])     # torn write from another tool
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        path, ckpt = latest_valid_checkpoint(tmp_path)
    assert path.name == "ckpt-00000001.pt" and ckpt["model"]["x"].sum() == 3
