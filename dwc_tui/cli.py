"""The `dwc` command. Exit codes: 0 ok, 1 run failed, 2 usage/config/data error, 3 registry unavailable,
130 interrupted. Human messages go to stderr, data to stdout (``--format table|json|csv|md``).

Nothing here imports torch, torchvision, open_clip or textual at import time: listing commands stay fast.
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from dwc_core.errors import DwcError, UsageError
from dwc_tui import data_cmd
from dwc_tui.output import FORMATS, duration, emit, err, is_headline, metric_order, out, when

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="dwc — train and compare composed image retrieval models (DWC and baselines) from the terminal.",
    pretty_exceptions_enable=False,
)


class State:
    project: Path | None = None


def _project() -> Path:
    from dwc_core.config import find_project

    return State.project or find_project()


def _registry(create: bool = True):
    from dwc_core.registry import Registry

    return Registry(_project() / "runs" / "registry.db", create=create)


def handle_errors(fn):
    """Turn DwcError into a one-paragraph message and its exit code (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DwcError as exc:
            err.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _check_format(fmt: str, allowed=FORMATS) -> str:
    if fmt not in allowed:
        raise UsageError(f"--format {fmt!r} is not supported. Allowed: {' | '.join(allowed)}.")
    return fmt


FormatOpt = Annotated[str, typer.Option("--format", "-f", help="table | json | csv | md")]


@app.callback()
def main_callback(
    project: Annotated[
        Path | None, typer.Option("--project", "-C", help="project folder (holds experiments.yaml and runs/)")
    ] = None,
) -> None:
    if project is not None:
        State.project = project.expanduser().resolve()


# ---------------------------------------------------------------------------------------------------------- run
@app.command(rich_help_panel="Runs")
@handle_errors
def run(
    name: Annotated[str, typer.Argument(help="experiment name in experiments.yaml")],
    experiments: Annotated[Path | None, typer.Option("--experiments", "-e", help="experiments file")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="override an option: key=value")
    ] = None,
    queue_only: Annotated[bool, typer.Option("--queue", help="only queue the run(s) for a worker")] = False,
) -> None:
    """Queue experiment NAME and train it in the foreground with a live progress display."""
    from dwc_core.config import ExperimentsFile

    project = _project()
    path = experiments or project / "experiments.yaml"
    specs = ExperimentsFile.load(path).resolve(name, list(set_ or []))
    registry = _registry()
    runs_dir = project / "runs"
    runs = [registry.create_run(s.experiment, s.config, runs_dir, variant=s.variant) for s in specs]
    if queue_only:
        for r in runs:
            err.print(f"queued run {r['id']} ({r['experiment']}{_variant(r)})")
        return
    from dwc_tui.supervise import print_summary, run_foreground

    worst = 0
    interactive = sys.stderr.isatty()
    registry_path = runs_dir / "registry.db"
    for i, r in enumerate(runs):
        if len(runs) > 1:
            err.print(f"[bold]run {i + 1}/{len(runs)}[/]: #{r['id']}{_variant(r)}")
        row = run_foreground(registry, registry_path, r, interactive)
        print_summary(registry, r["id"])
        if row["status"] == "cancelled":
            for rest in runs[i + 1 :]:
                registry.set_status(
                    rest["id"], "cancelled", "cancelled with the run before it", only_from=("queued",)
                )
            raise typer.Exit(130)
        if row["status"] != "done":
            worst = 1
    raise typer.Exit(worst)


def _variant(row: dict) -> str:
    v = row.get("variant") or {}
    return (" " + " ".join(f"{k}={val}" for k, val in v.items())) if v else ""


# --------------------------------------------------------------------------------------------------------- runs
def _run_summary(r: dict) -> dict:
    best = r.get("best_metrics") or {}
    end = r["ended"] or (time.time() if r["status"] in ("running", "starting") else None)
    recall = {k: best[k] for k in sorted(best, key=metric_order) if is_headline(k) and k != "mean"}
    return {
        "id": r["id"],
        "experiment": r["experiment"],
        "status": r["status"],
        "epoch": f"{r['epoch'] or (r.get('progress') or {}).get('epoch', 0)}/{r['epochs']}",
        "best": r.get("best_value"),
        "best_epoch": r.get("best_epoch"),
        "recall": recall,
        "R@10": recall.get("R@10", recall.get("avg/R@10")),
        "seed": r["seed"],
        "started": when(r["started"]),
        "duration": duration(end - r["started"]) if r["started"] and end else None,
        "error": r.get("error"),
    }


@app.command(name="runs", rich_help_panel="Runs")
@handle_errors
def runs_cmd(
    experiment: Annotated[list[str] | None, typer.Argument(help="only these experiments")] = None,
    status: Annotated[list[str] | None, typer.Option("--status", help="only runs with this status")] = None,
    all_: Annotated[bool, typer.Option("--all", help="include deleted runs")] = False,
    fmt: FormatOpt = "table",
) -> None:
    """List runs: id, experiment, status, epoch, best Recall@K, started, duration."""
    _check_format(fmt)
    path = _project() / "runs" / "registry.db"
    rows = []
    if path.exists():
        registry = _registry(create=False)
        import socket

        from dwc_core.launcher import reap_lost

        reap_lost(registry, socket.gethostname())
        rows = [
            _run_summary(r) for r in registry.runs(experiment or None, status or None, include_deleted=all_)
        ]
    if fmt == "table":
        if not rows:
            err.print("no runs yet — start one with `dwc run demo`")
            return
        for r in rows:
            r["mean"] = r["best"]
        emit(rows, ["id", "experiment", "status", "epoch", "R@10", "mean", "started", "duration"], fmt)
    else:
        emit(rows, list(rows[0]) if rows else ["id"], fmt)


# --------------------------------------------------------------------------------------------------------- show
@app.command(rich_help_panel="Runs")
@handle_errors
def show(run_id: Annotated[int, typer.Argument(help="run id")], fmt: FormatOpt = "table") -> None:
    """One run: its frozen config, environment, evaluations, metrics and events."""
    _check_format(fmt, ("table", "json"))
    registry = _registry(create=False)
    row = registry.get(run_id)
    evals = registry.evaluations(run_id)
    events = registry.events(run_id)
    if fmt == "json":
        import json

        print(json.dumps({"run": row, "evaluations": evals, "events": events}, indent=2, default=str))
        return
    import yaml
    from rich.panel import Panel
    from rich.syntax import Syntax

    from dwc_tui.supervise import results_table

    info = [
        f"[bold]{row['experiment']}[/] #{row['id']}  status [bold]{row['status']}[/]  seed {row['seed']}",
        f"run dir {row['run_dir']}",
        f"host {row['host']}  device {row['device']}  pid {row['pid']}",
        f"git {row['git_commit'] or '–'}{' (dirty)' if row['git_dirty'] else ''}",
        f"versions {', '.join(f'{k} {v}' for k, v in (row['versions'] or {}).items() if k in ('python', 'torch', 'cuda', 'precision'))}",
    ]
    if row.get("error"):
        info.append(f"[red]error {row['error']}[/]")
    out.print(Panel("\n".join(info), title="run", expand=False))
    cfg = {k: row["config"][k] for k in ("dataset", "model", "trainer", "eval") if k in row["config"]}
    out.print(
        Panel(
            Syntax(yaml.safe_dump(cfg, sort_keys=False), "yaml", theme="ansi_dark"),
            title="config",
            expand=False,
        )
    )
    if evals:
        out.print(results_table(registry, run_id))
    train = _train_metric_summary(registry.metrics(run_id, split="train"))
    if train:
        emit(train, ["metric", "first", "last", "min", "max", "points"], "table", title="training metrics")
    emit([{"time": when(e["time"]), "kind": e["kind"], "message": e["message"]} for e in events[-15:]],
         ["time", "kind", "message"], "table", title="events")  # fmt: skip


def _train_metric_summary(rows: list[dict]) -> list[dict]:
    series: dict[str, list[float]] = {}
    for r in rows:
        series.setdefault(r["name"], []).append(r["value"])
    return [
        {"metric": name, "first": v[0], "last": v[-1], "min": min(v), "max": max(v), "points": len(v)}
        for name, v in series.items()
    ]


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


# ------------------------------------------------------------------------------------------ cancel / resume
@app.command(rich_help_panel="Runs")
@handle_errors
def cancel(run_ids: Annotated[list[int], typer.Argument(help="run ids")]) -> None:
    """Cancel queued or running runs (a running one checkpoints first)."""
    registry = _registry(create=False)
    from dwc_core import launcher

    for rid in run_ids:
        row = registry.get(rid)
        registry.request_cancel(rid)
        if row["status"] in ("starting", "running") and row["pgid"] and launcher.pid_alive(row["pgid"]):
            import signal

            os.killpg(row["pgid"], signal.SIGTERM)
        err.print(f"run {rid}: cancellation requested")


@app.command(rich_help_panel="Runs")
@handle_errors
def resume(
    run_id: Annotated[int, typer.Argument(help="run id")],
    queue_only: Annotated[bool, typer.Option("--queue", help="only re-queue it for a worker")] = False,
) -> None:
    """Continue a failed / cancelled / lost run from its last checkpoint, in the same run directory."""
    registry = _registry(create=False)
    registry.requeue(run_id, "resume requested from the CLI")
    if queue_only:
        err.print(f"run {run_id} re-queued")
        return
    from dwc_tui.supervise import print_summary, run_foreground

    row = run_foreground(
        registry, _project() / "runs" / "registry.db", registry.get(run_id), sys.stderr.isatty()
    )
    print_summary(registry, run_id)
    raise typer.Exit(0 if row["status"] == "done" else 130 if row["status"] == "cancelled" else 1)


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
    from dwc_core.reeval import reevaluate

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


@app.command(rich_help_panel="Results")
@handle_errors
def models(
    method: Annotated[str | None, typer.Argument(help="one method: list all its switches")] = None,
    counts: Annotated[
        bool, typer.Option("--counts/--no-counts", help="parameter counts (default config)")
    ] = True,
    fmt: FormatOpt = "table",
) -> None:
    """Methods, their switches (model.* options) and trainable / frozen parameter counts at the default size."""
    _check_format(fmt)
    from dwc_core.schema.methods import METHODS
    from dwc_tui import models_cmd

    if method is not None and method not in METHODS:
        raise UsageError(f"no method named {method!r}. Allowed: {' | '.join(METHODS)}.")
    numbers = models_cmd.parameter_counts(_project() / "runs" / ".cache") if counts else {}
    if method is not None:
        rows = [
            {
                "switch": f"model.{key}",
                "default": models_cmd.yaml_value(opt.default),
                "allowed": opt.describe(),
                "help": opt.help,
            }
            for key, opt in models_cmd.switches(method).items()
        ]
        emit(rows, ["switch", "default", "allowed", "help"], fmt, title=f"{method}: switches")
        if numbers and fmt == "table":
            parts = numbers.get(method, {})
            out.print("parameters: " + ", ".join(f"{k} {models_cmd.human(v)}" for k, v in parts.items()))
        return
    rows = []
    for name in METHODS:
        c = numbers.get(name, {})
        rows.append(
            {
                "method": name,
                "trainable": models_cmd.human(c.get("total")) if fmt == "table" else c.get("total"),
                "frozen": models_cmd.human(c.get("frozen")) if fmt == "table" else c.get("frozen"),
                "parts": c,
                "switches": ", ".join(k for k in models_cmd.switches(name) if not k.endswith("pretrained")),
            }
        )
    emit(
        rows, ["method", "trainable", "frozen", "switches"], fmt, title="methods (default sizes, no weights)"
    )


app.add_typer(data_cmd.app, name="data", rich_help_panel="Data")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
