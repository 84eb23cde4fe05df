"""The feature cache: tensors computed from a model's weights over a dataset, by key.

A key names everything that fixes the features: the model's content fingerprint
(:func:`mmfm.util.weights.model_fingerprint`: weights and architecture, not the object identity, so a
reloaded checkpoint hits the cache and a fine-tuned one, or one with another config, misses it), a
description of the dataset (:func:`dataset_key`), the feature kind and the image transform. Entries live
in memory (LRU) and, opt-in, on disk as safetensors written atomically.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..util.atomic import atomic_save_safetensors


def dataset_key(dataset: Dataset) -> str:
    """A description of a dataset for cache keys: its ``cache_key()`` if it defines one, else class,
    name, length, ``repr``, every JSON-able attribute (its configuration: split, seed, filters...)
    and the labels/captions of three probe samples.

    The attributes matter: two datasets can share a repr yet differ (e.g. Shapes with and without a
    held-out combination), and reusing one's features for the other would be silently wrong.
    """
    if hasattr(dataset, "cache_key"):
        return str(dataset.cache_key())
    config = {}
    for k, v in sorted(vars(dataset).items()):
        try:
            s = json.dumps(v, sort_keys=True)
        except (TypeError, ValueError):
            continue                      # arrays, images, callables: covered by the probe below
        if len(s) <= 10_000:
            config[k] = s
    n = len(dataset)
    probe = []
    for i in sorted({0, n // 2, n - 1} if n else set()):
        try:
            probe.append([dataset.get_label(i), dataset.get_captions(i)])
        except Exception:                 # not a MultimodalDataset: the rest of the key has to do
            break
    return f"{type(dataset).__module__}.{type(dataset).__qualname__}|{getattr(dataset, 'name', '')}|" \
           f"{n}|{dataset!r}|{cache_key(config, probe)}"


def cache_key(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (used as a cache file name)."""
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


@dataclass
class CacheEntry:
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]


class FeatureCache:
    """Tensors by key, in memory (LRU, ``max_items`` entries) and optionally on disk as safetensors.

    The disk cache is opt-in (``cache_dir``) because its keys rely on ``dataset_key``; a dataset whose
    files change under an unchanged configuration needs its cache folder cleared.
    """

    def __init__(self, cache_dir: str | Path | None = None, max_items: int = 32):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_items = max_items
        self._mem: OrderedDict[str, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            if key in self._mem:
                self._mem.move_to_end(key)
                return self._mem[key]
        if self.cache_dir is not None:
            path = self.cache_dir / f"{key}.safetensors"
            if path.is_file():
                from safetensors import safe_open
                with safe_open(str(path), framework="pt") as f:
                    entry = CacheEntry({k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {}))
                self._remember(key, entry)
                return entry
        return None

    def put(self, key: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
        entry = CacheEntry({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                           {k: str(v) for k, v in (metadata or {}).items()})
        self._remember(key, entry)
        if self.cache_dir is not None:
            atomic_save_safetensors(self.cache_dir / f"{key}.safetensors", entry.tensors, entry.metadata)

    def _remember(self, key: str, entry: CacheEntry) -> None:
        with self._lock:
            self._mem[key] = entry
            self._mem.move_to_end(key)
            while len(self._mem) > self.max_items:
                self._mem.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        return key in self._mem or (self.cache_dir is not None and (self.cache_dir / f"{key}.safetensors").is_file())

    def clear(self) -> None:
        """Forget the in-memory entries (files on disk stay)."""
        with self._lock:
            self._mem.clear()


_DEFAULT_CACHE = FeatureCache()
_DISK_CACHES: dict[str, FeatureCache] = {}


def get_cache(cache: FeatureCache | str | Path | None = None) -> FeatureCache:
    """``None`` -> the process-wide in-memory cache; a path -> a (shared) cache backed by that folder."""
    if isinstance(cache, FeatureCache):
        return cache
    if cache is None:
        return _DEFAULT_CACHE
    key = str(Path(cache).resolve())
    if key not in _DISK_CACHES:
        _DISK_CACHES[key] = FeatureCache(cache)
    return _DISK_CACHES[key]
