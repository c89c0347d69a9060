"""Rendering rows for the terminal (rich tables) and for machines (json, csv, markdown).

Machine formats (json, csv, md) carry values, not display strings: nulls are empty cells (json null), times are
ISO-8601 with their zone (:func:`iso`), durations are seconds as numbers, lists are space-separated in csv/md.
The terminal table shows "–" for nulls and short local times.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import time
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from dwc_core.results.compare import is_headline, metric_order
from dwc_core.results.formats import iso

FORMATS = ("table", "json", "csv", "md")
COMPARE_FORMATS = ("table", "json", "csv", "md", "latex")


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader went away (`dwc runs | head`): stop writing and let `dwc_tui.cli.main` end with exit 0
        (Rich's own answer is exit 1, which reads as a failed run)."""
        self.quiet = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        raise BrokenPipeError(errno.EPIPE, "stdout was closed by its reader")


out = _Console(soft_wrap=False)
err = _Console(stderr=True)


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
            writer.writerow({c: machine_cell(r.get(c)) for c in columns})
        print(buf.getvalue(), end="")
        return
    if fmt == "md":
        print("| " + " | ".join(columns) + " |")
        print("|" + "|".join("---" for _ in columns) + "|")
        for r in rows:
            print("| " + " | ".join(machine_cell(r.get(c)).replace("|", "\\|") for c in columns) + " |")
        return
    table = Table(
        title=escape(title) if title else None, show_edge=False, header_style="bold", pad_edge=False
    )
    texts = [[cell(r.get(c)) for c in columns] for r in rows]
    for i, c in enumerate(columns):
        numeric = any(isinstance(r.get(c), int | float) for r in rows)
        # the key (first) column is never truncated: it gets the width of its longest value
        width = max([len(c), *(len(t[i]) for t in texts)]) if i == 0 else None
        table.add_column(
            escape(c), justify="right" if numeric else "left", style=(styles or {}).get(c), min_width=width,
            no_wrap=i == 0,
        )  # fmt: skip
    for t in texts:
        table.add_row(*(Text(x) for x in t))  # plain text: user strings are never read as markup
    print_wide(table)


def print_wide(renderable) -> None:
    """Piped, print at the table's natural width: columns are never squeezed into ellipses (``less -S`` and
    ``grep`` read whole rows). On a terminal narrower than that, fit the terminal when the table can without
    breaking a word (free text such as descriptions wraps inside its cell, the key column stays whole); only a
    table that cannot fit is printed at its natural width (the terminal then wraps the lines)."""
    from rich.measure import Measurement

    measure = Measurement.get(out, out.options.update(max_width=100_000), renderable)
    width = out.width
    fits = out.is_terminal and measure.minimum <= width
    out.width = width if fits else max(width, measure.maximum)
    try:
        out.print(renderable)
    finally:
        out.width = width


def machine_cell(value) -> str:
    """A csv/md cell: empty for null, numbers as they are, lists space-separated, dicts as JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return " ".join(machine_cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


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


__all__ = [
    "COMPARE_FORMATS", "FORMATS", "cell", "duration", "emit", "err", "is_headline", "iso", "machine_cell",
    "metric_order", "out", "print_wide", "when",
]  # fmt: skip
