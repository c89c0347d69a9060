"""Rendering rows for the terminal (rich tables) and for machines (json, csv, markdown)."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

FORMATS = ("table", "json", "csv", "md")

out = Console(soft_wrap=False)
err = Console(stderr=True)


def emit(
    rows: list[dict], columns: Sequence[str], fmt: str, title: str | None = None, styles: dict | None = None
) -> None:
    """Print ``rows`` (dicts) restricted to ``columns`` in format ``fmt``."""
    if fmt == "json":
        print(json.dumps(rows, indent=2, default=str))
        return
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: cell(r.get(c)) for c in columns})
        print(buf.getvalue(), end="")
        return
    if fmt == "md":
        print("| " + " | ".join(columns) + " |")
        print("|" + "|".join("---" for _ in columns) + "|")
        for r in rows:
            print("| " + " | ".join(cell(r.get(c)) for c in columns) + " |")
        return
    table = Table(title=title, show_edge=False, header_style="bold", pad_edge=False)
    for c in columns:
        numeric = any(isinstance(r.get(c), int | float) for r in rows)
        table.add_column(c, justify="right" if numeric else "left", style=(styles or {}).get(c))
    for r in rows:
        table.add_row(*(cell(r.get(c)) for c in columns))
    out.print(table)


def cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.01:
            return f"{value:.3g}"  # learning rates, small losses
        return f"{value:.2f}"
    return str(value)


def when(ts: float | None) -> str | None:
    if not ts:
        return None
    return time.strftime("%m-%d %H:%M", time.localtime(ts))


def duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def is_headline(metric: str) -> bool:
    """Metrics shown in summary tables: the main recalls, the FashionIQ averages and the mean."""
    return metric.startswith("R@") or metric.startswith("avg/R@") or metric == "mean"


def metric_order(metric: str) -> tuple:
    """R@1 < R@5 < R@10 < R@50 < avg/R@10 < ... < mean."""
    k = int(metric.rsplit("@", 1)[1]) if "@" in metric else 0
    return (metric == "mean", metric.count("/"), metric.rsplit("R@", 1)[0], k)
