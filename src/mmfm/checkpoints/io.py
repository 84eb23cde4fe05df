"""Reading and writing weight files without ever executing code from them.

Pickle-based checkpoints can run arbitrary code when loaded, so:

* ``.safetensors`` (preferred) is read with ``safetensors``;
* ordinary ``torch.save`` files go through ``torch.load(..., weights_only=True)``;
* TorchScript archives (OpenAI's released ``.pt`` files) are refused by ``weights_only`` and
  ``torch.jit.load`` would run their code, so they are read by ``_TorchScriptUnpickler``: a pickle
  reader that knows how to rebuild tensors and stands in inert placeholders for TorchScript modules,
  and refuses anything else.

Writing goes through :mod:`mmfm.util.atomic` (temporary file in the destination folder, fsync, rename).
"""
from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..util.atomic import atomic_save_safetensors as _atomic_save_safetensors
from ..util.atomic import atomic_write, atomic_write_json, fsync_dir  # noqa: F401  (re-exported)
from .validate import CheckpointError

# Top-level keys under which training scripts nest the weights ({"epoch": .., "state_dict": {..}}).
_NESTING_KEYS = ("state_dict", "model", "module")
# Prefixes added by DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


# ------------------------------------------------------------------------------------------
# Sniffing
def _is_safetensors(path: Path) -> bool:
    # An 8-byte little-endian header length followed by a JSON object.
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return struct.unpack("<Q", head[:8])[0] <= path.stat().st_size


def _torchscript_prefix(zf: zipfile.ZipFile) -> str | None:
    """The archive's top folder if it is a TorchScript archive (it has ``constants.pkl``), else None."""
    for name in zf.namelist():
        parts = name.split("/")
        if len(parts) == 2 and parts[1] == "constants.pkl":
            return parts[0]
    return None


# A zip record may be deflated: a few hundred KB of zeros inflate to a GB. torch never compresses the
# records it writes, so a file whose records inflate far beyond its own size is refused before reading.
MAX_INFLATION = 4
INFLATION_SLACK = 64 << 20


def check_zip_inflation(zf: zipfile.ZipFile, path: Path) -> None:
    """Raise ``CheckpointError`` if the archive's records add up to more than a few times the file."""
    size = path.stat().st_size
    total = sum(info.file_size for info in zf.infolist())
    if total > MAX_INFLATION * size + INFLATION_SLACK:
        raise CheckpointError(f"{path}: its zip records would inflate to {total / 2**20:.0f} MiB from a "
                              f"{size / 2**20:.1f} MiB file (compressed records; torch writes none); refusing to read it")


def check_backed_by_file(sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ``CheckpointError`` if the tensors claim more bytes than their storages hold.

    A pickled tensor is a view (size, stride, offset) of a stored buffer, so a 4-byte storage can be
    "expanded" to a GB with stride 0, or views can overlap; anything that later copies such a tensor
    (a transpose, a load into a model built from its shape) allocates the claim. Tensors that are the
    same view under several names (tied weights) count once.
    """
    views, storages = {}, {}
    for name, t in sd.items():
        storage = t.untyped_storage()
        key = (storage.data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        views.setdefault(key, (name, t.numel() * t.element_size()))
        storages[storage.data_ptr()] = storage.nbytes()
    claimed, stored = sum(n for _, n in views.values()), sum(storages.values())
    if claimed > stored:
        name, nbytes = max(views.values(), key=lambda v: v[1])
        raise CheckpointError(f"{source}: its tensors claim {claimed:,} bytes, more than the file stores ({stored:,}): "
                              f"broadcast (stride-0) or overlapping views, e.g. {name!r} ({nbytes:,} bytes); "
                              "re-save them with .contiguous().clone()")


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive (as OpenAI's released ``.pt`` files are)."""
    if not Path(path).is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return _torchscript_prefix(zf) is not None
    except zipfile.BadZipFile:
        return False


# ------------------------------------------------------------------------------------------
# TorchScript archives
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _ScriptObject:
    """Inert stand-in for a pickled TorchScript module: it only remembers its attribute dict."""

    qualified_name = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, requires_grad=False, hooks=None, metadata=None):
    # ``storage`` is a flat tensor over the record's bytes; a pickled tensor is a strided view of it.
    needed = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1 if all(size) else 0
    if needed > storage.numel():
        raise CheckpointError(f"tensor view of {tuple(size)} exceeds its storage of {storage.numel()} elements")
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _identity(value, *_):
    return value


# The only callables a TorchScript data.pkl may reference; all of them just rebuild data.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.jit._pickle", "restore_type_tag"): _identity,
    **{("torch.jit._pickle", f"build_{k}list"): _identity for k in ("int", "double", "bool", "tensor")},
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _TorchScriptUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, read_record: Callable[[str], bytes], source: str):
        import io
        super().__init__(io.BytesIO(data))
        self._read_record = read_record
        self._source = source
        self._storages: dict[str, torch.Tensor] = {}
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module.startswith("__torch__"):
            # TorchScript module classes: never imported, replaced by an inert placeholder type.
            qualified = f"{module}.{name}"
            if qualified not in self._classes:
                self._classes[qualified] = type(name, (_ScriptObject,), {"qualified_name": qualified})
            return self._classes[qualified]
        raise CheckpointError(f"{self._source}: refusing to load global {module}.{name} from a TorchScript archive "
                              "(only tensors and module attributes are read)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"{self._source}: unsupported persistent id {pid!r} in TorchScript archive")
        _, stype, key, _location, numel = pid
        if key not in self._storages:
            raw = self._read_record(str(key))
            itemsize = torch.empty((), dtype=stype.dtype).element_size()
            if len(raw) != numel * itemsize:
                raise CheckpointError(f"{self._source}: storage {key} has {len(raw)} bytes, expected {numel * itemsize} "
                                      "(truncated or corrupt archive)")
            flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
            self._storages[key] = flat.view(stype.dtype)
        return self._storages[key]


def _flatten_script_module(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        return
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _flatten_script_module(value, f"{prefix}{name}.", out)


def read_torchscript_archive(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensor attributes of a TorchScript archive, by dotted module path, without running its code.

    Parameters, buffers and plain tensor attributes are indistinguishable in the archive, so the
    result can hold a few extras (e.g. ``attn_mask``, ``input_resolution``); callers drop those.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            prefix = _torchscript_prefix(zf)
            if prefix is None:
                raise CheckpointError(f"{path} is not a TorchScript archive (no constants.pkl)")
            check_zip_inflation(zf, path)
            names = set(zf.namelist())
            if f"{prefix}/byteorder" in names and zf.read(f"{prefix}/byteorder").strip() not in (b"little", b""):
                raise CheckpointError(f"{path}: big-endian TorchScript archives are not supported")

            def read_record(key: str) -> bytes:
                name = f"{prefix}/data/{key}"
                if name not in names:
                    raise CheckpointError(f"{path}: storage record {name} is missing (truncated or corrupt archive)")
                return zf.read(name)

            root = _TorchScriptUnpickler(zf.read(f"{prefix}/data.pkl"), read_record, str(path)).load()
    except CheckpointError:
        raise
    except Exception as e:  # zipfile.BadZipFile, pickle errors, CRC errors, ...
        raise CheckpointError(f"cannot read TorchScript archive {path}: {type(e).__name__}: {e}") from e
    out: dict[str, torch.Tensor] = {}
    _flatten_script_module(root, "", out)
    if not out:
        raise CheckpointError(f"{path}: the TorchScript archive holds no tensors")
    check_backed_by_file(out, str(path))
    return out


# ------------------------------------------------------------------------------------------
# Reading
def unwrap_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The flat {name: tensor} mapping inside a loaded checkpoint object.

    Follows ``state_dict``/``model``/``module`` nesting, drops non-tensor entries (epoch counters,
    names) and strips ``module.``/``_orig_mod.`` prefixes that DDP and ``torch.compile`` add.
    """
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{source}: no tensors found (top-level keys: {sorted(map(str, obj))[:10]})")
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _shard_roots(folder: Path) -> list[Path]:
    """Where an index's shards may really live: its folder, and for a huggingface_hub cache snapshot
    (``snapshots/<rev>/<file>`` linking to ``../../blobs/<hash>``) that repo's blobs folder."""
    roots = [folder.resolve()]
    if folder.parent.name == "snapshots":
        roots.append((folder.parent.parent / "blobs").resolve())
    return roots


def _shard_path(index_path: Path, shard: Any, roots: list[Path]) -> Path:
    # An index is untrusted: it must not make us read tensors from any other file on the machine.
    if not isinstance(shard, str) or not shard:
        raise CheckpointError(f"{index_path}: weight_map values must be shard file names, got {shard!r}")
    if os.path.isabs(shard) or "\\" in shard or ".." in shard.split("/") or shard.endswith(".index.json"):
        raise CheckpointError(f"{index_path}: weight_map names {shard!r}, outside its folder or not a shard; "
                              "shards must be plain file names next to the index")
    path = index_path.parent / shard
    real = path.resolve()
    if not any(real == r or r in real.parents for r in roots):
        raise CheckpointError(f"{index_path}: shard {shard!r} links to {real}, outside its folder; copy the shard "
                              "into the folder instead")
    return path


def _load_sharded(index_path: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except Exception as e:
        raise CheckpointError(f"cannot read shard index {index_path}: {type(e).__name__}: {e}") from e
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: weight_map is a {type(weight_map).__name__}, expected a non-empty mapping "
                              "of tensor names to shard files")
    roots = _shard_roots(index_path.parent)
    shards = {_shard_path(index_path, shard, roots) for shard in weight_map.values()}
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(shards):
        out.update(load_state_dict_file(shard))
    missing = sorted(set(weight_map) - set(out))
    if missing:
        raise CheckpointError(f"{index_path}: {len(missing)} tensor(s) listed in the index are in no shard: {missing[:5]}")
    return out


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read any supported weights file into a flat {name: tensor} dict on the CPU, safely.

    Supports ``.safetensors``, ``torch.save`` files (``.pt``/``.pth``/``.bin``, nested under
    ``state_dict`` or prefixed with ``module.``), TorchScript archives, and HF shard indexes
    (``*.index.json``). Any failure raises ``CheckpointError`` naming the file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    if path.name.endswith(".index.json"):
        return _load_sharded(path)
    if path.suffix == ".safetensors" or _is_safetensors(path):
        from safetensors.torch import load_file
        try:
            sd = load_file(str(path), device="cpu")
        except Exception as e:
            raise CheckpointError(f"cannot read safetensors file {path} (truncated or corrupt?): {e}") from e
        if not sd:
            raise CheckpointError(f"{path}: the safetensors file holds no tensors")
        return unwrap_state_dict(sd, str(path))
    if is_torchscript_archive(path):
        return read_torchscript_archive(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                check_zip_inflation(zf, path)
        except zipfile.BadZipFile:
            pass   # torch.load reports it below
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"cannot read checkpoint {path} (truncated, corrupt, or not a weights-only file; "
                              f"arbitrary pickles are never loaded): {type(e).__name__}: {first}") from e
    sd = unwrap_state_dict(obj, str(path))
    check_backed_by_file(sd, str(path))
    return sd


# ------------------------------------------------------------------------------------------
# Writing
def tensors_for_saving(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors with no two sharing storage (what safetensors requires)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, str]] = set()
    for k, v in state_dict.items():
        t = v.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), str(t.device))
        if key in seen or t.numel() != t.untyped_storage().nbytes() // max(t.element_size(), 1):
            t = t.clone()   # a shared or partially used storage would be written (or refused) as a whole
        seen.add((t.untyped_storage().data_ptr(), str(t.device)))
        out[k] = t
    return out


def atomic_save_safetensors(path: Path, state_dict: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    _atomic_save_safetensors(path, tensors_for_saving(state_dict), metadata)
