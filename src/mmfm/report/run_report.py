"""The experiment report: one row per model with accuracy next to its measurements."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .tables import markdown_table


def _metrics_of(result) -> dict[str, Any]:
    d = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    return d


def _headline_metrics(results, tags: list[str] | None = None) -> dict[str, float]:
    """Flatten each evaluation into a few named columns, e.g. zeroshot[shape] top1, retrieval R@1."""
    cols: dict[str, float] = {}
    for i, r in enumerate(results):
        d = _metrics_of(r)
        if tags is not None:
            tag = tags[i]
        else:
            kind, task = d.get("kind", type(r).__name__), d.get("task") or ""
            tag = f"{kind}[{task}]" if task else kind
        m = d.get("metrics", {})
        for key in ("top1", "accuracy", "mean_accuracy", "i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"):
            if isinstance(m.get(key), (int, float)):
                cols[f"{tag} {key}"] = m[key]
    return cols


def model_row(label: str, model_name: str | None, params, train_result, results, eval_time_s: float,
              tags: list[str] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"label": label, "model": model_name, "params": params.to_dict(),
                           "metrics": _headline_metrics(results, tags), "eval_time_s": eval_time_s,
                           "evaluations": [_metrics_of(r) for r in results]}
    if train_result is not None:
        row["train"] = train_result.to_dict()
    return row


def write_experiment_report(name: str, rows: list[dict[str, Any]], out_dir: str | Path) -> dict[str, Any]:
    out = Path(out_dir)
    metric_cols = sorted({k for r in rows for k in r["metrics"]})
    headers = ["model", "params", "trainable", "share %"] + metric_cols
    table = []
    for r in rows:
        p = r["params"]
        table.append([r["label"], p["total"], p["trainable"], 100 * p["trainable_share"]] +
                     [100 * r["metrics"][c] if c in r["metrics"] and r["metrics"][c] <= 1 else r["metrics"].get(c) for c in metric_cols])
    perf_headers = ["model", "train time s", "samples/s", "peak RSS MiB", "peak CUDA MiB", "latency b1 mean ms",
                    "p50 ms", "p95 ms", "eval time s", "skipped"]
    perf = []
    for r in rows:
        t = r.get("train") or {}
        lat = (t.get("latency") or {}).get("batch_1", {})
        mem = t.get("memory") or {}
        perf.append([r["label"], t.get("wall_time_s"), t.get("samples_per_s"), mem.get("peak_rss_mb"),
                     mem.get("peak_cuda_mb"), lat.get("mean_ms"), lat.get("p50_ms"), lat.get("p95_ms"),
                     r["eval_time_s"], t.get("skipped_samples")])
    md = "\n".join([f"# {name}", "", "## Results (metrics in %)", "", markdown_table(headers, table), "",
                    "## Measurements", "", markdown_table(perf_headers, perf), ""])
    (out / "report.md").write_text(md)
    (out / "report.json").write_text(json.dumps({"name": name, "models": rows}, indent=2, default=str))
    return {"name": name, "models": rows, "markdown": md}
