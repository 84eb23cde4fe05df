"""One run's speed and memory: wall time, per-batch model latency, items/s, peak RSS and peak CUDA memory.

Usage::

    meter = Meter(device)
    with meter:                       # wall time of the whole run (re-enterable: times add up)
        for batch in loader:
            with meter.batch(len(batch)):
                model(batch)          # latency of this block, synchronised on CUDA
    meter.items_per_s, meter.latency_ms(), meter.peak_rss_bytes, meter.peak_cuda_bytes

Wall time includes whatever the loop does besides the model (data loading); ``model_s`` only the
``batch`` blocks, so the two rates say how much a faster data pipeline could gain. Peak RSS is sampled
on entry and after each batch (cheap: no thread), the CUDA peak is the allocator's own counter, reset on
entry, and ``max_rss_bytes`` is the process's lifetime peak (it includes everything that ran before).
Evaluation reports these as :class:`mmfm.eval.results.PerfStats`.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from .memory import current_rss, lifetime_peak_rss


def rate(items: int, seconds: float) -> float:
    """Items per second; NaN when no time was measured (an empty or cached pass), never a division error."""
    return items / seconds if seconds > 0 else float("nan")


class Meter:
    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.latencies: list[float] = []   # seconds per batch block
        self.num_items = 0
        self.total_s = 0.0
        self.peak_rss_bytes = 0
        self._t0 = 0.0

    def __enter__(self) -> "Meter":
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
        """Time one model call over ``n`` items (synchronised before and after on CUDA)."""
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
        self.peak_rss_bytes = max(self.peak_rss_bytes, current_rss())

    @property
    def model_s(self) -> float:
        return float(sum(self.latencies))

    @property
    def items_per_s(self) -> float:
        """End to end (data loading + model)."""
        return rate(self.num_items, self.total_s)

    @property
    def model_items_per_s(self) -> float:
        return rate(self.num_items, self.model_s)

    def latency_ms(self) -> dict[str, float]:
        """Per-batch latency in ms: mean / p50 / p90 / max ({} before the first batch)."""
        lat = np.asarray(self.latencies) * 1000.0
        if not lat.size:
            return {}
        return {"mean": float(lat.mean()), "p50": float(np.percentile(lat, 50)),
                "p90": float(np.percentile(lat, 90)), "max": float(lat.max())}

    @property
    def max_rss_bytes(self) -> int:
        return lifetime_peak_rss()

    @property
    def peak_cuda_bytes(self) -> int | None:
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
