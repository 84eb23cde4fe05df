"""Measurement layer: parameters, peak memory, latency, throughput; attached to every report."""
from .memory import MemoryStats, current_rss, lifetime_peak_rss, track_memory
from .meter import Meter, rate
from .params import ParamCount, count_parameters, weight_memory
from .timing import LatencyStats, measure_latency, timer

__all__ = ["MemoryStats", "Meter", "rate", "current_rss", "lifetime_peak_rss", "track_memory", "ParamCount",
           "count_parameters", "weight_memory", "LatencyStats", "measure_latency", "timer"]
