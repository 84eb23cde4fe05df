"""Fault injection: damaged checkpoints, SIGKILL at random moments and in the middle of a checkpoint
write, Ctrl-C, and a disk that fills up. After each, the same command resumes to the weights of an
uninterrupted run (or says clearly why it cannot), and nothing that was saved before is lost."""
import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmfm.train.checkpointing import (TRAINING_KEYS, latest_valid_checkpoint, list_checkpoints, load_checkpoint,
                                      prune_checkpoints)
from mmfm.util.atomic import atomic_torch_save, stale_temporaries

WORKER = Path(__file__).with_name("train_worker.py")
STEPS = 6


def _start(out, slow_save=0.0, delay=0.02):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    if slow_save:
        env["MMFM_TEST_SLOW_SAVE"] = str(slow_save)
    return subprocess.Popen([sys.executable, str(WORKER), str(out), str(delay), str(STEPS)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(out):
    proc = _start(out, delay=0.0)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]


def _wait_for(proc, condition, what, timeout=200):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _weights(out):
    step, path = list_checkpoints(Path(out) / "checkpoints")[-1]
    assert step == STEPS
    return load_checkpoint(path)["model"]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    _finish(out)
    return _weights(out)


@pytest.mark.slow
def test_sigkill_mid_checkpoint_write_and_at_a_random_moment_then_resume_is_exact(tmp_path, reference):
    ckpts = tmp_path / "checkpoints"
    # 1. killed while a checkpoint is half written (after step 2's is complete, so the kill loses work)
    proc = _start(tmp_path, slow_save=1.0)
    torn = lambda: [p for p in stale_temporaries(ckpts) if p.stat().st_size and not p.name.startswith(".ckpt-00000002")]  # noqa: E731
    _wait_for(proc, torn, "a checkpoint write began")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (tmp,) = stale_temporaries(ckpts)
    with pytest.raises(RuntimeError):
        load_checkpoint(tmp)                       # really torn
    assert [s for s, _ in list_checkpoints(ckpts)] == [2]   # the complete one is untouched
    # 2. resumed, then killed again at a random moment (whenever it is, the next resume must be exact)
    seed = random.randrange(10**6)
    proc = _start(tmp_path)
    _wait_for(proc, lambda: not stale_temporaries(ckpts), "the stale temporary was removed")
    time.sleep(random.Random(seed).uniform(0.0, 2.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # 3. the same command finishes the run
    _finish(tmp_path)
    assert not stale_temporaries(ckpts)
    _assert_same(reference, _weights(tmp_path))


@pytest.mark.slow
def test_sigint_saves_says_how_to_resume_and_resume_is_exact(tmp_path, reference):
    proc = _start(tmp_path)
    _wait_for(proc, lambda: list_checkpoints(tmp_path / "checkpoints"), "the first checkpoint")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGINT, err[-2000:]       # KeyboardInterrupt re-raised
    step = max(s for s, _ in list_checkpoints(tmp_path / "checkpoints"))
    assert step < STEPS, "the run finished before it could be interrupted"
    assert f"interrupted at step {step}; resume with the same command" in err
    _finish(tmp_path)
    _assert_same(reference, _weights(tmp_path))


def test_damaged_checkpoints_never_cost_a_good_one(tmp_path):
    good = {k: {} for k in TRAINING_KEYS} | {"model": {"w": torch.ones(2)}, "state": {"step": 3}}
    atomic_torch_save(good, tmp_path / "ckpt-00000003.pt")
    damages = {
        "zero bytes": b"",
        "garbage": os.urandom(512),
        "truncated": (tmp_path / "ckpt-00000003.pt").read_bytes()[:300],
    }
    for i, data in enumerate(damages.values()):
        (tmp_path / f"ckpt-{10 + i:08d}.pt").write_bytes(data)
    atomic_torch_save({}, tmp_path / "ckpt-00000020.pt")                      # loads, holds nothing
    atomic_torch_save(torch.ones(3), tmp_path / "ckpt-00000021.pt")           # loads, not a dict
    atomic_torch_save({"model": {"w": torch.ones(2)}}, tmp_path / "ckpt-00000022.pt")   # weights only
    with pytest.warns(UserWarning) as warned:
        path, ckpt = latest_valid_checkpoint(tmp_path)
    assert path.name == "ckpt-00000003.pt" and ckpt["state"]["step"] == 3
    assert len(warned) == 6 and all("ckpt-000000" in str(w.message) for w in warned)
    prune_checkpoints(tmp_path, keep_last=1)
    assert (tmp_path / "ckpt-00000003.pt").exists()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A tmpfs the test can shrink, or a skip where mounting is not permitted."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot mount a tmpfs here (needs root); test_checkpointing.py simulates a full disk instead")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


class Pairs(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"image": torch.randn(3, 32, 32, generator=g), "text": torch.randint(1, 1000, (16,), generator=g)}


def _fit_tiny(out, steps):
    from mmfm.api import create_model
    from mmfm.train import TrainConfig, Trainer
    torch.manual_seed(0)
    cfg = TrainConfig(max_steps=steps, batch_size=4, ckpt_every=1, keep_last=2, progress=False, tensorboard=False)
    return Trainer(create_model("ViT-tiny-test"), Pairs(), cfg, out).fit()


def _resize(mnt, size_bytes):
    subprocess.run(["mount", "-o", f"remount,size={size_bytes // 1024 + 1}k", str(mnt)], check=True, timeout=30)


def test_full_disk_is_one_clear_error_and_the_previous_checkpoint_survives(small_tmpfs):
    out = small_tmpfs / "run"
    _fit_tiny(out, 1)
    ckpts = out / "checkpoints"
    first = (ckpts / "ckpt-00000001.pt").read_bytes()
    _resize(small_tmpfs, shutil.disk_usage(small_tmpfs).used + len(first) // 2)   # no room for a second one
    with pytest.raises(OSError) as info:
        _fit_tiny(out, 2)
    msg = str(info.value)
    assert info.value.errno == errno.ENOSPC and "\n" not in msg
    assert str(ckpts) in msg and "MiB free" in msg and "inline_container" not in msg
    assert [s for s, _ in list_checkpoints(ckpts)] == [1] and not stale_temporaries(ckpts)
    assert (ckpts / "ckpt-00000001.pt").read_bytes() == first
    _resize(small_tmpfs, 64 * 2**20)                   # space made: the same command carries on
    assert _fit_tiny(out, 2).resumed_from_step == 1
