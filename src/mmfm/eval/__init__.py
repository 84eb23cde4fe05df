"""Evaluation suite: zero-shot classification, linear probe, image-text retrieval, and the result types.

Python API (each returns a result object with ``to_dict()`` / ``to_markdown()``)::

    from mmfm.eval import zero_shot, linear_probe, retrieval, write_report
    from mmfm.adapt import few_shot
    r1 = zero_shot(model, get_dataset("shapes", split="test"), task="color")
    r2 = linear_probe(model, train_ds, test_ds)
    r3 = few_shot(model, train_ds, test_ds, shots=(1, 2, 4, 8, 16), seeds=(0, 1, 2))
    r4 = retrieval(model, get_dataset("flickr30k", root="~/data/flickr30k", split="test"))
    write_report([r1, r2, r3, r4], "out/")      # results.json + results.md, models side by side

The few-shot evaluation lives with its methods in :mod:`mmfm.adapt` (they are adaptations; this package
gives them the k-shot draw and the episode, :mod:`mmfm.eval.few_shot`), and the table of evaluation
kinds with ``evaluate`` / ``run_eval`` (what ``mmfm eval`` calls) in :mod:`mmfm.evaluate`, above both:
this package never imports :mod:`mmfm.adapt`.

Note: the functions ``zero_shot``, ``linear_probe`` and ``retrieval`` share their names with the
modules that define them, and the package attribute is the *function*. Import helpers from the
modules with ``from mmfm.eval.zero_shot import build_zero_shot_classifier`` (which works);
``import mmfm.eval.zero_shot as m`` gives the function, not the module.
"""
from __future__ import annotations

from ..util.weights import model_fingerprint   # documented in mmfm.util.weights; re-exported for callers
from .cache import FeatureCache
from .features import FeatureSet, PerfMeter, encode_texts, extract_image_features
from .few_shot import FewShotEpisode, sample_k_shot
from .linear_probe import fit_linear_probe, linear_probe, sweep_c
from .protocol import OFFICIAL_VAL_SPLITS, PROTOCOLS, Protocol, get_protocol, official_val_split, protocol_precision
from .published import published_comparison
from .report import comparison_table, load_results, write_report
from .results import (ClassificationMetrics, EvalResult, FewShotResult, LinearProbeResult, PerfStats,
                      RetrievalResult, ZeroShotResult, headline)
from .retrieval import retrieval, retrieval_metrics, retrieval_ranks
from .zero_shot import build_zero_shot_classifier, zero_shot

__all__ = [
    "ClassificationMetrics", "EvalResult", "FeatureCache", "FeatureSet", "FewShotEpisode", "FewShotResult",
    "LinearProbeResult", "PerfMeter", "PerfStats", "RetrievalResult", "ZeroShotResult", "build_zero_shot_classifier",
    "comparison_table", "encode_texts", "extract_image_features", "fit_linear_probe", "headline", "linear_probe",
    "load_results", "model_fingerprint", "published_comparison", "retrieval", "retrieval_metrics", "retrieval_ranks",
    "sample_k_shot", "sweep_c", "write_report", "zero_shot", "OFFICIAL_VAL_SPLITS", "PROTOCOLS", "Protocol",
    "get_protocol", "official_val_split", "protocol_precision",
]

