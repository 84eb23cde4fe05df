"""Batched feature extraction (images and texts), its cache, and speed/memory measurement.

Every evaluation starts by running the model once over a dataset. That pass is the expensive part,
so it is done in one place, measured (:class:`PerfMeter`) and cached (:class:`FeatureCache`):
a linear probe's C sweep, few-shot episodes over many seeds, or a zero-shot run after a linear probe
on the same weights all reuse the same features.

Cache keys are built from a fingerprint of the model's *weights and architecture* (not the object
identity, so a reloaded checkpoint hits the cache and a fine-tuned one, or one with another config,
misses it), a description of the dataset, the feature kind and the image transform.
"""
from __future__ import annotations

import hashlib
import json
import resource
import sys
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..models.precision import state_tensors
from ..util.weights import Stamp, architecture_key
from ..util.modes import eval_mode  # noqa: F401  (re-exported)
from .results import PerfStats

FeatureKind = Literal["pre_projection", "embedding"]
FEATURE_KINDS = ("pre_projection", "embedding")


# ---------------------------------------------------------------------------------------------
# Fingerprints
# Memo per model object (weak: it dies with the model, so a new model at a reused id never hits it).
_FP_MEMO: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def model_fingerprint(model: nn.Module) -> str:
    """A hash of the model's architecture and of every parameter and buffer (names, dtypes, shapes, values).

    Two models with equal weights *and* equal architecture (config, module types and settings, LoRA
    scales: ``mmfm.util.weights.architecture_key``) get equal fingerprints whatever their object identity,
    so reloaded weights hit a cache; a GELU and a QuickGELU model with equal weights do not share one.
    The hash is memoised per object and recomputed whenever mmfm's weights-version mechanism says a
    tensor may have changed (any optimizer step, fused or not; ``load_state_dict``; LoRA and WiSE-FT
    mutations; a tensor replaced or modified in place), so a model being trained never reuses a stale one.
    """
    arch = architecture_key(model)
    named = state_tensors(model)   # int8 models' packed weights as tensors too
    names, tensors = [n for n, _ in named], [t for _, t in named]
    hit = _FP_MEMO.get(model)
    if hit is not None and hit[0] == arch and hit[1] == names and hit[2].matches(tensors):
        return hit[3]
    # Taken before hashing (a write during the hash invalidates it); not holding the storages: the memo must
    # not keep weights alive (model.cpu() would leave the old GPU copy allocated).
    stamp = Stamp(tensors, hold=False)
    h = hashlib.blake2b(digest_size=16)
    h.update(arch.encode())
    for name, t in named:
        t = t.detach()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # Byte view works for every dtype (bf16 has no numpy equivalent).
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    fp = h.hexdigest()
    _FP_MEMO[model] = (arch, names, stamp, fp)
    return fp


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


# ---------------------------------------------------------------------------------------------
# Cache
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
            from ..util.atomic import atomic_save_safetensors
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


# ---------------------------------------------------------------------------------------------
# Performance measurement
class PerfMeter:
    """Wall time, per-batch model latency, peak RSS and peak CUDA memory of one pass.

    Usage::

        meter = PerfMeter(device)
        with meter:                       # total time
            for batch in loader:
                with meter.batch(len(batch)):
                    model(batch)          # latency of this block, synchronised on CUDA
        stats = meter.stats()
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.latencies: list[float] = []
        self.num_items = 0
        self.total_s = 0.0
        self.peak_rss = 0
        self._t0 = 0.0
        try:
            import psutil
            self._proc = psutil.Process()
        except ImportError:  # psutil is optional: fall back to getrusage only
            self._proc = None

    def __enter__(self) -> "PerfMeter":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._sample_rss()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.total_s += time.perf_counter() - self._t0

    @contextmanager
    def batch(self, n: int) -> Iterator[None]:
        self._sync()
        t = time.perf_counter()
        yield
        self._sync()
        self.latencies.append(time.perf_counter() - t)
        self.num_items += n
        self._sample_rss()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _sample_rss(self) -> None:
        if self._proc is not None:
            self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)

    def stats(self) -> PerfStats:
        lat = np.asarray(self.latencies) * 1000.0
        latency = {"mean": float(lat.mean()), "p50": float(np.percentile(lat, 50)),
                   "p90": float(np.percentile(lat, 90)), "max": float(lat.max())} if lat.size else {}
        # ru_maxrss is in KiB on Linux, bytes on macOS.
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        maxrss_mb = maxrss / (1024 ** 2 if sys.platform == "darwin" else 1024)
        cuda = None
        if self.device.type == "cuda":
            cuda = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        return PerfStats(num_items=self.num_items, total_s=self.total_s, model_s=float(lat.sum() / 1000.0),
                         num_batches=len(self.latencies), batch_latency_ms=latency,
                         peak_rss_mb=self.peak_rss / 2 ** 20 if self.peak_rss else None, max_rss_mb=maxrss_mb,
                         peak_cuda_mb=cuda, device=str(self.device))


# ---------------------------------------------------------------------------------------------
# Image features
@dataclass
class FeatureSet:
    """Features of a whole dataset, in dataset order. ``labels[i] = -1`` where a sample has none."""

    features: torch.Tensor          # float32, CPU, [N, D]
    labels: torch.Tensor            # int64, CPU, [N]
    perf: PerfStats | None = None
    key: str = ""
    skipped: dict[int, str] = field(default_factory=dict)   # unreadable images: index -> why (zero row, label -1)

    def __len__(self) -> int:
        return self.features.shape[0]

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        return self.features.numpy(), self.labels.numpy()


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    try:
        return next(model.parameters()).dtype
    except StopIteration:
        return torch.float32


def default_transform(model: nn.Module) -> Callable:
    """CLIP's eval preprocessing (bicubic resize, centre crop, CLIP mean/std) at the model's image size."""
    from ..data.transforms import image_transform
    size = model.config.vision.image_size if hasattr(model, "config") else getattr(model, "image_size")
    return image_transform(size, train=False)


class _ImageLabelView(Dataset):
    """(image tensor, label) pairs of a MultimodalDataset, for a DataLoader (picklable for workers)."""

    def __init__(self, dataset, transform: Callable, attribute: str | None):
        self.dataset, self.transform, self.attribute = dataset, transform, attribute

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:   # the transform too: lazily decoded images only fail there
            sample = self.dataset[i]
            image = self.transform(sample.image)
        except OSError as exc:   # ImageLoadError, truncated files: skipped and named, as training does
            return None, -1, i, str(exc)
        label = sample.label if self.attribute is None else sample.attributes.get(self.attribute)
        return image, -1 if label is None else int(label), i, None


def _collate_readable(batch):
    """Stack the readable items; hand the unreadable ones' (index, reason) on separately."""
    ok = [b for b in batch if b[0] is not None]
    images = torch.stack([b[0] for b in ok]) if ok else None
    labels = torch.tensor([b[1] for b in ok], dtype=torch.long)
    index = torch.tensor([b[2] for b in ok], dtype=torch.long)
    return images, labels, index, [(b[2], b[3]) for b in batch if b[0] is None]


def _forward_images(model: nn.Module, images: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "embedding":
        return model.encode_image(images)
    if kind == "pre_projection":
        return model.image_features(images)
    raise ValueError(f"feature kind {kind!r} is not one of {FEATURE_KINDS}")


def extract_image_features(model: nn.Module, dataset, *, kind: FeatureKind = "embedding",
                           attribute: str | None = None, batch_size: int = 64, num_workers: int = 0,
                           device: str | torch.device | None = None, transform: Callable | None = None,
                           cache: FeatureCache | str | Path | None = None, use_cache: bool = True,
                           progress: bool = True, desc: str | None = None) -> FeatureSet:
    """Run the image tower over ``dataset`` once and return features + labels.

    kind: ``"embedding"`` (after the projection, what zero-shot and retrieval compare, *not*
        normalised: normalise yourself) or ``"pre_projection"`` (``model.image_features``, the
        usual linear-probe input).
    attribute: which label to return (``Sample.attributes[attribute]``; None = ``Sample.label``).
    cache: None = the in-memory cache; a folder = also on disk; ``use_cache=False`` bypasses both.
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"feature kind {kind!r} is not one of {FEATURE_KINDS}")
    device = torch.device(device) if device is not None else model_device(model)
    transform = transform or default_transform(model)
    store = get_cache(cache)
    key = cache_key("image", model_fingerprint(model), dataset_key(dataset), kind, attribute, repr(transform))
    if use_cache:
        hit = store.get(key)
        if hit is not None:
            perf = PerfStats.from_dict(json.loads(hit.metadata["perf"])) if "perf" in hit.metadata else None
            if perf is not None:
                perf.cached = True
            skipped = {int(i): why for i, why in json.loads(hit.metadata.get("skipped", "{}")).items()}
            return FeatureSet(hit.tensors["features"], hit.tensors["labels"], perf, key, skipped)

    loader = DataLoader(_ImageLabelView(dataset, transform, attribute), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=False, collate_fn=_collate_readable)
    dtype = model_dtype(model)
    feats, labels, indices, skipped = [], [], [], {}
    meter = PerfMeter(device)
    from tqdm.auto import tqdm
    with eval_mode(model), torch.inference_mode(), meter:
        for images, y, index, failed in tqdm(loader, desc=desc or f"{kind} features", disable=not progress,
                                             leave=False):
            for i, why in failed:
                warnings.warn(f"skipping unreadable image {i} of {getattr(dataset, 'name', 'the dataset')}: {why}")
                skipped[i] = why
            if images is None:
                continue
            with meter.batch(len(y)):
                out = _forward_images(model, images.to(device, dtype, non_blocking=True), kind)
                feats.append(out.float().cpu())
            labels.append(y)
            indices.append(index)
    # Rows stay in dataset order; an unreadable image keeps a zero row and label -1 (ignored as unlabelled).
    dim = feats[0].shape[1] if feats else 0
    features = torch.zeros(len(dataset), dim)
    labels_t = torch.full((len(dataset),), -1, dtype=torch.long)
    if feats:
        index_t = torch.cat(indices)
        features[index_t] = torch.cat(feats)
        labels_t[index_t] = torch.cat(labels).long()
    perf = meter.stats()
    if use_cache:
        meta = {"perf": json.dumps(perf.to_dict()), "kind": kind, "dataset": dataset_key(dataset)[:500],
                "skipped": json.dumps(skipped)}
        store.put(key, {"features": features, "labels": labels_t}, metadata=meta)
    return FeatureSet(features, labels_t, perf, key, skipped)


# ---------------------------------------------------------------------------------------------
# Text features
def get_text_tokenizer(model: nn.Module, tokenizer: Callable | None = None) -> Callable[[list[str]], torch.Tensor]:
    """The given tokenizer, or mmfm's CLIP BPE tokenizer at the model's context length."""
    if tokenizer is not None:
        return tokenizer
    if hasattr(model, "get_tokenizer"):      # a model whose text tower has its own vocabulary
        return model.get_tokenizer()
    from ..tokenizer import get_tokenizer   # imported lazily: only text evaluations need it
    return get_tokenizer(model.context_length)


def encode_texts(model: nn.Module, texts: Sequence[str], *, tokenizer: Callable | None = None,
                 batch_size: int = 256, device: str | torch.device | None = None, normalize: bool = True,
                 progress: bool = False, desc: str = "text features", meter: PerfMeter | None = None) -> torch.Tensor:
    """Text embeddings ``[len(texts), D]`` (float32, CPU), L2-normalised by default."""
    device = torch.device(device) if device is not None else model_device(model)
    tok = get_text_tokenizer(model, tokenizer)
    out = []
    from tqdm.auto import tqdm
    with eval_mode(model), torch.inference_mode():
        for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress, leave=False):
            chunk = list(texts[start:start + batch_size])
            ids = tok(chunk).to(device)
            if meter is not None:
                with meter.batch(len(chunk)):
                    emb = model.encode_text(ids, normalize=normalize)
            else:
                emb = model.encode_text(ids, normalize=normalize)
            out.append(emb.float().cpu())
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)
