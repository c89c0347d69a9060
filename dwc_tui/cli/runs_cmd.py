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
    name: Annotated[
        str | None, typer.Argument(help="experiment name in experiments.yaml (none: list the experiments)")
    ] = None,
    experiments: Annotated[Path | None, typer.Option("--experiments", "-e", help="experiments file")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="override an option: key=value")
    ] = None,
    queue_only: Annotated[bool, typer.Option("--queue", help="only queue the run(s) for a worker")] = False,
) -> None:
    """Queue experiment NAME and train it in the foreground with a live progress display."""
    from dwc_core.config.experiments import ExperimentsFile

    if name is None:  # `dwc run` alone: what could be run
        from dwc_tui.cli.queue_cmd import experiments as list_experiments

        list_experiments(experiments_file=experiments, fmt="table")
        return
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
    strangers = registry.unknown_run_dirs(runs_dir)
    if strangers:
        err.print(
            f"[yellow]note:[/] {len(strangers)} run directories under {escape(str(runs_dir))} are not in this registry "
            f"(e.g. {escape(strangers[0].name)}): was runs/registry.db emptied or replaced? They are left untouched; "
            "new runs never reuse them.",
            soft_wrap=True,
        )
    from dwc_core.runs.control import live_workers, nobody_will_take, set_hold

    runs = []
    for s in specs:
        runs.append(registry.create_run(s.experiment, s.config, runs_dir, variant=s.variant))
        if not queue_only:  # trained here, one after another: held so that no worker takes them meanwhile
            set_hold(registry, [runs[-1]["id"]], True)

    if queue_only:
        for r in runs:
            err.print(f"queued run {r['id']} ({escape(r['experiment'] + _variant(r))})")
        from dwc_tui.cli.queue_cmd import warn_gpus

        warn_gpus(specs)
        note = nobody_will_take(project)
        if note:
            err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
        return
    alive = live_workers(project)
    if alive:
        err.print(
            f"[yellow]note:[/] a worker is running ({escape(', '.join(w['name'] for w in alive))}); this trains "
            f"here in the foreground anyway. `dwc run {escape(name)} --queue` hands the runs to the worker instead.",
            soft_wrap=True,
        )
    from dwc_tui.cli.supervise import Interrupted, foreground_signals, print_summary, run_foreground

    worst = 0
    interactive = sys.stderr.isatty()
    registry_path = runs_dir / "registry.db"
    settled: list[str] = []  # set once the runs not started yet were settled (the command is ending)

    def settle(why: str, current: dict | None = None) -> None:
        if not settled:
            settled.append(why)
            _cancel_unstarted(registry, runs, name, why, current)

    with foreground_signals():  # still in force while the runs are settled: a second signal is ignored
        try:
            for i, r in enumerate(runs):
                if len(runs) > 1:
                    err.print(f"[bold]run {i + 1}/{len(runs)}[/]: #{r['id']}{escape(_variant(r))}")
                row = run_foreground(
                    registry, registry_path, r, interactive,
                    on_interrupt=lambda: settle("`dwc run` was interrupted (Ctrl-C)"),
                )  # fmt: skip
                print_summary(registry, r["id"])
                if settled or row["status"] == "cancelled":
                    settle(f"run {r['id']} was cancelled")
                    raise typer.Exit(130)
                worst = max(worst, outcome_code(row))
        except KeyboardInterrupt:  # between runs (a Ctrl-C during one is handled by run_foreground)
            settle("`dwc run` was interrupted (Ctrl-C)")
            raise typer.Exit(130) from None
        except Interrupted as exc:  # SIGHUP / SIGTERM: a run being trained goes on in its own session
            settle(f"`dwc run` was interrupted ({exc.signame})", current=_training(registry, runs))
            raise typer.Exit(130) from None
    raise typer.Exit(worst)


def outcome_code(row: dict) -> int:
    """The exit code for a run trained in the foreground: 0 done, 2 when its trainer found a config, data or
    checkpoint error before training (the trainer's own exit code 2), else 1."""
    if row["status"] == "done":
        return 0
    return 2 if row.get("exit_code") == 2 else 1


def _training(registry, runs: list[dict]) -> dict | None:
    """The run of ``runs`` whose trainer is alive now (left training when `dwc run` goes away)."""
    for r in runs:
        row = registry.get(r["id"])
        if row["status"] in ("starting", "running") and row.get("pid"):
            return row
    return None


def _cancel_unstarted(registry, runs: list[dict], name: str, why: str, current: dict | None) -> None:
    """Cancel the runs this command created and never started, and say so (stderr may be gone after SIGHUP)."""
    from dwc_core.runs.control import cancel_unstarted
    from dwc_tui.cli.supervise import say

    ids = cancel_unstarted(registry, [r["id"] for r in runs], why)
    if current is not None:
        say(
            f"run {current['id']} goes on training in its own process (pid {current['pid']}); "
            f"`dwc logs -f {current['id']}` follows it, `dwc cancel {current['id']}` stops it."
        )
    if ids:
        listed = ", ".join(str(i) for i in ids)
        say(
            f"{'run' if len(ids) == 1 else 'runs'} {listed}: not started; cancelled, as {escape(why)}. "
            f"`dwc queue --failed {escape(name)}` queues them again for a worker; `dwc resume ID --now` trains one "
            "here."
        )


def _variant(row: dict) -> str:
    v = row.get("variant") or {}
    return (" " + " ".join(f"{k}={val}" for k, val in v.items())) if v else ""


# --------------------------------------------------------------------------------------------------------- runs
SORT_COLUMNS = ("id", "experiment", "status", "epoch", "R@10", "mean", "seed", "started", "duration", "disk")
WATCH_S = 2.0


def _run_record(r: dict, variant: str, disk: int | None = None, slurm: bool = False) -> dict:
    """A run's listing row as values: metrics one column each (at compare's precision), ISO-8601 times, seconds
    as numbers, ``held`` (queued but held: no worker takes it) and ``deleted`` (soft-deleted, listed by --all);
    with ``slurm``, the raw Slurm columns (job, bare state, reason, nodes, requeues)."""
    from dwc_core.results.compare import PRECISION, run_metrics, run_tags
    from dwc_core.results.formats import iso

    best = run_metrics(r, "best")
    end = r["ended"] or (time.time() if r["status"] in ("running", "starting") else None)
    rec = {
        "id": r["id"],
        "experiment": r["experiment"],
        "variant": variant,
        "status": r["status"],
        "held": _held(r),
        "deleted": bool(r.get("deleted")),
        "epoch": r["epoch"] or (r.get("progress") or {}).get("epoch", 0),
        "epochs": r["epochs"],
        "best_epoch": r.get("best_epoch"),
        "seed": r["seed"],
        "tags": run_tags(r),
        **{k: round(best[k], PRECISION) for k in sorted(best, key=metric_order) if is_headline(k)},
        "started": iso(r["started"]),
        "ended": iso(r["ended"]),
        "duration_s": round(end - r["started"], 1) if r["started"] and end else None,
        "error": r.get("error"),
    }
    if slurm:
        from dwc_core.results.slurm_view import slurm_fields

        rec.update(slurm_fields(r))
    if disk is not None:
        rec["disk_bytes"] = disk
    return rec


def _held(row: dict) -> bool:
    """Queued but held (`dwc hold`, or a foreground `dwc run` keeping its runs): no worker takes it."""
    return row["status"] == "queued" and bool(row.get("hold"))


def _status_text(status: str, held: bool, deleted: bool) -> str:
    """``queued (held)``, ``done (deleted)``: what the bare status does not say."""
    marks = [m for m, on in (("held", held), ("deleted", deleted)) if on]
    return f"{status} ({', '.join(marks)})" if marks else status


def _machine_rows(recs: list[dict], fmt: str) -> list[dict]:
    """csv / md cells of the metric columns at compare's precision ("75.40", as `dwc compare -f csv` writes
    them); json keeps numbers (75.4, as `dwc compare -f json` does)."""
    if fmt == "json":
        return recs
    from dwc_core.results.formats import number

    return [
        {k: number(v) if is_headline(k) and isinstance(v, int | float) and not isinstance(v, bool) else v
         for k, v in r.items()}
        for r in recs
    ]  # fmt: skip


def _sorted(recs: list[dict], column: str) -> list[dict]:
    """Numbers and times largest first, names and statuses A→Z; runs without a value last."""

    def value(rec: dict):
        return {
            "R@10": rec.get("R@10", rec.get("avg/R@10")),
            "duration": rec.get("duration_s"),
            "disk": rec.get("disk_bytes"),
        }.get(column, rec.get(column))

    have = [r for r in recs if value(r) is not None]
    have.sort(key=value, reverse=column not in ("experiment", "status"))
    return have + [r for r in recs if value(r) is None]


def _listing(
    experiment: list[str] | None, status: list[str] | None, tag: str | None, all_: bool, sort: str,
    limit: int | None, disk: bool,
) -> tuple[list[dict], bool]:  # fmt: skip
    """(rows, whether the project has any run at all)."""
    from dwc_core.results.grouping import variant_labels, with_overrides

    path = _project() / "runs" / "registry.db"
    if not path.exists():
        if not (_project() / "experiments.yaml").is_file():
            _registry(create=False)  # raises: not a dwc project (no experiments.yaml here or above)
        return [], False
    registry = _registry(create=False)
    import socket

    from dwc_core.runs.launcher import reap_lost

    reap_lost(registry, socket.gethostname())
    rows = registry.runs(experiment or None, status or None, include_deleted=all_)
    anything = bool(rows) or bool(registry.runs(include_deleted=all_, limit=1))
    if tag:
        from dwc_core.results.compare import run_tags

        rows = [r for r in rows if tag in run_tags(r)]
    labels = {r["id"]: with_overrides(labels_.get(r["id"], ""), r.get("config") or {})
              for labels_ in (variant_labels(rows),) for r in rows}  # fmt: skip
    usage = None
    if disk:
        from dwc_core.runs.control import run_disk_usage as usage
    slurm = any(r.get("slurm_job") for r in rows)  # Slurm columns only where Slurm is used
    recs = [
        _run_record(r, labels.get(r["id"], ""), usage(r["run_dir"]) if usage else None, slurm) for r in rows
    ]
    if sort != "id":
        recs = _sorted(recs, sort)
    if limit is not None:
        recs = recs[:limit]
    return recs, anything


def _table_rows(recs: list[dict], disk: bool) -> tuple[list[dict], list[str]]:
    from dwc_core.runs.control import human_bytes

    rows = []
    for rec in recs:
        rows.append(
            {
                **rec,
                "status": _status_text(rec["status"], rec["held"], rec["deleted"]),
                "epoch": f"{rec['epoch']}/{rec['epochs']}",
                "R@10": rec.get("R@10", rec.get("avg/R@10")),
                "started": when(_ts(rec["started"])),
                "duration": duration(rec["duration_s"]),
                "disk": human_bytes(rec["disk_bytes"]) if disk else None,
            }
        )
    cols = ["id", "experiment"] + (["variant"] if any(r["variant"] for r in recs) else [])
    cols += ["status", "epoch", "R@10", "mean", "started", "duration"] + (["disk"] if disk else [])
    _fold_slurm(rows, cols)
    return rows, cols


TABLE_WIDTH = 80  # the listing keeps within a classic terminal where it can


def _fold_slurm(rows: list[dict], cols: list[str], width: int = TABLE_WIDTH) -> None:
    """Slurm's view of a run as a second line of its status cell ("PD Priority", "R node1"), cut with "…" so
    the table keeps within ``width`` columns (the cell is never narrower than the status column itself);
    `dwc show` has it in full, machine formats carry the raw columns."""
    from dwc_core.results.slurm_view import slurm_compact
    from dwc_tui.cli.output import cell

    if not any(r.get("slurm_job") for r in rows):
        return
    others = sum(max(len(c), *(len(cell(r.get(c))) for r in rows)) for c in cols if c != "status")
    status_w = max(len("status"), *(len(r["status"]) for r in rows))
    room = max(status_w, width - others - 3 * (len(cols) - 1))
    for r in rows:
        text = slurm_compact(r, room)
        if text:
            r["status"] = f"{r['status']}\n{text}"


def _ts(iso_text: str | None) -> float | None:
    if not iso_text:
        return None
    from datetime import datetime

    return datetime.fromisoformat(iso_text).timestamp()


@app.command(name="runs", rich_help_panel="Runs")
@handle_errors
def runs_cmd(
    experiment: Annotated[list[str] | None, typer.Argument(help="only these experiments")] = None,
    status: Annotated[list[str] | None, typer.Option("--status", help="only runs with this status")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="only runs of experiments with this tag")] = None,
    sort: Annotated[
        str, typer.Option("--sort", help=f"sort by: {' | '.join(SORT_COLUMNS)} (numbers: largest first)")
    ] = "id",
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="show at most N runs")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="refresh every 2 s until Ctrl-C")] = False,
    disk: Annotated[bool, typer.Option("--disk", help="add each run directory's disk use")] = False,
    all_: Annotated[bool, typer.Option("--all", help="include deleted runs")] = False,
    fmt: FormatOpt = "table",
) -> None:
    """List runs: id, experiment, variant, status, epoch, best Recall@K, started, duration."""
    from dwc_core.runs.registry import STATUSES

    _check_format(fmt)
    bad = [s for s in status or [] if s not in STATUSES]
    if bad:
        raise UsageError(f"--status {bad[0]!r} is not a run status. Allowed: {' | '.join(STATUSES)}.")
    if sort not in SORT_COLUMNS:
        raise UsageError(f"--sort {sort!r} is not a column. Allowed: {' | '.join(SORT_COLUMNS)}.")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit}: must be a positive number.")
    if watch and fmt != "table":
        raise UsageError("--watch redraws a table: use it with --format table.")
    if watch:
        _watch(experiment, status, tag, all_, sort, limit, disk)
        return
    recs, anything = _listing(experiment, status, tag, all_, sort, limit, disk)
    if fmt != "table":
        cols = list(dict.fromkeys(k for r in recs for k in r)) or ["id"]
        emit(_machine_rows(recs, fmt), cols, fmt)
        return
    if not recs:
        if anything:
            err.print("no runs match — `dwc runs` lists them all")
        else:
            err.print("no runs yet — start one with `dwc run demo`")
        return
    rows, cols = _table_rows(recs, disk)
    emit(rows, cols, fmt)


def _watch(experiment, status, tag, all_, sort, limit, disk) -> None:
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

    from dwc_tui.cli.output import cell

    def render():
        recs, _ = _listing(experiment, status, tag, all_, sort, limit, disk)
        rows, cols = _table_rows(recs, disk)
        table = Table(title=time.strftime("dwc runs · %H:%M:%S (Ctrl-C to stop)"), show_edge=False,
                      header_style="bold", pad_edge=False)  # fmt: skip
        for c in cols:
            table.add_column(c, no_wrap=c == "experiment")
        for r in rows:
            table.add_row(*(Text(cell(r.get(c))) for c in cols))
        return table

    try:
        with Live(render(), console=out, auto_refresh=False) as live:
            while True:
                time.sleep(WATCH_S)
                live.update(render(), refresh=True)
    except KeyboardInterrupt:  # the normal way to leave --watch
        return


# --------------------------------------------------------------------------------------------------------- show
@app.command(rich_help_panel="Runs")
@handle_errors
def show(run_id: Annotated[int, typer.Argument(help="run id")], fmt: FormatOpt = "table") -> None:
    """One run: its frozen config, environment, evaluations, metrics and events."""
    from dwc_core.runs.control import reconcile

    _check_format(fmt, ("table", "json"))
    registry = _registry(create=False)
    # a run whose process died unrecorded shows as lost, as in `dwc runs` (a read-only registry: as it is)
    reconcile(registry)
    # everything is read before anything is printed: a registry that fails half-way prints one error, no half page
    row = registry.get(run_id)
    evals = registry.evaluations(run_id)
    events = registry.events(run_id)
    if fmt == "json":
        import json

        print(json.dumps(_show_record(row, evals, events), indent=2, default=str))
        return
    import yaml
    from rich.panel import Panel
    from rich.syntax import Syntax

    from dwc_core.results.slurm_view import slurm_line
    from dwc_tui.cli.supervise import results_table

    variant = _variant_lines(registry, row)
    table = results_table(registry, run_id) if evals else None
    train = _train_metric_summary(registry.metrics(run_id, split="train"))
    info = [
        f"[bold]{escape(row['experiment'])}[/] #{row['id']}  status "
        f"[bold]{_status_text(row['status'], _held(row), bool(row.get('deleted')))}[/]  seed {row['seed']}",
        f"run dir {escape(str(row['run_dir']))}",
        f"host {escape(str(row['host'] or '–'))}  device {escape(str(row['device'] or '–'))}  pid {row['pid'] or '–'}",
        f"git {escape(_git_text(row))}",
        f"versions {escape(_versions_text(row))}",
    ]
    info += variant
    slurm = slurm_line(row)
    if slurm:
        info.append(escape(slurm))
    if row.get("error"):
        info.append(f"[red]error {escape(str(row['error']))}[/]")
    cfg = {k: row["config"][k] for k in ("dataset", "model", "trainer", "eval") if k in row["config"]}
    out.print(Panel("\n".join(info), title="run", expand=False))
    out.print(
        Panel(
            Syntax(yaml.safe_dump(cfg, sort_keys=False), "yaml", theme="ansi_dark"),
            title="config",
            expand=False,
        )
    )
    if table is not None:
        out.print(table)
    _print_reevaluations(evals)
    if train:
        emit(train, ["metric", "first", "last", "min", "max", "points"], "table", title="training metrics")
    emit([{"time": when(e["time"]), "kind": e["kind"], "message": e["message"]} for e in events[-15:]],
         ["time", "kind", "message"], "table", title="events")  # fmt: skip


# the run columns the registry holds as epoch seconds
RUN_TIMES = ("created", "claimed", "started", "ended", "heartbeat", "deleted_at")
SHOWN_VERSIONS = ("dwc", "python", "torch", "cuda", "precision")


def _show_record(row: dict, evals: list[dict], events: list[dict]) -> dict:
    """`dwc show -f json`: every column of the run's registry row, with the machine-format rule of `dwc runs -f json`
    (:func:`_run_record`): times ISO-8601 with their zone, the duration in seconds; the listing's other fields
    (held, headline metrics, ...) are added beside the row's own. Evaluation and event times are ISO-8601 too."""
    from dwc_core.results.formats import iso

    listing = _run_record(row, "", slurm=bool(row.get("slurm_job")))
    run = {k: iso(v) if k in RUN_TIMES else v for k, v in row.items()}
    for k, v in listing.items():
        run.setdefault(k, v)  # the row's own value wins (its variant as a dict, its raw Slurm columns)
    return {
        "run": run,
        "evaluations": [{**e, "time": iso(e.get("time"))} for e in evals],
        "events": [{**e, "time": iso(e.get("time"))} for e in events],
    }


def _versions_text(row: dict) -> str:
    """The recorded versions worth a glance: dwc's own first, then python, torch, cuda and the precision."""
    versions = row.get("versions") or {}
    return ", ".join(f"{k} {versions[k]}" for k in SHOWN_VERSIONS if k in versions)


def _git_text(row: dict) -> str:
    """The commit the run trained from; when none was recorded, why: outside git, or not started yet."""
    if row.get("git_commit"):
        return f"{row['git_commit']}{' (dirty)' if row.get('git_dirty') else ''}"
    if row.get("versions"):  # the trainer recorded its environment, and found no git work tree
        return "not a git repository"
    return "not recorded yet (the run has not started)"


def _variant_lines(registry, row: dict) -> list[str]:
    """The run's grid variant and what sets it apart from the other runs of its experiment (e.g. --set values)."""
    from dwc_core.results.grouping import fmt_value, variant_labels

    lines = []
    grid = {k: v for k, v in (row.get("variant") or {}).items() if k != "seed"}
    if grid:
        lines.append("variant " + escape(" ".join(f"{k}={fmt_value(v)}" for k, v in grid.items())))
    label = variant_labels(
        registry.runs([row["experiment"]]) + ([] if not row.get("deleted") else [row])
    ).get(row["id"], "")
    if label:
        lines.append(f"differs from the other {escape(row['experiment'])} runs in: {escape(label)}")
    overrides = (row.get("config") or {}).get("overrides") or []
    if overrides:
        lines.append("overrides " + escape(" ".join(f"--set {o}" for o in overrides)))
    return lines


def _print_reevaluations(evals: list[dict]) -> None:
    """`dwc eval` re-evaluations beside the per-epoch ones, with the protocol each was scored under."""
    re_evals = [e for e in evals if e["kind"] != "epoch"]
    if not re_evals:
        return
    keys = sorted({k for e in re_evals for k in e["metrics"] if is_headline(k)}, key=metric_order)
    rows = []
    for e in re_evals:
        proto = e.get("protocol") or {}
        shown = [
            f"{k}={proto[k]}"
            for k in ("gallery", "mask_reference", "text", "category")
            if proto.get(k) is not None
        ]
        rows.append(
            {
                "eval": e["id"], "checkpoint": Path(e["checkpoint"] or "").name, "epoch": e["epoch"],
                "protocol": " ".join(shown) or proto.get("name", ""),
                "overrides": " ".join(proto.get("overrides") or []) or "(run protocol)",
                **{k: e["metrics"].get(k) for k in keys},
            }
        )  # fmt: skip
    emit(
        rows, ["eval", "checkpoint", "epoch", "protocol", "overrides", *keys], "table", title="re-evaluations"
    )


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

    if grace < 0:
        raise UsageError(f"--grace {grace:g}: seconds before SIGKILL, 0 or more (0 kills at once).")
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
        if from_scratch:
            how = "starts again from scratch"
        elif row.get("run_dir") and (Path(row["run_dir"]) / "last.pt").is_file():
            how = "continues from last.pt"
        else:
            how = "starts at epoch 0 (it has no last.pt yet)"
        err.print(f"run {run_id} re-queued; it {how}")
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
    raise typer.Exit(130 if row["status"] == "cancelled" else outcome_code(row))
