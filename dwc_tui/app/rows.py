"""Run rows as the dashboard shows them: plain functions from registry rows to display cells (no SQL, no UI)."""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import suppress

from rich.text import Text

from dwc_core.results.slurm_view import slurm_compact, slurm_summary
from dwc_core.runs.registry import STATUSES

COLUMNS = (
    ("id", "id"),
    ("experiment", "experiment"),
    ("method", "method"),
    ("dataset", "dataset"),
    ("status", "status"),
    ("epoch", "epoch"),
    ("loss", "loss"),
    ("r10", "R@10"),
    ("mean", "mean"),
    ("elapsed", "elapsed"),
    ("eta", "ETA"),
)
COLUMN_KEYS = tuple(k for k, _ in COLUMNS)
#: Colours given as RGB: Textual turns named ANSI colours into its theme's (Monokai's) RGB and a 16-colour terminal
#: gets the nearest of its 16, so "yellow" came out bright red and red, magenta and bright red all one magenta. These
#: are each near one of the 16 (shown), so running, failed, lost and cancelled stay distinct there too.
STATUS_STYLE = {
    "queued": "#8787ff",  # bright blue
    "starting": "#ffd75f",  # bright yellow
    "running": "bold #5fd7ff",  # bright cyan
    "done": "#5fd75f",  # bright green
    "failed": "bold #ff5f5f",  # bright red
    "cancelled": "#a8a8a8",  # light grey (white): readable, not loud
    "lost": "bold #ff87ff",  # bright magenta
}
#: NO_COLOR: Textual draws colours as greys by their brightness, and red or magenta on the dark background came out
#: grey on grey (failed, lost, cancelled: the statuses that matter most). Text attributes instead of colours there.
MONO_STATUS_STYLE = {
    "queued": "", "starting": "italic", "running": "bold", "done": "", "failed": "bold reverse",
    "cancelled": "underline", "lost": "bold underline",
}  # fmt: skip


def status_style(status: str) -> str:
    """The style of a status word: its colour, or its text attributes under NO_COLOR (read when drawn)."""
    if os.environ.get("NO_COLOR"):
        return MONO_STATUS_STYLE.get(status, "")
    return STATUS_STYLE.get(status, "")


COUNTED = ("queued", "running", "done", "failed", "lost")
SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 6  # loss points in the table's sparkline
SLURM_WIDTH = 9  # Slurm's compact state beside ours in the status cell ("running R node01")
# Every cell is cut to a width (the id never is), so the runs table fits whatever its rows hold: with one space
# before each column, 9 narrow columns take 76 columns and 11 wide ones 118, ids up to 9999 marked ("●1234")
# included; with the table's scrollbar (2) that is within 80 and 120 columns.
NARROW_MAX = {
    "experiment": 10, "status": 11, "epoch": 10, "loss": 6, "r10": 6, "mean": 6, "elapsed": 7, "eta": 6,
}  # fmt: skip
WIDE_MAX = {
    "experiment": 15, "method": 9, "dataset": 9, "status": 19, "epoch": 12, "loss": 13, "r10": 6, "mean": 6,
    "elapsed": 7, "eta": 6,
}  # fmt: skip
JSON_FIELDS = ("variant", "progress", "best_metrics", "last_metrics", "gpus")


def decode_run(row: dict) -> dict:
    for key in JSON_FIELDS:
        if isinstance(row.get(key), str):
            with suppress(ValueError):
                row[key] = json.loads(row[key])
    row["progress"] = row.get("progress") if isinstance(row.get("progress"), dict) else {}
    row["deleted"] = int(row.get("deleted") or 0)
    return row


def counts(runs: dict[int, dict]) -> dict[str, int]:
    out = dict.fromkeys(COUNTED, 0)
    for r in runs.values():
        key = "running" if r["status"] == "starting" else r["status"]
        if key in out:
            out[key] += 1
    return out


def sparkline(values: list[float], width: int = 8) -> str:
    vals = values[-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = hi - lo
    if span <= 0:
        return SPARK[3] * len(vals)
    return "".join(SPARK[min(7, int((v - lo) / span * 7.999))] for v in vals)


BAR_WIDTH = 4


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    full = int(fraction * width + 1e-9)
    return "█" * full + "░" * (width - full)


def epoch_cell(epoch: int, epochs: int, frac: float, width: int) -> Text:
    """ "epoch/epochs" right-aligned, then the bar, in ``width`` cells: the rows of one total line up
    ("  3/100 ██" above " 17/100 ██"); where the longest count ("100/100") leaves no room, the bar is shortened,
    never the count."""
    room = max(len(f"{epochs}/{epochs}"), len(f"{epoch}/{epochs}"), width - BAR_WIDTH - 1)
    steps = f"{epoch}/{epochs}"
    return Text(f"{steps:>{room}} {bar(frac, max(0, min(BAR_WIDTH, width - room - 1)))}".rstrip())


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "–"
    s = int(seconds)
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{d}d{h:02d}h"
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def number(v, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, int | float):
        if v != 0 and abs(v) < 0.01:
            return f"{v:.3g}"
        return f"{v:.{digits}f}"
    return str(v)


def fraction_done(r: dict) -> float:
    p = r.get("progress") or {}
    epochs = r.get("epochs") or 0
    # a done run its time budget stopped early shows the epochs it trained (3/100), not a full bar
    if r["status"] == "done":
        return min(1.0, (r.get("epoch") or 0) / epochs) if epochs else 1.0
    if p.get("epoch_steps") and epochs and r["status"] in ("running", "starting"):
        # the heartbeat keeps the (1-based) epoch in its own column, not in the progress fields
        epoch = p.get("epoch", r.get("epoch") or 1)
        return ((epoch - 1) + p.get("epoch_step", 0) / p["epoch_steps"]) / epochs
    if r.get("total_steps"):
        return (r.get("step") or 0) / r["total_steps"]
    return (r.get("epoch") or 0) / epochs if epochs else 0.0


def short_number(v, width: int = 6) -> str:
    """``number(v, 3)`` when it fits in ``width`` characters (0.800, 0.00123), else fewer decimals (12.35, 1234),
    else powers of ten (1e+06, 1e-05)."""
    if not isinstance(v, int | float) or len(number(v, 3)) <= width:
        return number(v, 3)
    for digits in (2, 1, 0):
        text = f"{v:.{digits}f}"
        if len(text) <= width and (v == 0 or float(text) != 0):
            return text
    return f"{v:.0e}"


def clip(text: Text, width: int) -> Text:
    """``text`` cut to ``width`` characters, the last one "…" when anything was cut."""
    if text.cell_len <= width:
        return text
    out = text.copy()
    out.truncate(width, overflow="ellipsis")
    return out


#: a log line's clock time: "[14:23:29] ", "2026-11-23 14:23:29 ", "=== 2026-11-23 14:23:29 start run 5 ==="
LOG_TIME = re.compile(r"^(=== )?\[?(?:\d{4}-\d{2}-\d{2}[ T])?\d{2}:\d{2}:\d{2}(?:[.,]\d+)?\]? +")


def log_message(line: str) -> str:
    """A log line without its leading date and time: the dashboard's log tail is a third of the screen wide, and at
    80 columns the time took most of it ("[14:23:29] loading datas…"); the Run screen's log keeps them."""
    return LOG_TIME.sub(r"\1", line, count=1)


def recall_of(metrics: dict | None, k: str = "R@10"):
    metrics = metrics or {}
    return metrics.get(k, metrics.get(f"avg/{k}"))


def display_row(r: dict, tail: list[float], now: float | None = None) -> dict:
    """The cells of one run (keys = COLUMN_KEYS) plus sort keys and the fields the detail pane shows."""
    now = now or time.time()
    p = r.get("progress") or {}
    active = r["status"] in ("running", "starting")
    epoch = p.get("epoch", r.get("epoch") or 0) if active else (r.get("epoch") or 0)
    epochs = r.get("epochs") or 0
    frac = fraction_done(r)
    loss = p.get("loss") if active and p.get("loss") is not None else (tail[-1] if tail else None)
    best = r.get("best_metrics") or {}
    r10 = recall_of(best)
    mean = best.get("mean", r.get("best_value"))
    end = r.get("ended") or (now if active else None)
    elapsed = (end - r["started"]) if r.get("started") and end else None
    eta = p.get("eta_s") if active else None
    status = r["status"]
    cells = {
        "id": Text(str(r["id"]), justify="right"),
        "experiment": Text(str(r["experiment"])),
        "method": Text(str(r.get("method") or "–")),
        "dataset": Text(str(r.get("dataset") or "–")),
        "status": status_cell(r),
        "epoch": epoch_cell(epoch, epochs, frac, WIDE_MAX["epoch"]),
        "loss": Text(
            f"{short_number(loss) if loss is not None else '–'} {sparkline(tail, SPARK_WIDTH)}".rstrip()
        ),
        "r10": Text(number(r10), justify="right"),
        "mean": Text(number(mean), justify="right"),
        "elapsed": Text(duration(elapsed), justify="right"),
        "eta": Text(duration(eta) if eta is not None else "–", justify="right"),
    }
    sort = {
        "id": r["id"],
        "experiment": r["experiment"],
        "method": r.get("method") or "",
        "dataset": r.get("dataset") or "",
        "status": STATUSES.index(status) if status in STATUSES else 99,
        "epoch": frac,
        "loss": loss if loss is not None else float("inf"),
        "r10": r10 if r10 is not None else -1.0,
        "mean": mean if mean is not None else -1.0,
        "elapsed": elapsed or 0.0,
        "eta": eta if eta is not None else float("inf"),
    }
    narrow = {
        "experiment": cells["experiment"],
        "status": status_cell(r, NARROW_MAX["status"]),
        "epoch": epoch_cell(epoch, epochs, frac, NARROW_MAX["epoch"]),
        "loss": Text(short_number(loss, NARROW_MAX["loss"]) if loss is not None else "–", justify="right"),
    }
    narrow = {k: clip(narrow.get(k, cells[k]), NARROW_MAX[k]) if k in NARROW_MAX else cells[k] for k in cells}
    cells = {k: clip(c, WIDE_MAX[k]) if k in WIDE_MAX else c for k, c in cells.items()}
    variant = r.get("variant") or {}
    return {
        "id": r["id"],
        "cells": cells,
        "narrow": narrow,
        "sort": sort,
        "status": status,
        "search": " ".join(
            [str(r["id"]), r["experiment"], str(r.get("method")), str(r.get("dataset")), status]
            + [f"{k}={v}" for k, v in variant.items()]
            + [slurm_summary(r) or ""]
        ).lower(),
        "experiment": r["experiment"],
        "phase": p.get("phase") if active else status,
        "progress": p,
        "frac": frac,
        "epoch": epoch,
        "epochs": epochs,
        "error": r.get("error"),
        "variant": variant,
        "seed": r.get("seed"),
        "slurm": slurm_summary(r),
        "what": f"{r.get('method') or '–'} · {r.get('dataset') or '–'}",
    }


def status_cell(r: dict, width: int | None = None) -> Text:
    """Our status in its colour, then Slurm's compact view of the job when there is one ("running R node01").

    Within ``width`` characters (a narrow table): our status whole, then only Slurm's state code and
    re-submissions ("queued PD", "done TO↻1"), cut with "…" to what is left; the rest is in the detail pane."""
    status = r["status"]
    cell = Text(status, style=status_style(status))
    if width is None:
        slurm = slurm_compact(r, SLURM_WIDTH)
    else:
        words = (slurm_compact(r) or "").split()
        slurm = (
            words[0] + (words[-1] if len(words) > 1 and words[-1].startswith("↻") else "") if words else ""
        )
        room = width - len(status) - 1
        if len(slurm) > room:
            slurm = slurm[: room - 1] + "…" if room >= 1 else ""
    if slurm:
        cell.append(f" {slurm}", style="dim")
    return cell
