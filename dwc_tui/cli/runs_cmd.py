"""Run commands: run, runs, show, cancel, resume."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from dwc_core.errors import UsageError
from dwc_tui.cli.app import FormatOpt, _check_format, _project, _registry, app, handle_errors
from dwc_tui.cli.output import duration, emit, err, is_headline, metric_order, out, when


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
    from dwc_core.config.experiments import ExperimentsFile

    project = _project()
    path = experiments or project / "experiments.yaml"
    specs = ExperimentsFile.load(path).resolve(name, list(set_ or []))
    if (
        not queue_only
    ):  # a foreground run trains here: refuse a GPU request this host cannot meet, before launch
        from dwc_core.runs.gpus import check_gpu_request

        for s in specs:
            check_gpu_request(s.config["trainer"], s.experiment)
    from dwc_core.config.checks import preflight

    for s in specs:  # dataset root / cache folder: exit 2 before anything is created
        preflight(s.config, project)
    registry = _registry()
    runs_dir = project / "runs"
    runs = [registry.create_run(s.experiment, s.config, runs_dir, variant=s.variant) for s in specs]
    if queue_only:
        for r in runs:
            err.print(f"queued run {r['id']} ({r['experiment']}{_variant(r)})")
        return
    from dwc_tui.cli.supervise import print_summary, run_foreground

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
        if row["status"] != "done":  # 2: the trainer found a config/data error before training
            worst = max(worst, 2 if row.get("exit_code") == 2 else 1)
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

        from dwc_core.runs.launcher import reap_lost

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

    from dwc_tui.cli.supervise import results_table

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


# ------------------------------------------------------------------------------------------ cancel / resume
@app.command(rich_help_panel="Runs")
@handle_errors
def cancel(
    run_ids: Annotated[list[int], typer.Argument(help="run ids")],
    grace: Annotated[
        float, typer.Option("--grace", help="seconds a running run gets to checkpoint before SIGKILL")
    ] = 60.0,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="ask and return at once")] = False,
) -> None:
    """Cancel runs: a queued one leaves the queue; a running one checkpoints and ends `cancelled` (SIGKILL after
    --grace seconds)."""
    from dwc_core.runs import control

    registry = _registry(create=False)
    asked = []
    for rid in run_ids:
        err.print(escape(control.cancel(registry, rid)))
        if registry.get(rid)["status"] in ("starting", "running"):
            asked.append(rid)
    if no_wait:
        return
    for rid in asked:
        row = control.wait_cancelled(registry, rid, grace)
        err.print(f"run {rid}: {row['status']}")


@app.command(rich_help_panel="Runs")
@handle_errors
def resume(
    run_id: Annotated[int, typer.Argument(help="run id")],
    now: Annotated[
        bool, typer.Option("--now", help="train it here in the foreground instead of queuing")
    ] = False,
    queue_only: Annotated[
        bool, typer.Option("--queue", hidden=True, help="(the default) re-queue it")
    ] = False,
    from_scratch: Annotated[
        bool,
        typer.Option(
            "--from-scratch",
            help="start again at epoch 0 (clears its recorded epochs), e.g. after a corrupt last.pt",
        ),
    ] = False,
) -> None:
    """Continue a failed / cancelled / lost run from its last checkpoint, in the same run directory: re-queued for
    a worker, or trained here with --now."""
    from dwc_core.runs import control

    if now and queue_only:
        raise UsageError("--now and --queue exclude each other.")
    registry = _registry(create=False)
    row = control.resume(registry, run_id, from_scratch=from_scratch)
    if not now:
        err.print(
            f"run {run_id} re-queued; it {'starts again from scratch' if from_scratch else 'continues from last.pt'}"
        )
        msg = control.nobody_will_take(_project())
        if msg:
            err.print(
                f"[yellow]note:[/] {escape(msg)} Or train it here: dwc resume {run_id} --now", soft_wrap=True
            )
        else:
            err.print("a worker is running and will take it")
        return
    from dwc_tui.cli.supervise import print_summary, run_foreground

    row = run_foreground(registry, _project() / "runs" / "registry.db", row, sys.stderr.isatty())
    print_summary(registry, run_id)
    raise typer.Exit(0 if row["status"] == "done" else 130 if row["status"] == "cancelled" else 1)
