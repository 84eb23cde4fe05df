"""The experiment report: one row per model with accuracy next to its measurements."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .tables import is_fraction_metric, markdown_table


def model_row(label: str, model_name: str | None, params, train_result, evaluations: list[dict[str, Any]],
              metrics: dict[str, float], eval_time_s: float, random_weights: bool = False) -> dict[str, Any]:
    """One model's row: ``evaluations`` are result dicts, ``metrics`` their headline numbers by column name."""
    skipped = [p for d in evaluations for p in (d.get("config") or {}).get("skipped_images", [])]
    row: dict[str, Any] = {"label": label, "model": model_name, "params": params.to_dict(), "metrics": dict(metrics),
                           "eval_time_s": eval_time_s, "random_weights": random_weights, "skipped_images": skipped,
                           "evaluations": evaluations}
    if train_result is not None:
        row["train"] = train_result.to_dict()
    return row


def _cell(column: str, value):
    if value is None:
        return None
    return 100 * value if is_fraction_metric(column.rsplit(" ", 1)[-1]) else value


def write_experiment_report(name: str, rows: list[dict[str, Any]], out_dir: str | Path,
                            wall_time_s: float | None = None) -> dict[str, Any]:
    from ..util.atomic import atomic_write_json, atomic_write_text
    out = Path(out_dir)
    metric_cols: list[str] = []          # first-seen order: R@1, R@5, R@10 stay in that order
    for r in rows:
        metric_cols += [k for k in r["metrics"] if k not in metric_cols]
    headers = ["model", "params", "trainable", "share %"] + metric_cols
    table = []
    for r in rows:
        p = r["params"]
        label = r["label"] + (" (random weights)" if r.get("random_weights") else "")
        table.append([label, p["total"], p["trainable"], 100 * p["trainable_share"]] +
                     [_cell(c, r["metrics"].get(c)) for c in metric_cols])
    perf_headers = ["model", "train time s", "samples/s", "peak RSS MiB", "peak CUDA MiB", "latency b1 mean ms",
                    "p50 ms", "p95 ms", "eval time s", "skipped (train)", "skipped (eval)"]
    perf = []
    for r in rows:
        t = r.get("train") or {}
        lat = (t.get("latency") or {}).get("batch_1", {})
        mem = t.get("memory") or {}
        perf.append([r["label"], t.get("wall_time_s"), t.get("samples_per_s"), mem.get("peak_rss_mb"),
                     mem.get("peak_cuda_mb"), lat.get("mean_ms"), lat.get("p50_ms"), lat.get("p95_ms"),
                     r["eval_time_s"], t.get("skipped_samples"), len(r.get("skipped_images") or [])])
    lines = [f"# {name}", "", "## Results (accuracies and recalls in %)", "", markdown_table(headers, table), ""]
    random = [r["label"] for r in rows if r.get("random_weights")]
    if random:
        lines += [f"**Warning**: {', '.join(random)} had random weights (no `pretrained:` and no `train:`).", ""]
    lines += ["## Measurements", "", markdown_table(perf_headers, perf), ""]
    for r in rows:
        if r.get("skipped_images"):
            lines += [f"{r['label']}: {len(r['skipped_images'])} unreadable image(s) skipped in evaluation: "
                      + ", ".join(r["skipped_images"][:20]), ""]
    if wall_time_s is not None:
        lines += [f"Whole job: {wall_time_s:.1f} s wall time.", ""]
    md = "\n".join(lines)
    atomic_write_text(out / "report.md", md)
    atomic_write_json(out / "report.json", {"name": name, "wall_time_s": wall_time_s, "models": rows}, default=str)
    return {"name": name, "wall_time_s": wall_time_s, "models": rows, "markdown": md}
