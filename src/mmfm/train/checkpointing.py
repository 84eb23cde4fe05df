"""Training checkpoints: written atomically, pruned to the last N (+ best), resumed from the newest valid one.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python containers, so it
loads with ``weights_only=True`` (no code runs on load). Atomicity: write to a temporary file in the
same folder, fsync it, then ``os.replace`` it into place; a crash or SIGKILL at any moment leaves
either the old file or the new one, never a torn one (only a stale temporary, which
:func:`remove_stale_temporaries` cleans up).

"Valid" means: loads, and holds every entry a resume needs (:data:`TRAINING_KEYS`). Only valid
checkpoints count toward ``keep_last``, so a damaged or foreign file with a high step number can
never get the good ones pruned.
"""
from __future__ import annotations

import errno
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..util.atomic import atomic_torch_save, stale_temporaries  # atomic_torch_save re-exported for tests

CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")
TRAINING_KEYS = ("model", "optimizer", "scheduler", "rng", "state")
# how torch.save's C++ writer reports a short write (a full disk)
_SHORT_WRITE = ("unexpected pos", "write failed", "iostream error")


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CKPT_RE.match(p.name))]
    return sorted(found)


def load_checkpoint(path: str | Path, map_location="cpu", mmap: bool = False) -> dict[str, Any]:
    """A training checkpoint; ``RuntimeError`` naming the file if it cannot be read or is incomplete."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # truncated / corrupt / not a checkpoint
        raise RuntimeError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from e
    missing = [k for k in TRAINING_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise RuntimeError(f"checkpoint {path} is not a training checkpoint (missing {missing})")
    return ckpt


def is_valid_checkpoint(path: str | Path) -> bool:
    """Cheap validity check: mmap keeps tensor data on disk, only the structure is read."""
    try:
        load_checkpoint(path, mmap=True)
        return True
    except RuntimeError:
        return False


def latest_valid_checkpoint(folder: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """Newest checkpoint that loads; a damaged newer one is reported and skipped."""
    for _, path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path)
        except RuntimeError as e:
            warnings.warn(f"skipping unreadable checkpoint: {e}")
    return None


def prune_checkpoints(folder: str | Path, keep_last: int) -> None:
    """Delete valid checkpoints older than the newest ``keep_last`` valid ones.

    Invalid files are neither counted nor deleted: they are left for the user to look at (the resume
    warning names them), and deleting what we cannot read would not make anything safer.
    """
    kept = 0
    for _, path in reversed(list_checkpoints(folder)):
        if not is_valid_checkpoint(path):
            continue
        if kept < keep_last:
            kept += 1
        else:
            path.unlink(missing_ok=True)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries a killed writer left in ``folder`` (they are never complete files)."""
    stale = stale_temporaries(folder)
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    """Atomic save; a failed write (usually a full disk) becomes one clear ``OSError``.

    torch reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc:672] ...
    unexpected pos``, which names neither the file nor the cause. The atomic writer has already
    removed its temporary, so the previous checkpoints are untouched.
    """
    path = Path(path)
    try:
        atomic_torch_save(obj, path)
    except (OSError, RuntimeError) as e:
        if isinstance(e, OSError) and e.errno:
            code = e.errno
        elif any(words in str(e) for words in _SHORT_WRITE):
            code = errno.ENOSPC
        else:
            raise
        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
        reason = "the disk is full" if code == errno.ENOSPC else os.strerror(code)
        raise OSError(code, f"cannot write checkpoint {path.name} to {path.parent} ({reason}; "
                            f"{free / 2**20:.1f} MiB free there); the previous checkpoints are intact: make room or "
                            f"choose another output folder, then rerun the same command to resume") from e
