"""Plain-text/markdown tables: the one writer used by the CLI, evaluation results, run reports and benchmarks."""
from __future__ import annotations

from typing import Any, Sequence


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 1e5 or (v != 0 and abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:,.{max(digits - len(str(int(abs(v)))), 1)}f}"
    return str(v)


def is_fraction_metric(name: str) -> bool:
    """Accuracies and recalls are fractions (shown in %); ranks, C and counts are not."""
    return "rank" not in name and name != "best_C"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """The one markdown table writer: cells through :func:`fmt` (strings as given), columns padded to one
    width so the text reads as a table too. ``align``: one letter per column, ``l`` (default) or ``r``
    (numbers: right-aligned, ``---:`` in the separator)."""
    align = align or "l" * len(headers)
    if len(align) != len(headers) or set(align) - {"l", "r"}:
        raise ValueError(f"align must be one 'l' or 'r' per column ({len(headers)}), got {align!r}")
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    just = lambda x, w, a: x.rjust(w) if a == "r" else x.ljust(w)   # noqa: E731
    line = lambda xs: "| " + " | ".join(just(x, w, a) for x, w, a in zip(xs, widths, align)) + " |"   # noqa: E731
    sep = "|" + "|".join("-" * (w + 1) + ":" if a == "r" else "-" * (w + 2) for w, a in zip(widths, align)) + "|"
    return "\n".join([line(list(headers)), sep] + [line(r) for r in cells])


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def human_count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)
