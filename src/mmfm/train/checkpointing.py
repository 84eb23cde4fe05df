"""Training checkpoints: written atomically, pruned to the last N (+ best), resumed from the newest valid one.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python containers, so it
loads with ``weights_only=True`` (no code runs on load). Atomicity: write to a temporary file in the
same folder, fsync it, then ``os.replace`` it into place; a crash or SIGKILL at any moment leaves
either the old file or the new one, never a torn one.
"""
from __future__ import annotations

import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..util.atomic import atomic_torch_save  # noqa: F401  (re-exported: the trainer and tests use it here)

CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")


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


def load_checkpoint(path: str | Path, map_location="cpu") -> dict[str, Any]:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated / corrupt / not a checkpoint
        raise RuntimeError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from e


def latest_valid_checkpoint(folder: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """Newest checkpoint that loads; a damaged newer one is reported and skipped."""
    for _, path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path)
        except RuntimeError as e:
            warnings.warn(f"skipping unreadable checkpoint: {e}")
    return None


def prune_checkpoints(folder: str | Path, keep_last: int) -> None:
    ckpts = list_checkpoints(folder)
    for _, path in ckpts[:max(len(ckpts) - keep_last, 0)]:
        path.unlink(missing_ok=True)
