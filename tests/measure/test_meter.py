"""The one run meter (mmfm.measure.Meter): what eval's PerfMeter reports is measured here."""
import math

import torch

from mmfm.measure import Meter, current_rss, lifetime_peak_rss


def _work():
    torch.randn(64, 64) @ torch.randn(64, 64)


def test_counts_batches_items_and_times():
    meter = Meter("cpu")
    with meter:
        for n in (4, 4, 2):
            with meter.batch(n):
                _work()
    assert meter.num_items == 10 and len(meter.latencies) == 3
    assert meter.total_s >= meter.model_s > 0
    assert meter.items_per_s == 10 / meter.total_s and meter.model_items_per_s == 10 / meter.model_s
    lat = meter.latency_ms()
    assert set(lat) == {"mean", "p50", "p90", "max"}
    assert lat["max"] >= lat["p90"] >= lat["p50"] > 0
    assert math.isclose(lat["mean"], meter.model_s * 1000 / 3)


def test_memory_peaks_on_cpu():
    meter = Meter("cpu")
    with meter:
        with meter.batch(1):
            _work()
    assert meter.peak_rss_bytes > 0 and meter.peak_cuda_bytes is None
    assert 0 < meter.max_rss_bytes <= lifetime_peak_rss()   # the process high-water mark: it only grows
    assert current_rss() > 0


def test_wall_time_adds_up_over_entries_and_an_unused_meter_is_empty():
    meter = Meter()
    assert meter.latency_ms() == {} and math.isnan(meter.items_per_s) and meter.model_s == 0
    with meter:
        pass
    first = meter.total_s
    with meter:
        with meter.batch(2):
            _work()
    assert meter.total_s > first and meter.num_items == 2
