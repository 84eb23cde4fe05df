"""Latency and throughput: per-sample latency statistics and wall-clock timers."""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch


def _sync(device=None):
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize(device)


@dataclass
class LatencyStats:
    batch_size: int
    samples_ms: list[float] = field(default_factory=list)   # per-sample latency of each timed call

    def to_dict(self) -> dict:
        s = sorted(self.samples_ms)
        if not s:
            return {"batch_size": self.batch_size, "n": 0}
        q = lambda f: s[min(len(s) - 1, int(round(f * (len(s) - 1))))]
        return {"batch_size": self.batch_size, "n": len(s), "mean_ms": statistics.fmean(s), "p50_ms": q(0.5),
                "p95_ms": q(0.95), "min_ms": s[0], "max_ms": s[-1],
                "std_ms": statistics.pstdev(s) if len(s) > 1 else 0.0,
                "throughput_per_s": 1000.0 / statistics.fmean(s)}


@torch.inference_mode()
def measure_latency(fn: Callable[[], object], batch_size: int, repeats: int = 20, warmup: int = 3) -> LatencyStats:
    """Time ``fn`` (one batch) ``repeats`` times after ``warmup`` calls; report per-sample latency."""
    for _ in range(warmup):
        fn()
    _sync()
    stats = LatencyStats(batch_size)
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        stats.samples_ms.append((time.perf_counter() - t0) * 1000.0 / batch_size)
    return stats


@contextmanager
def timer():
    """``with timer() as t: ...``; then ``t()`` is the elapsed seconds (also valid inside the block)."""
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    _sync()
    end.append(time.perf_counter())
