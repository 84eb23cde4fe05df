"""Result objects of every evaluation.

Each evaluation returns an :class:`EvalResult` subclass that

* keeps everything needed to inspect it later (per-class accuracy, confusion matrix, the C sweep,
  per-seed few-shot accuracies, ranks...), plus how fast and how memory-hungry it was (:class:`PerfStats`);
* names a few *headline* metrics (``headline()``), the numbers that go into comparison tables;
* serialises to plain JSON (``to_dict()``) and renders itself as markdown (``to_markdown()``).

:func:`mmfm.eval.report.write_report` lays many of them out side by side; :func:`headline` is the one
definition of the numbers that go into comparison tables.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch

from ..measure.meter import rate
from ..report.tables import markdown_table
from ..util.atomic import atomic_write_json, atomic_write_text
from .report import KIND_TITLES, fmt_metric, fmt_pct, perf_line, result_to_dict


# ---------------------------------------------------------------------------------------------
# Performance
@dataclass
class PerfStats:
    """Speed and memory of one evaluation pass, as measured by :class:`mmfm.measure.Meter` (``PerfMeter.stats()``).

    ``items_per_s`` is end-to-end (data loading + model), ``model_items_per_s`` counts only the time
    spent in the model (what a faster data pipeline could reach). Peak RSS is the largest resident
    set size sampled after each batch (psutil); ``max_rss_mb`` is the process lifetime maximum from
    ``getrusage`` (it includes everything that ran before this evaluation).
    """

    num_items: int = 0
    total_s: float = 0.0
    model_s: float = 0.0
    num_batches: int = 0
    batch_latency_ms: dict[str, float] = field(default_factory=dict)   # mean / p50 / p90 / max
    peak_rss_mb: float | None = None
    max_rss_mb: float | None = None
    peak_cuda_mb: float | None = None
    device: str = "cpu"
    cached: bool = False        # features came from the cache: the numbers describe the original pass

    @property
    def items_per_s(self) -> float:
        return rate(self.num_items, self.total_s)

    @property
    def model_items_per_s(self) -> float:
        return rate(self.num_items, self.model_s)

    def to_dict(self) -> dict[str, Any]:
        return {"num_items": self.num_items, "total_s": self.total_s, "model_s": self.model_s,
                "items_per_s": _finite(self.items_per_s), "model_items_per_s": _finite(self.model_items_per_s),
                "num_batches": self.num_batches, "batch_latency_ms": dict(self.batch_latency_ms),
                "peak_rss_mb": self.peak_rss_mb, "max_rss_mb": self.max_rss_mb, "peak_cuda_mb": self.peak_cuda_mb,
                "device": self.device, "cached": self.cached}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PerfStats":
        keys = {"num_items", "total_s", "model_s", "num_batches", "batch_latency_ms", "peak_rss_mb", "max_rss_mb",
                "peak_cuda_mb", "device", "cached"}
        return cls(**{k: v for k, v in d.items() if k in keys})

    @staticmethod
    def combine(parts: Sequence["PerfStats | None"]) -> "PerfStats | None":
        """Several passes (e.g. train and test features) as one: times and counts add, peaks take the max."""
        parts = [p for p in parts if p is not None]
        if not parts:
            return None
        lat = [p.batch_latency_ms for p in parts if p.batch_latency_ms]
        n_batches = sum(p.num_batches for p in parts)

        def peak(name):
            vals = [getattr(p, name) for p in parts if getattr(p, name) is not None]
            return max(vals) if vals else None

        latency = {}
        if lat:
            # Batch-weighted mean; the other percentiles cannot be merged exactly, the max is a fair bound.
            w = [p.num_batches for p in parts if p.batch_latency_ms]
            latency = {"mean": float(np.average([d["mean"] for d in lat], weights=w)) if sum(w) else float("nan"),
                       "max": max(d["max"] for d in lat)}
        return PerfStats(num_items=sum(p.num_items for p in parts), total_s=sum(p.total_s for p in parts),
                         model_s=sum(p.model_s for p in parts), num_batches=n_batches, batch_latency_ms=latency,
                         peak_rss_mb=peak("peak_rss_mb"), max_rss_mb=peak("max_rss_mb"),
                         peak_cuda_mb=peak("peak_cuda_mb"), device=parts[0].device,
                         cached=all(p.cached for p in parts))


# ---------------------------------------------------------------------------------------------
# Classification metrics
@dataclass
class ClassificationMetrics:
    """Accuracy, per-class accuracy and the confusion matrix of a classifier on a labelled set.

    ``confusion[t, p]`` counts samples of true class ``t`` predicted as ``p``. ``per_class[c]`` is
    NaN for a class without test samples; ``mean_per_class`` averages over classes that have samples
    (the metric the CLIP paper reports for Flowers-102, Pets, Caltech...). ``top5`` is None when there
    are 5 classes or fewer (it would be trivially 100%).
    """

    top1: float
    top5: float | None
    mean_per_class: float
    per_class: np.ndarray
    confusion: np.ndarray
    classnames: list[str]
    predictions: np.ndarray
    labels: np.ndarray

    @property
    def num_samples(self) -> int:
        return int(len(self.labels))

    @classmethod
    def from_scores(cls, scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                    classnames: Sequence[str]) -> "ClassificationMetrics":
        """Metrics from class scores ``[N, C]`` (any monotone scale: logits, probabilities)."""
        scores = torch.as_tensor(np.asarray(scores) if not isinstance(scores, torch.Tensor) else scores).float()
        labels_t = torch.as_tensor(np.asarray(labels)).long()
        n, c = scores.shape
        if len(classnames) != c:
            raise ValueError(f"{c} score columns but {len(classnames)} class names")
        # topk (not argmax) so that the top-1 prediction is exactly what open_clip's accuracy() counts.
        k = min(5, c)
        topk = scores.topk(k, dim=1, largest=True, sorted=True).indices if n else torch.empty(0, k, dtype=torch.long)
        preds = topk[:, 0] if n else torch.empty(0, dtype=torch.long)
        top5 = float((topk == labels_t[:, None]).any(dim=1).float().mean()) if (c > 5 and n) else None
        return cls.from_predictions(preds.numpy(), labels_t.numpy(), classnames, top5=top5)

    @classmethod
    def from_predictions(cls, predictions: np.ndarray, labels: np.ndarray, classnames: Sequence[str],
                         top5: float | None = None) -> "ClassificationMetrics":
        predictions = np.asarray(predictions, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        c = len(classnames)
        if labels.size and (labels.min() < 0 or labels.max() >= c):
            raise ValueError(f"labels must lie in [0, {c}); got range [{labels.min()}, {labels.max()}]")
        confusion = np.zeros((c, c), dtype=np.int64)
        np.add.at(confusion, (labels, predictions), 1)
        support = confusion.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
        top1 = float((predictions == labels).mean()) if labels.size else float("nan")
        mean_pc = float(np.nanmean(per_class)) if np.any(support > 0) else float("nan")
        return cls(top1=top1, top5=top5, mean_per_class=mean_pc, per_class=per_class, confusion=confusion,
                   classnames=list(classnames), predictions=predictions, labels=labels)

    def to_dict(self, include_predictions: bool = True) -> dict[str, Any]:
        d = {"top1": self.top1, "top5": self.top5, "mean_per_class": _finite(self.mean_per_class),
             "num_samples": self.num_samples, "classnames": self.classnames,
             "per_class": [_finite(v) for v in self.per_class.tolist()],
             "confusion_matrix": self.confusion.tolist()}
        if include_predictions:
            d["predictions"] = self.predictions.tolist()
            d["labels"] = self.labels.tolist()
        return d

    def per_class_markdown(self, limit: int = 200) -> str:
        support = self.confusion.sum(axis=1)
        rows = [[str(name), fmt_pct(acc), str(int(s))]
                for name, acc, s in list(zip(self.classnames, self.per_class, support))[:limit]]
        return markdown_table(["class", "accuracy", "support"], rows, align="lrr")


# ---------------------------------------------------------------------------------------------
# Results
@dataclass
class EvalResult:
    """What every evaluation result has. Subclasses add their metrics and implement ``headline``."""

    kind: ClassVar[str] = "eval"
    model: str
    dataset: str
    task: str | None = None
    perf: PerfStats | None = None
    config: dict[str, Any] = field(default_factory=dict)   # the settings the evaluation ran with

    def headline(self) -> dict[str, float | None]:
        raise NotImplementedError

    def _details(self) -> dict[str, Any]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": self.kind, "model": self.model, "dataset": self.dataset, "task": self.task,
             "headline": self.headline(), "config": _jsonable(self.config),
             "perf": self.perf.to_dict() if self.perf else None}
        d.update(_jsonable(self._details()))
        return d

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    @property
    def title(self) -> str:
        task = f" [{self.task}]" if self.task else ""
        return f"{KIND_TITLES.get(self.kind, self.kind)}: {self.model} on {self.dataset}{task}"

    def to_markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        if self.config.get("random_weights"):
            lines += ["**Warning: random weights** (no pretrained checkpoint, no training): these numbers describe "
                      "an untrained model.", ""]
        lines.append(markdown_table(["metric", "value"], [[k, fmt_metric(k, v)] for k, v in self.headline().items()],
                                    align="lr"))
        skipped = self.config.get("skipped_images") or []
        if skipped:
            more = " ..." if len(skipped) > 20 else ""
            lines += ["", f"{len(skipped)} unreadable image(s) skipped: {'; '.join(skipped[:20])}{more}"]
        if self.config.get("published"):   # open_clip's number for these weights, beside ours (run_eval)
            from .published import comparison_markdown
            lines += ["", comparison_markdown(self.config["published"])]
        if self.perf:
            lines += ["", perf_line(self.perf.to_dict())]
        extra = self._markdown_extra()
        if extra:
            lines += ["", extra]
        return "\n".join(lines) + "\n"

    def _markdown_extra(self) -> str:
        return ""

    def save(self, out_dir: str | Path, stem: str | None = None) -> Path:
        """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir``; returns the JSON path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = stem or file_slug(f"{self.kind}_{self.model}_{self.dataset}" + (f"_{self.task}" if self.task else ""))
        path = out / f"{stem}.json"
        atomic_write_json(path, self.to_dict())
        atomic_write_text(out / f"{stem}.md", self.to_markdown())
        return path


@dataclass
class ZeroShotResult(EvalResult):
    kind: ClassVar[str] = "zeroshot"
    metrics: ClassificationMetrics | None = None
    templates: list[str] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)

    @property
    def top1(self) -> float:
        return self.metrics.top1

    @property
    def predictions(self) -> np.ndarray:
        return self.metrics.predictions

    def headline(self):
        m = self.metrics
        return {"top1": m.top1, "top5": m.top5, "mean_per_class": _finite(m.mean_per_class)}

    def _details(self):
        return {"metrics": self.metrics.to_dict(), "templates": self.templates, "plots": self.plots}

    def _markdown_extra(self):
        return "<details><summary>per-class accuracy</summary>\n\n" + self.metrics.per_class_markdown() + "\n\n</details>"


@dataclass
class LinearProbeResult(EvalResult):
    kind: ClassVar[str] = "linear_probe"
    metrics: ClassificationMetrics | None = None
    best_c: float = float("nan")
    sweep: list[dict[str, float]] = field(default_factory=list)   # [{"C": ..., "val_accuracy": ...}] sorted by C
    num_train: int = 0
    num_val: int = 0
    plots: dict[str, str] = field(default_factory=dict)

    @property
    def top1(self) -> float:
        return self.metrics.top1

    def headline(self):
        # clip_benchmark's probe has no C: it chose a weight decay
        chosen = {"weight_decay": self.config["weight_decay"]} if "weight_decay" in self.config else {"best_C": self.best_c}
        return {"top1": self.metrics.top1, "mean_per_class": _finite(self.metrics.mean_per_class), **chosen}

    def _details(self):
        return {"metrics": self.metrics.to_dict(), "best_c": self.best_c, "sweep": self.sweep,
                "num_train": self.num_train, "num_val": self.num_val, "plots": self.plots}

    def _markdown_extra(self):
        if self.sweep and "weight_decay" in self.sweep[0]:    # clip_benchmark's probe sweeps AdamW's weight decay
            table = markdown_table(["weight decay", "val accuracy"],
                                   [[f"{s['weight_decay']:.3g}", fmt_pct(s["val_accuracy"])] for s in self.sweep], align="rr")
            return f"Weight-decay sweep (best = {self.config.get('weight_decay', float('nan')):.3g}; " \
                   f"refit on {self.num_train}+{self.num_val} samples):\n\n" + table
        table = markdown_table(["C", "val accuracy"], [[f"{s['C']:.3g}", fmt_pct(s["val_accuracy"])] for s in self.sweep],
                               align="rr")
        return f"C sweep (best C = {self.best_c:.3g}; refit on {self.num_train}+{self.num_val} samples):\n\n" + table


@dataclass
class FewShotResult(EvalResult):
    """``per_shot[k] = {"mean", "std", "accuracies": [per seed], "seeds": [...], "extra": [per-seed dicts]}``.

    ``std`` is the sample standard deviation over seeds (ddof=1; 0 for a single seed).
    """

    kind: ClassVar[str] = "fewshot"
    method: str = "linear_probe"
    per_shot: dict[int, dict[str, Any]] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)

    def headline(self):
        return {f"{k}-shot": v["mean"] for k, v in sorted(self.per_shot.items())}

    def _details(self):
        return {"method": self.method, "per_shot": {str(k): v for k, v in sorted(self.per_shot.items())},
                "plots": self.plots}

    def _markdown_extra(self):
        rows = [[str(k), f"{fmt_pct(v['mean'])} ± {100 * v['std']:.2f}", str(len(v["accuracies"]))]
                for k, v in sorted(self.per_shot.items())]
        return f"Method: `{self.method}`\n\n" + markdown_table(["shots", "accuracy (mean ± std)", "seeds"], rows,
                                                                 align="rrr")


@dataclass
class RetrievalResult(EvalResult):
    """Image<->text retrieval. Recalls are fractions in [0, 1]; ranks are 1-based (1 = retrieved first).

    ``image_ranks[i]`` is the rank of the best-ranked caption of image ``i``; ``text_ranks[t]`` is the
    rank of caption ``t``'s image. ``ties`` names the tie rule (see :mod:`mmfm.eval.retrieval`);
    ``tied_queries`` counts queries whose correct item shares its score with a wrong one, which is
    non-zero essentially only for degenerate (e.g. collapsed) embeddings.
    """

    kind: ClassVar[str] = "retrieval"
    metrics: dict[str, float] = field(default_factory=dict)
    image_ranks: np.ndarray | None = None
    text_ranks: np.ndarray | None = None
    num_images: int = 0
    num_texts: int = 0
    ties: str = "optimistic"
    tied_queries: dict[str, int] = field(default_factory=dict)

    def headline(self):
        return {k: v for k, v in self.metrics.items() if "R@" in k or k == "mean_recall"}

    def _details(self):
        return {"metrics": self.metrics, "num_images": self.num_images, "num_texts": self.num_texts,
                "ties": self.ties, "tied_queries": self.tied_queries,
                "image_ranks": None if self.image_ranks is None else self.image_ranks.tolist(),
                "text_ranks": None if self.text_ranks is None else self.text_ranks.tolist()}

    def _markdown_extra(self):
        m = self.metrics
        return (f"{self.num_images} images, {self.num_texts} captions; ties: {self.ties}. "
                f"Median rank image→text {m.get('i2t_median_rank')}, text→image {m.get('t2i_median_rank')}; "
                f"mean rank image→text {m.get('i2t_mean_rank', float('nan')):.2f}, "
                f"text→image {m.get('t2i_mean_rank', float('nan')):.2f}.")


# ---------------------------------------------------------------------------------------------
# Helpers
def skipped_names(*feature_sets) -> list[str]:
    """The unreadable images of feature passes, as ``"<index>: <why>"`` (the reason names the file)."""
    return [f"{i}: {why}" for fs in feature_sets if fs is not None for i, why in sorted(fs.skipped.items())]


def headline(result: EvalResult | Mapping[str, Any]) -> dict[str, float]:
    """The headline numbers of a result (its type's ``headline()``), without the missing ones: the one
    definition of the numbers that go into comparison tables."""
    return {k: v for k, v in result_to_dict(result).get("headline", {}).items() if isinstance(v, (int, float))}


# ---------------------------------------------------------------------------------------------
# Serialisation helpers
def _finite(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def file_slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s).strip("_")


def _jsonable(x):
    """numpy/torch values -> plain Python, NaN/inf -> None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return _finite(x)
    if isinstance(x, Path):
        return str(x)
    if x is None or isinstance(x, (str, int, bool)):
        return x
    return repr(x)
