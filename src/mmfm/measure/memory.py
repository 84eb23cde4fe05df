"""Peak memory: process RSS (CPU) and CUDA allocator peaks, measured around any phase."""
from __future__ import annotations

import os
import resource
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

try:
    import psutil
except ImportError:  # psutil is a dependency, but keep measurement optional
    psutil = None


def current_rss() -> int:
    """The process's resident set size now, in bytes (without psutil: the lifetime peak, an upper bound)."""
    if psutil is not None:
        return psutil.Process(os.getpid()).memory_info().rss
    return lifetime_peak_rss()


def lifetime_peak_rss() -> int:
    """The process's peak resident set size so far, in bytes (``getrusage``: KiB on Linux, bytes on macOS)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


@dataclass
class MemoryStats:
    peak_rss_bytes: int = 0          # peak resident set size during the phase (sampled + ru_maxrss bound)
    start_rss_bytes: int = 0
    peak_cuda_bytes: int | None = None

    def to_dict(self) -> dict:
        return {"peak_rss_mb": self.peak_rss_bytes / 2 ** 20, "start_rss_mb": self.start_rss_bytes / 2 ** 20,
                "peak_cuda_mb": None if self.peak_cuda_bytes is None else self.peak_cuda_bytes / 2 ** 20}


@contextmanager
def track_memory(interval: float = 0.05):
    """Track peak CPU RSS (a sampling thread) and peak CUDA memory (the allocator's own counter).

    ru_maxrss is the process's lifetime peak, so it cannot tell phases apart; the sampler can.
    """
    stats = MemoryStats(start_rss_bytes=current_rss())
    stats.peak_rss_bytes = stats.start_rss_bytes
    stop = threading.Event()

    def sample():
        while not stop.wait(interval):
            stats.peak_rss_bytes = max(stats.peak_rss_bytes, current_rss())

    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield stats
    finally:
        stop.set()
        thread.join()
        stats.peak_rss_bytes = max(stats.peak_rss_bytes, current_rss())
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            stats.peak_cuda_bytes = torch.cuda.max_memory_allocated()
