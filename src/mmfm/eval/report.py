"""The side-by-side report of many evaluation results, and how their numbers are written.

:func:`write_report` lays results out side by side (rows = model, columns = dataset/metric) in
``results.json`` + ``results.md``. It works from the ``to_dict()`` form only (a result object is asked for
its own markdown section), so results loaded back from earlier ``results.json`` files (:func:`load_results`)
can be merged into one report. The ``fmt_*`` helpers are the one way a metric, a rate or a size is written,
in these tables and in each result's own markdown (:mod:`mmfm.eval.results`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from ..report.tables import is_fraction_metric, markdown_table
from ..util.atomic import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from .results import EvalResult

KIND_TITLES = {"zeroshot": "Zero-shot", "linear_probe": "Linear probe", "fewshot": "Few-shot",
               "retrieval": "Retrieval"}


# ---------------------------------------------------------------------------------------------
# Side-by-side report
def result_to_dict(r: EvalResult | Mapping[str, Any]) -> dict[str, Any]:
    """A result's JSON form: a result object's ``to_dict()``, or the dict itself (loaded from results.json)."""
    return dict(r) if isinstance(r, Mapping) else r.to_dict()


def column_name(d: Mapping[str, Any], metric: str) -> str:
    ds = d["dataset"] + (f"/{d['task']}" if d.get("task") else "")
    return f"{ds} {KIND_TITLES.get(d['kind'], d['kind']).lower()} {metric}"


def comparison_table(results: Iterable[EvalResult | Mapping[str, Any]]) -> dict[str, Any]:
    """``{"columns": [...], "rows": {model: {column: value}}}``: one row per model, one column per
    (dataset, task, kind, headline metric), in first-seen order. A later result for the same
    (model, column) overwrites an earlier one."""
    columns: list[str] = []
    rows: dict[str, dict[str, Any]] = {}
    perf_rows: dict[str, dict[str, Any]] = {}
    for d in map(result_to_dict, results):
        row = rows.setdefault(d["model"], {})
        for metric, value in d.get("headline", {}).items():
            col = column_name(d, metric)
            if col not in columns:
                columns.append(col)
            row[col] = value
        if d.get("perf"):
            perf_rows.setdefault(d["model"], {})[column_name(d, "images/s")] = d["perf"].get("items_per_s")
    return {"columns": columns, "rows": rows, "throughput": perf_rows}


def write_report(results: Sequence[EvalResult | Mapping[str, Any]], out_dir: str | Path,
                 title: str = "Evaluation results") -> tuple[Path, Path]:
    """Write ``results.json`` (every result in full + the comparison table) and ``results.md``
    (the comparison table, a throughput/memory table, then each result's own section).

    ``results`` may mix result objects and dicts loaded from earlier ``results.json`` files
    (``load_results``), so reports of separate runs can be merged.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dicts = [result_to_dict(r) for r in results]
    table = comparison_table(dicts)
    json_path = out / "results.json"
    atomic_write_json(json_path, {"results": dicts, "table": table})

    lines = [f"# {title}", ""]
    if table["columns"]:
        lines += ["Accuracies and recalls in %.", "",
                  markdown_table(["model"] + table["columns"],
                                 [[model] + [_fmt_metric_col(c, row.get(c)) for c in table["columns"]]
                                  for model, row in table["rows"].items()], align="l" + "r" * len(table["columns"]))]
    else:
        lines.append("(no results)")
    perf = [d for d in dicts if d.get("perf")]
    if perf:
        lines += ["", "## Throughput and memory", "", _throughput_table(perf)]
    lines += ["", "## Details", ""]
    for r, d in zip(results, dicts):
        if isinstance(r, Mapping):   # loaded back: only its headline is left to show
            lines += [f"### {d['kind']}: {d['model']} on {d['dataset']}", ""] + \
                     [f"- {k}: {fmt_metric(k, v)}" for k, v in d.get("headline", {}).items()] + [""]
        else:
            lines.append(r.to_markdown())
    md_path = out / "results.md"
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return json_path, md_path


def _throughput_table(dicts: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for d in dicts:
        p = d["perf"]
        lat = p.get("batch_latency_ms") or {}
        rows.append([d["model"], d["dataset"] + ("/" + d["task"] if d.get("task") else ""), d["kind"],
                     fmt_num(p.get("items_per_s")), fmt_num(p.get("model_items_per_s")), fmt_num(lat.get("mean")),
                     fmt_num(p.get("peak_rss_mb")), fmt_num(p.get("peak_cuda_mb")),
                     f"{p.get('device')}" + (" (cached)" if p.get("cached") else "")])
    return markdown_table(["model", "dataset", "evaluation", "images/s", "model images/s", "batch latency (ms, mean)",
                           "peak RSS (MiB)", "peak CUDA (MiB)", "device"], rows, align="lllrrrrrl")


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """The result dicts of a ``results.json`` written by :func:`write_report` (or one result's JSON)."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict) and "results" in data:
        return list(data["results"])
    return [data] if isinstance(data, dict) else list(data)


# ---------------------------------------------------------------------------------------------
# Formatting: how a metric (fractions in %), a rate or a size is written
def fmt_pct(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{100 * float(v):.2f}"


def perf_line(p: Mapping[str, Any]) -> str:
    lat = p.get("batch_latency_ms") or {}
    mem = f"peak RSS {fmt_num(p.get('peak_rss_mb'))} MiB" + \
        (f", peak CUDA {fmt_num(p.get('peak_cuda_mb'))} MiB" if p.get("peak_cuda_mb") is not None else "")
    return (f"Throughput: {fmt_num(p.get('items_per_s'))} images/s end-to-end ({fmt_num(p.get('model_items_per_s'))} in the "
            f"model) on {p.get('device')}, {p.get('num_items')} images, batch latency {fmt_num(lat.get('mean'))} ms mean; "
            f"{mem}" + (" (features from cache; numbers of the original pass)" if p.get("cached") else "") + ".")


def fmt_num(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{float(v):.1f}"


def fmt_metric(name: str, v) -> str:
    if v is None:
        return "–"
    if not is_fraction_metric(name):
        return f"{float(v):.3g}"
    return fmt_pct(v)


def _fmt_metric_col(col: str, v) -> str:
    return fmt_metric(col.rsplit(" ", 1)[-1], v)
