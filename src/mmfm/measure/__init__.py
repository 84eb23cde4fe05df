"""Measurement layer: parameters, peak memory, latency, throughput; attached to every report."""
from .memory import MemoryStats, current_rss, track_memory
from .params import ParamCount, count_parameters, weight_memory
from .timing import LatencyStats, measure_latency, timer

__all__ = ["MemoryStats", "current_rss", "track_memory", "ParamCount", "count_parameters", "weight_memory",
           "LatencyStats", "measure_latency", "timer"]
