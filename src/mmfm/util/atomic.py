"""The one atomic file writer of mmfm.

Every file mmfm writes that a reader may rely on (checkpoints, weights, configs, reports, cached
features) goes through :func:`atomic_write`: the content is written to a temporary file in the target's
own folder, fsynced, then renamed over the target, and the folder itself is fsynced so the rename is
durable. A crash, SIGKILL or full disk at any moment leaves either the old file or the complete new one,
never a torn one; the temporary file is removed when the write fails in-process.

Temporary names start with ``.<target name>.`` and end with ``.tmp``: :func:`stale_temporaries` finds
those a kill left behind, so the owner of a folder can clean them up.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

TMP_SUFFIX = ".tmp"


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (a no-op where the platform cannot open folders)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], mode: int = 0o644) -> None:
    """Write ``path`` through ``write(tmp_path)`` so readers see the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, mode)   # mkstemp creates 0600 files; outputs are meant to be shared
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> None:
    dumps_kwargs.setdefault("indent", 2)
    atomic_write_text(path, json.dumps(obj, **dumps_kwargs) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch
    atomic_write(path, lambda p: torch.save(obj, p))


def atomic_save_safetensors(path: str | os.PathLike, tensors: Mapping[str, Any],
                            metadata: dict[str, str] | None = None) -> None:
    """``tensors`` must already be safetensors-ready (contiguous, no shared storage)."""
    from safetensors.torch import save_file
    atomic_write(path, lambda p: save_file(dict(tensors), str(p), metadata=metadata))


def stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Temporary files :func:`atomic_write` left in ``folder`` when a process was killed mid-write."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file())
