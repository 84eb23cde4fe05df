"""Batched feature extraction (images and texts).

Every evaluation starts by running the model once over a dataset. That pass is the expensive part,
so it is done in one place, measured (:class:`PerfMeter`) and cached (:mod:`mmfm.eval.cache`):
a linear probe's C sweep, few-shot episodes over many seeds, or a zero-shot run after a linear probe
on the same weights all reuse the same features.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..measure.meter import Meter
from ..util.modes import eval_mode  # noqa: F401  (re-exported)
from ..util.weights import model_fingerprint
from .cache import FeatureCache, cache_key, dataset_key, get_cache
from .results import PerfStats

FeatureKind = Literal["pre_projection", "embedding"]
FEATURE_KINDS = ("pre_projection", "embedding")


# ---------------------------------------------------------------------------------------------
# Performance measurement
class PerfMeter(Meter):
    """:class:`mmfm.measure.Meter` (wall time, per-batch latency, peak RSS / CUDA) reported as :class:`PerfStats`,
    the speed-and-memory record every evaluation result carries."""

    def stats(self) -> PerfStats:
        cuda = self.peak_cuda_bytes
        return PerfStats(num_items=self.num_items, total_s=self.total_s, model_s=self.model_s,
                         num_batches=len(self.latencies), batch_latency_ms=self.latency_ms(),
                         peak_rss_mb=self.peak_rss_bytes / 2 ** 20 if self.peak_rss_bytes else None,
                         max_rss_mb=self.max_rss_bytes / 2 ** 20,
                         peak_cuda_mb=None if cuda is None else cuda / 2 ** 20, device=str(self.device))


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
