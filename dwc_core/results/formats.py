"""Machine and paper formats of a compare table: csv, json, markdown, LaTeX (booktabs). Torch-free.

Every format carries the same numbers at the same precision (two decimals, as the table holds them): csv and json
give mean, std and delta in their own columns (empty / null when absent), markdown and LaTeX print ``mean ± std``
in one cell with the best value per column in bold.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime

from dwc_core.results.compare import Cell, CompareTable

LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def iso(ts: float | None) -> str | None:
    """ISO-8601 local time with its UTC offset (``2026-11-23T05:08:11+01:00``), or None."""
    if not ts:
        return None
    return datetime.fromtimestamp(float(ts)).astimezone().isoformat(timespec="seconds")


def number(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def signed(x: float | None) -> str:
    return "" if x is None else f"{x:+.2f}"


def cell_text(c: Cell | None, style: str = "plain") -> str:
    """``17.50 ± 0.71`` (plain), ``**…**`` for the best in md, ``$17.50 \\pm 0.71$`` in LaTeX; delta appended."""
    if c is None or c.mean is None:
        return ""
    if style == "latex":
        body = number(c.mean) + (rf" \pm {number(c.std)}" if c.std is not None else "")
        text = rf"$\mathbf{{{body}}}$" if c.best else f"${body}$"
        return text + (f" (${signed(c.delta)}$)" if c.delta is not None else "")  # a minus, not a hyphen
    text = number(c.mean) + (f" ± {number(c.std)}" if c.std is not None else "")
    if style == "md" and c.best:
        text = f"**{text}**"
    return text + (f" ({signed(c.delta)})" if c.delta is not None else "")


def _plain(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return number(value)
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def config_value(value) -> str:
    """A config value as the file holds it: floats exact (lr 0.001, never the metrics' "0.00")."""
    if isinstance(value, float):
        return repr(value)
    return _plain(value)


def header(metric: str) -> str:
    """Column headings as papers print them: ``dress R@10``, ``Avg R@10``."""
    head, _, tail = metric.rpartition("/")
    if head == "avg":
        return f"Avg {tail}"
    return f"{head} {tail}" if head else tail


def to_csv(table: CompareTable) -> str:
    buf = io.StringIO()
    cols = table.record_columns()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for rec in table.records():
        writer.writerow([(config_value if c in table.changed_keys else _plain)(rec.get(c)) for c in cols])
    return buf.getvalue()


def to_json(table: CompareTable) -> str:
    """A list of row objects (what csv holds, with lists and nulls as JSON): ready for pandas/polars."""
    return json.dumps(table.records(), indent=2) + "\n"


def info_value(table: CompareTable, row, col: str, value=None) -> str:
    """The text of one info (non-metric) column of a row; ``value`` formats an --only-changed config value
    (default: as the file formats print values)."""
    if col == table.key_column:
        return row.key
    if col == "variant":
        return row.label
    if col == "n":
        return str(row.n) if row.kind == "ours" else ""
    if col in table.changed_keys and table.only_changed:
        return "" if row.kind != "ours" else (value or config_value)(row.changed.get(col))
    return _plain(getattr(row, col, ""))


def to_markdown(table: CompareTable) -> str:
    info = table.info_columns()
    extra = ["source", "protocol"] if table.reference else []
    cols = info + [header(m) for m in table.metrics] + extra
    lines = [f"**{table.title}**", "", "| " + " | ".join(cols) + " |"]
    lines.append("|" + "|".join(":--" if i < len(info) else "--:" for i in range(len(cols))) + "|")
    for r in table.rows:
        cells = [info_value(table, r, c) for c in info]
        cells += [cell_text(r.cells.get(m), "md") for m in table.metrics]
        if table.reference:
            cells += [r.source, r.protocol_text]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += [f"\n_{n}_" for n in table.notes]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: CompareTable) -> str:
    """A booktabs tabular that a paper can ``\\input`` as is. Published rows whose protocol differs from ours
    carry a dagger; the differences and sources follow as LaTeX comments."""
    info = [c for c in table.info_columns(compact=True) if c != "n"] + ["n"]
    cols = info + [header(m) for m in table.metrics]
    lines = [
        f"% {latex_escape(table.title)}",
        r"\begin{tabular}{" + "l" * (len(info) - 1) + "r" + "r" * len(table.metrics) + "}",
        r"\toprule",
        " & ".join(latex_escape(c) for c in cols) + r" \\",
        r"\midrule",
    ]
    comments = []
    prev_kind = None
    for r in table.rows:
        if prev_kind == "ours" and r.kind == "published":
            lines.append(r"\midrule")
        prev_kind = r.kind
        cells = [latex_escape(info_value(table, r, c)) for c in info]
        if r.kind == "published" and r.protocol_diff:
            cells[0] += r"$^\dagger$"
        cells += [cell_text(r.cells.get(m), "latex") for m in table.metrics]
        lines.append(" & ".join(cells) + r" \\")
        if r.kind == "published":
            comments.append(f"% {latex_escape(r.key)}: {r.source}; protocol: {r.protocol_text}")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"% {n}" for n in table.notes] + comments
    return "\n".join(lines) + "\n"


def render(table: CompareTable, fmt: str) -> str:
    return {"csv": to_csv, "json": to_json, "md": to_markdown, "latex": to_latex}[fmt](table)
