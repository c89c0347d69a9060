"""Queue commands: queue, worker, workers, gpus, hold, release, rm, restore, purge, logs, experiments.

Thin wrappers over ``dwc_core.runs.control`` (the verbs the TUI shares) and ``dwc_core.runs.worker``.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from dwc_core.config.checks import check_cutoffs
from dwc_core.errors import UsageError
from dwc_tui.cli.app import (
    FormatOpt,
    _check_format,
    _project,
    _registry,
    _require_project,
    app,
    ask,
    handle_errors,
)
from dwc_tui.cli.output import emit, err, when

PANEL = "Queue"


def _parse_ids(value: str | None, what: str) -> list[str] | None:
    if value is None:
        return None
    items = [x.strip() for x in value.split(",") if x.strip()]
    if not items:
        raise UsageError(f"{what} {value!r}: expected a comma-separated list, e.g. 0,1,2.")
    return items


def _parse_seeds(value: str | None) -> list[int] | None:
    items = _parse_ids(value, "--seeds")
    if items is None:
        return None
    try:
        return [int(x) for x in items]
    except ValueError:
        raise UsageError(f"--seeds {value!r}: seeds are integers, e.g. --seeds 1,2,3.") from None


def warn_gpus(specs: list) -> None:
    """Queue time: a note for each run this machine's GPUs can never take (it may be meant for another host)."""
    from dwc_core.runs.control import gpu_warnings

    for msg in gpu_warnings(specs):
        err.print(f"[yellow]warning:[/] {escape(msg)}", soft_wrap=True)


def _warn_no_worker(project: Path) -> None:
    from dwc_core.runs.control import nobody_will_take

    msg = nobody_will_take(project)
    if msg:
        err.print(f"[yellow]note:[/] {escape(msg)}", soft_wrap=True)


# -------------------------------------------------------------------------------------------------------- queue
@app.command(rich_help_panel=PANEL)
@handle_errors
def queue(
    names: Annotated[list[str], typer.Argument(help="experiment names in experiments.yaml")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="override an option: key=value")
    ] = None,
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="seeds to run, e.g. 1,2,3 (replaces seeds:)")
    ] = None,
    priority: Annotated[int, typer.Option("--priority", "-p", help="higher runs first")] = 0,
    hold: Annotated[
        bool, typer.Option("--hold", help="queue held: workers skip it until `dwc release`")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="queue again runs identical to finished ones")
    ] = False,
    failed: Annotated[
        bool, typer.Option("--failed", help="re-queue the failed/lost/cancelled runs of NAME (from last.pt)")
    ] = False,
    experiments: Annotated[Path | None, typer.Option("--experiments", "-e", help="experiments file")] = None,
) -> None:
    """Queue experiments (grid × seeds) for workers; prints the new run ids."""
    from dwc_core.runs import control

    project = _require_project()
    if failed:
        if not (project / "runs" / "registry.db").exists():
            err.print("no run has been queued in this project yet: nothing to re-queue")
            return
        registry = _registry()
        _check_known_experiments(project, registry, names)
        ids = []
        for name in names:
            got = control.queue_failed(registry, name)
            if not got:
                err.print(f"{escape(name)}: no failed, lost or cancelled run to re-queue")
            ids += got
        if ids:
            err.print(f"re-queued {len(ids)} run(s); each continues from its last.pt")
            print(" ".join(map(str, ids)))
            _warn_no_worker(project)
        return
    seed_list = _parse_seeds(seeds)
    specs = []
    for name in names:
        specs += control.resolve_specs(project, name, list(set_ or []), seed_list, experiments)
    for spec in specs:  # what the config alone shows to be meaningless is refused before anything is queued
        check_cutoffs(spec.config)
    registry = _registry()  # created only now: an unknown experiment name leaves the project untouched
    if not force:
        dups = control.finished_duplicates(registry, specs)
        if dups:
            listed = ", ".join(map(str, dups))
            if sys.stdin.isatty() and sys.stderr.isatty():
                if not ask(f"identical runs already finished ({listed}); queue them again?"):
                    err.print("nothing was queued")
                    return
                force = True
            else:
                raise UsageError(
                    f"identical runs already finished (same experiment, config and seed): {listed}. "
                    "Pass --force to run them again."
                )
    rows = control.queue_specs(registry, project, specs, priority=priority, hold=hold, force=force)
    for r in rows:
        v = r.get("variant") or {}
        extra = (" " + " ".join(f"{k}={val}" for k, val in v.items())) if v else ""
        held = escape(" [held]") if hold else ""
        err.print(f"queued run {r['id']} ({escape(r['experiment'] + extra)}){held}")
    print(" ".join(str(r["id"]) for r in rows))
    warn_gpus(specs)
    if not hold:
        _warn_no_worker(project)


# ------------------------------------------------------------------------------------------------------- worker
@app.command(rich_help_panel=PANEL)
@handle_errors
def worker(
    gpus: Annotated[
        str | None, typer.Option("--gpus", help="GPU ids to use, e.g. 0,1,2,3 (default: all)")
    ] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="train on CPU slots instead of GPUs")] = False,
    slots: Annotated[int, typer.Option("--slots", help="CPU slots (with --cpu)")] = 1,
    slots_per_gpu: Annotated[int, typer.Option("--slots-per-gpu", help="runs sharing one GPU")] = 1,
    max_runs: Annotated[
        int | None, typer.Option("--max-runs", help="start at most N runs, then exit")
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="exit when the queue is empty and its runs ended")
    ] = False,
    detach: Annotated[
        bool, typer.Option("--detach", help="run in the background (log in runs/workers/)")
    ] = False,
    use_slurm: Annotated[
        bool, typer.Option("--slurm", help="submit queued runs to Slurm as batch jobs and follow them")
    ] = False,
    partition: Annotated[str | None, typer.Option("--partition", help="Slurm partition")] = None,
    account: Annotated[str | None, typer.Option("--account", help="Slurm account")] = None,
    qos: Annotated[str | None, typer.Option("--qos", help="Slurm QOS")] = None,
    time_limit: Annotated[
        str | None, typer.Option("--time", help="Slurm time limit, e.g. 1-00:00:00")
    ] = None,
    sbatch_arg: Annotated[
        list[str] | None, typer.Option("--sbatch-arg", help="extra sbatch argument (repeatable)")
    ] = None,
    max_jobs: Annotated[int, typer.Option("--max-jobs", help="Slurm jobs in flight at most")] = 8,
    max_requeues: Annotated[
        int, typer.Option("--max-requeues", help="re-submissions after TIMEOUT/PREEMPTED")
    ] = 3,
) -> None:
    """Take queued runs and train them on this machine's GPUs (or --cpu slots), or hand them to Slurm."""
    from dwc_core.runs.worker import run_worker

    if use_slurm:
        from dwc_core.runs import slurm

        opts = slurm.SlurmOptions(
            partition=partition, account=account, qos=qos, time=time_limit, sbatch_args=list(sbatch_arg or []),
            max_jobs=max_jobs, max_requeues=max_requeues,
        )  # fmt: skip
        reg_path = _require_project() / "runs" / "registry.db"
        if detach:
            pid, log = slurm.spawn_detached(reg_path, opts, once=once)
            err.print(f"slurm worker started in the background: pid {pid}\n  log  {log}")
            print(pid)
            return
        raise typer.Exit(slurm.run_worker(reg_path, opts, once=once))
    if gpus is not None and cpu:
        raise UsageError("--gpus and --cpu exclude each other: a worker uses either GPUs or CPU slots.")
    if slots != 1 and not cpu:
        raise UsageError("--slots counts CPU slots and needs --cpu; on GPUs use --slots-per-gpu.")
    if slots_per_gpu != 1 and cpu:
        raise UsageError("--slots-per-gpu applies to GPUs; with --cpu use --slots N.")
    kwargs = dict(
        gpus=_parse_ids(gpus, "--gpus"), cpu=cpu, cpu_slots=slots, slots_per_gpu=slots_per_gpu,
        max_runs=max_runs, once=once,
    )  # fmt: skip
    project = _require_project()  # never a worker (and its runs/workers/) in a folder that is no project
    code = run_worker(kwargs, project, detach=detach)
    if detach:
        import socket

        folder = project / "runs" / "workers"
        name = f"{socket.gethostname()}-{code}"
        err.print(f"worker started in the background: pid {code}")
        err.print(f"  info {folder / (name + '.json')}\n  log  {folder / (name + '.log')}")
        print(code)
        return
    raise typer.Exit(code)


@app.command(rich_help_panel=PANEL)
@handle_errors
def workers(fmt: FormatOpt = "table") -> None:
    """Live workers (host, pid, GPUs, runs held, since); dead ones are marked and their files removed."""
    from dwc_core.runs.control import list_workers

    _check_format(fmt)
    rows = []
    for w in list_workers(_require_project(), clean=True):
        rows.append(
            {
                "host": w.get("host"),
                "pid": w.get("pid"),
                "kind": w.get("kind") or "local",
                "gpus": ",".join(w.get("gpus") or [])
                or (_slurm_where(w) if w.get("kind") == "slurm" else f"cpu×{w.get('cpu_slots')}"),
                "runs": ",".join(map(str, w.get("runs", []))) or "–",
                "since": when(w.get("started")),
                "state": "alive" if w["alive"] else "dead (removed)",
                "log": w.get("log"),
            }
        )
    if fmt == "table" and not rows:
        err.print("no worker — start one with `dwc worker` (or `dwc worker --cpu`)")
        return
    emit(rows, ["host", "pid", "kind", "gpus", "runs", "since", "state"], fmt)


def _slurm_where(w: dict) -> str:
    """A Slurm worker's resources: its partition and job cap (the GPUs are Slurm's)."""
    return f"{w.get('partition') or 'default'} partition, ≤{w.get('max_jobs')} jobs"


@app.command(rich_help_panel=PANEL)
@handle_errors
def gpus(fmt: FormatOpt = "table") -> None:
    """Each GPU's memory and utilisation (NVML) and which worker/run holds it."""
    from dwc_core.runs.control import gpu_holders
    from dwc_core.runs.gpus import gpu_stats, visible_gpus

    _check_format(fmt)
    project = _project()
    holders = gpu_holders(project)
    running: dict[str, list[int]] = {}
    reg_path = project / "runs" / "registry.db"
    if reg_path.exists():
        registry = _registry(create=False)
        here = socket.gethostname()
        for r in registry.runs(statuses=["starting", "running"]):
            # this machine's GPUs only: a registry may list runs of other hosts, and Slurm's jobs use its nodes'
            if r.get("host") != here or r.get("slurm_job"):
                continue
            for g in str(r.get("gpus") if r.get("gpus") is not None else "").split(","):
                if g.strip():
                    running.setdefault(g.strip(), []).append(r["id"])
    stats, why = gpu_stats()
    ids = [s["index"] for s in stats] or visible_gpus()
    if not ids:
        err.print(f"no GPU: {escape(why or 'none visible on this machine')}", soft_wrap=True)  # one line
        return
    if why:
        err.print(f"[yellow]note:[/] {escape(why)}", soft_wrap=True)
    by_id = {s["index"]: s for s in stats}
    rows = []
    for g in ids:
        s = by_id.get(g, {})
        holder = holders.get(g)
        rows.append(
            {
                "gpu": g,
                "name": s.get("name"),
                "memory": f"{s['memory_used_mib']}/{s['memory_total_mib']} MiB" if s else None,
                "util %": s.get("util_pct"),
                "worker": holder.get("what", "").removeprefix("worker ") if holder else None,
                "runs": ",".join(map(str, running.get(g, []))) or None,
            }
        )
    emit(rows, ["gpu", "name", "memory", "util %", "worker", "runs"], fmt)


# ------------------------------------------------------------------------------------------ hold / rm / purge
IdsArg = Annotated[list[int], typer.Argument(help="run ids")]


@app.command(rich_help_panel=PANEL)
@handle_errors
def hold(run_ids: IdsArg) -> None:
    """Keep queued runs in the queue without letting workers take them."""
    from dwc_core.runs.control import set_hold

    changed = set_hold(_registry(create=False), run_ids, True)
    err.print(f"held: {', '.join(map(str, changed)) or 'nothing new'}")


@app.command(rich_help_panel=PANEL)
@handle_errors
def release(run_ids: IdsArg) -> None:
    """Let workers take held runs again."""
    from dwc_core.runs.control import set_hold

    changed = set_hold(_registry(create=False), run_ids, False)
    err.print(f"released: {', '.join(map(str, changed)) or 'nothing new'}")
    _warn_no_worker(_project())


def _check_known_experiments(project, registry, names: list[str]) -> None:
    """`--failed NAME`: NAME must be an experiment of the file or of some recorded run (exit 2 otherwise)."""
    from dwc_core.config.experiments import ExperimentsFile

    ef = ExperimentsFile.load(project / "experiments.yaml")
    recorded = {r["experiment"] for r in registry.runs()}
    for name in names:
        if name not in recorded:
            ef.check_name(name)  # the file's message: did-you-mean and the known experiments


@app.command(rich_help_panel=PANEL)
@handle_errors
def rm(run_ids: IdsArg) -> None:
    """Soft-delete runs: hidden from lists (`dwc runs --all` shows them), kept on disk until `dwc purge`."""
    from dwc_core.runs.control import remove

    done = remove(_registry(create=False), run_ids)
    err.print(f"removed {', '.join(map(str, done))} (undo: dwc restore {' '.join(map(str, done))})")


@app.command(rich_help_panel=PANEL)
@handle_errors
def restore(run_ids: IdsArg) -> None:
    """Bring soft-deleted runs back."""
    from dwc_core.runs.control import restore as restore_runs

    done = restore_runs(_registry(create=False), run_ids)
    if done:
        err.print(f"restored {', '.join(map(str, done))}")
    others = [r for r in dict.fromkeys(run_ids) if r not in done]
    if others:
        err.print(f"not removed, nothing to restore: {', '.join(map(str, others))}")


@app.command(rich_help_panel=PANEL)
@handle_errors
def purge(yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False) -> None:
    """Delete soft-deleted runs for good (rows and run directories), and temp files of killed writes in other runs'
    directories, listing what and how much disk first."""
    from dwc_core.fileio import remove_files
    from dwc_core.runs.control import human_bytes, orphan_temps, purge_plan
    from dwc_core.runs.control import purge as purge_runs

    if not (_require_project() / "runs" / "registry.db").exists():
        err.print("nothing to purge (no run has been queued in this project yet)")
        return
    registry = _registry(create=False)
    items = purge_plan(registry)
    temps = orphan_temps(registry)
    if not items and not temps:
        err.print(
            "nothing to purge (no run was removed with `dwc rm`, no temp file of a killed write is left)"
        )
        return
    if items:
        emit(
            [{"id": i.id, "experiment": i.experiment, "status": i.status, "size": human_bytes(i.bytes),
              "run dir": i.run_dir} for i in items],
            ["id", "experiment", "status", "size", "run dir"], "table", title="to purge",
        )  # fmt: skip
    if temps:
        emit(
            [{"run": t.run_id, "file": str(t.path), "size": human_bytes(t.bytes)} for t in temps],
            ["run", "file", "size"], "table", title="temp files of killed writes",
        )  # fmt: skip
    total = sum(i.bytes for i in items) + sum(t.bytes for t in temps)
    what = ", ".join(
        x
        for x in (f"{len(items)} run(s)" if items else "", f"{len(temps)} temp file(s)" if temps else "")
        if x
    )
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"purge would delete {what} ({human_bytes(total)}); pass --yes to confirm.")
        if not ask(f"delete {what} ({human_bytes(total)}) for good?"):
            err.print("nothing was deleted")
            return
    n, freed = purge_runs(registry, items) if items else (0, 0)
    freed += remove_files([(t.path, t.bytes) for t in temps])
    err.print(f"purged {n} run(s) and {len(temps)} temp file(s), freed {human_bytes(freed)}")


# --------------------------------------------------------------------------------------------------------- logs
@app.command(rich_help_panel=PANEL)
@handle_errors
def logs(
    run_id: Annotated[int, typer.Argument(help="run id")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="follow until the run ends")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="lines from the end")] = 20,
) -> None:
    """A run's train.log (the last N lines; -f follows it until the run ends)."""
    from dwc_core.runs import control

    registry = _registry(create=False)
    control.reconcile(registry)  # a run whose process died unrecorded is lost, as `dwc runs` shows it
    row = registry.get(run_id)
    if not control.log_path(row).exists() and not follow:
        err.print(f"run {run_id} has no log yet ({row['status']})")
        return
    source = control.follow_log(registry, run_id, lines) if follow else control.log_tail(row, lines)
    for line in source:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    if follow:
        _say_how_it_ended(registry.get(run_id))


def _say_how_it_ended(row: dict) -> None:
    """After `dwc logs -f`: a run that did not end `done` says so, with why (its log may not: a killed trainer
    writes no last words)."""
    if row["status"] == "done":
        return
    first = (str(row.get("error") or "").strip().splitlines() or [""])[0].rstrip(". ")
    why = f": {first}" if first else ""
    resumable = row["status"] in ("failed", "cancelled", "lost")
    hint = f" `dwc resume {row['id']}` continues it." if resumable else ""
    err.print(f"run {row['id']} is {row['status']}{escape(why)}.{hint}", soft_wrap=True)


# -------------------------------------------------------------------------------------------------- experiments
@app.command(rich_help_panel=PANEL)
@handle_errors
def experiments(
    experiments_file: Annotated[
        Path | None, typer.Option("--experiments", "-e", help="experiments file")
    ] = None,
    fmt: FormatOpt = "table",
) -> None:
    """The experiments of experiments.yaml: description, tags, grid × seeds size and runs by status."""
    from dwc_core.runs.control import experiment_summary

    _check_format(fmt)
    rows = experiment_summary(_project(), experiments_file)
    if fmt == "table":
        if not rows:
            err.print("experiments.yaml defines no experiment")
            return
        for r in rows:
            r["tags"] = ", ".join(r["tags"])
            r["size"] = f"{r['grid']}×{r['seeds']}"
            r["runs"] = " ".join(f"{k} {v}" for k, v in r["runs"].items()) or "–"
        emit(rows, ["experiment", "description", "tags", "size", "runs"], fmt)
        return
    if fmt in ("csv", "md"):  # one cell per value: runs by status as "done 3 failed 1"
        for r in rows:
            r["runs"] = " ".join(f"{k} {v}" for k, v in r["runs"].items())
    emit(rows, ["experiment", "description", "tags", "grid", "seeds", "runs"], fmt)
