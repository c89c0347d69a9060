"""Result commands: compare, eval."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Annotated

import typer

from dwc_core.errors import UsageError
from dwc_tui.cli.app import FormatOpt, _check_format, _registry, app, handle_errors
from dwc_tui.cli.output import emit, is_headline, metric_order


# ------------------------------------------------------------------------------------------------------ compare
@app.command(rich_help_panel="Results")
@handle_errors
def compare(
    names: Annotated[
        list[str] | None, typer.Argument(help="experiments to compare (default: all with results)")
    ] = None,
    per_run: Annotated[
        bool, typer.Option("--runs", help="one row per run instead of per experiment")
    ] = False,
    fmt: FormatOpt = "table",
) -> None:
    """Results table: best Recall@K per experiment (mean ± std over seeds/runs)."""
    _check_format(fmt)
    registry = _registry(create=False)
    rows = [r for r in registry.runs(names or None) if r.get("best_metrics")]
    if names:
        missing = [n for n in names if not any(r["experiment"] == n for r in rows)]
        if missing:
            raise UsageError(f"no finished results for: {', '.join(missing)}. See `dwc runs`.")
    keys: list[str] = []
    for r in rows:
        for k in r["best_metrics"]:
            if is_headline(k) and k not in keys:
                keys.append(k)
    keys.sort(key=metric_order)
    table_rows = []
    if per_run:
        for r in rows:
            d = {"experiment": r["experiment"], "run": r["id"], "status": r["status"], "seed": r["seed"],
                 "method": r["config"]["model"]["name"], "dataset": r["config"]["dataset"]["name"]}  # fmt: skip
            d.update({k: r["best_metrics"].get(k) for k in keys})
            table_rows.append(d)
        emit(
            table_rows,
            ["experiment", "run", "method", "dataset", "seed", *keys],
            fmt,
            title="best epoch per run",
        )
        return
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["experiment"], []).append(r)
    for exp, group in groups.items():
        d = {"experiment": exp, "method": group[0]["config"]["model"]["name"],
             "dataset": group[0]["config"]["dataset"]["name"], "runs": len(group)}  # fmt: skip
        for k in keys:
            vals = [g["best_metrics"][k] for g in group if k in g["best_metrics"]]
            if not vals:
                d[k] = None
            elif fmt == "table" and len(vals) > 1:
                d[k] = f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"
            else:
                d[k] = statistics.mean(vals)
            if fmt != "table" and len(vals) > 1:
                d[f"{k}_std"] = statistics.stdev(vals)
        table_rows.append(d)
    cols = ["experiment", "method", "dataset", "runs", *keys]
    title = "best epoch per experiment"
    if fmt != "table":
        cols += [c for c in (table_rows[0] if table_rows else {}) if c.endswith("_std")]
    elif len(table_rows) > 1:  # at 80 columns, say once what every row shares
        shared = [c for c in ("dataset", "method", "runs") if len({r[c] for r in table_rows}) == 1]
        cols = [c for c in cols if c not in shared]
        title += "".join(f" · {c} {table_rows[0][c]}" for c in shared)
    emit(table_rows, cols, fmt, title=title)


@app.command(name="eval", rich_help_panel="Results")
@handle_errors
def eval_cmd(
    run_id: Annotated[int, typer.Argument(help="run id")],
    checkpoint: Annotated[str, typer.Option("--checkpoint", "-c", help="best | last | PATH")] = "best",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="change the protocol: dataset.* or eval.* key=value"),
    ] = None,
    fmt: FormatOpt = "table",
) -> None:
    """Re-evaluate a run's checkpoint (optionally under another protocol); recorded as a separate evaluation."""
    _check_format(fmt, ("table", "json"))
    from dwc_core.engine.reeval import reevaluate

    registry = _registry(create=False)
    registry.get(run_id)
    ev = reevaluate(registry.path, run_id, checkpoint, list(set_ or []))
    if fmt == "json":
        import json

        print(json.dumps(ev, indent=2, default=str))
        return
    keys = sorted((k for k in ev["metrics"] if is_headline(k)), key=metric_order)
    emit([{"evaluation": ev["id"], "checkpoint": Path(ev["checkpoint"]).name, **ev["metrics"]}],
         ["evaluation", "checkpoint", *keys], "table", title=f"run {run_id} re-evaluated")  # fmt: skip
