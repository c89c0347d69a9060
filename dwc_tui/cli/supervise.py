"""`dwc run` in the foreground: start a run's training process and follow it with a live rich display.

Ctrl-C asks the run to stop (SIGTERM to its process group: it checkpoints and ends as ``cancelled``). If this
process itself is killed or the terminal goes away, the training process carries on and finishes its row itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from dwc_core.errors import UsageError
from dwc_core.runs import launcher
from dwc_core.runs.registry import ACTIVE, FINISHED, Registry
from dwc_tui.cli.output import cell, duration, err, is_headline, metric_order, out

POLL_S = 0.5


def _progress_line(row: dict) -> str:
    p = row.get("progress") or {}
    phase = p.get("phase", row["status"])
    parts = [f"[bold]{escape(row['experiment'][:18])}[/] #{row['id']}", f"{phase}"]
    if phase == "cache" and p.get("cache_total"):
        parts.append(f"images {p.get('cache_done', 0)}/{p['cache_total']}")
    if p.get("loss") is not None:
        parts.append(f"loss {p['loss']:.4g}")
    if p.get("it_s"):
        parts.append(f"{p['it_s']:.1f}it/s")
    return "  ".join(parts)


def follow(registry: Registry, run_id: int, proc: subprocess.Popen, interactive: bool) -> dict:
    """Poll the registry while the process runs; returns the final run row."""
    progress = Progress(  # fits an 80-column terminal: what, loss, speed, bar, steps, epoch, ETA
        TextColumn("{task.description}"),
        BarColumn(bar_width=14),
        MofNCompleteColumn(),
        TextColumn("ep {task.fields[epoch]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(compact=True),
        console=err,
        transient=True,
        expand=False,
    )
    task = progress.add_task("starting", total=None, epoch="-")
    last_eval = 0
    live = Live(Group(progress), console=err, refresh_per_second=2, transient=True) if interactive else None
    if live:
        live.start()
    try:
        while True:
            code = proc.poll()
            row = registry.get(run_id)
            p = row.get("progress") or {}
            total = row.get("total_steps") or None
            progress.update(
                task,
                description=_progress_line(row),
                total=total,
                completed=row.get("step") or 0,
                epoch=f"{p.get('epoch', row.get('epoch', 0))}/{row['epochs']}",
            )
            evals = registry.evaluations(run_id, kind="epoch")
            for ev in evals[last_eval:]:
                m = ev["metrics"]
                keys = sorted((k for k in m if is_headline(k)), key=metric_order)
                shown = "  ".join(f"{k} {m[k]:.2f}" for k in keys)
                (err if interactive else out).print(f"  eval epoch {ev['epoch']:>3} [{ev['split']}]  {shown}")
            last_eval = len(evals)
            if code is not None:
                return launcher.reconcile_exit(registry, run_id, code)
            time.sleep(POLL_S)
    finally:
        if live:
            live.stop()


def run_foreground(
    registry: Registry, registry_path: Path, run: dict, interactive: bool, on_interrupt=None
) -> dict:
    """Claim, start and follow one queued run. Ctrl-C cancels it cleanly, at any moment: before the training
    process exists, during its start-up (before it can checkpoint) or while it trains. ``on_interrupt`` (if given)
    is called first on Ctrl-C, before the run is stopped (a second Ctrl-C kills this process). On
    :class:`Interrupted` (SIGHUP/SIGTERM) a started run goes on training on its own; one not started yet is
    cancelled."""
    proc = None
    try:
        claimed = registry.claim(worker=f"cli:{os.getpid()}", run_id=run["id"], held_ok=True)
        if claimed is None:
            raise UsageError(
                f"run {run['id']} could not be claimed: a worker took it first (`dwc runs` shows it)."
            )
        proc = launcher.spawn(registry, claimed, registry_path)
        err.print(f"[dim]run {run['id']} → {escape(str(run['run_dir']))} (log: train.log, pid {proc.pid})[/]")
        return follow(registry, run["id"], proc, interactive)
    except Interrupted as exc:
        if proc is None:
            registry.set_status(
                run["id"], "cancelled", f"cancelled: `dwc run` got {exc.signame} before training began",
                only_from=("queued", *ACTIVE),
            )  # fmt: skip
        raise
    except KeyboardInterrupt:
        if proc is None:
            registry.set_status(
                run["id"], "cancelled", "cancelled from the terminal before training started",
                only_from=("queued", *ACTIVE),
            )  # fmt: skip
            if on_interrupt is not None:
                on_interrupt()
            return registry.get(run["id"])
        err.print(
            "[yellow]Ctrl-C: cancelling the run (it saves a checkpoint first; Ctrl-C again to kill)…[/]"
        )
        if on_interrupt is not None:  # before a second Ctrl-C can end this process
            on_interrupt()
        previous = signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            launcher.terminate(proc.pid, grace_s=120, proc=proc)
            proc.wait()
        finally:
            signal.signal(signal.SIGINT, previous)
        # the trainer records `cancelled` itself; one stopped during its start-up (still importing, no handler
        # yet) dies of our SIGTERM without a word: that is a cancellation too, not a failure
        if proc.returncode == -signal.SIGTERM:
            registry.set_status(
                run["id"], "cancelled", "cancelled from the terminal during start-up", only_from=ACTIVE,
                exit_code=proc.returncode,
            )  # fmt: skip
        row = launcher.reconcile_exit(registry, run["id"], proc.returncode)
        if row["status"] not in FINISHED:
            registry.set_status(run["id"], "cancelled", "cancelled from the terminal")
        return registry.get(run["id"])


def results_table(registry: Registry, run_id: int) -> Table:
    row = registry.get(run_id)
    evals = registry.evaluations(run_id, kind="epoch")
    keys: list[str] = []
    for ev in evals:
        for k in ev["metrics"]:
            if is_headline(k) and k not in keys:
                keys.append(k)
    keys.sort(key=metric_order)
    table = Table(
        title=f"{row['experiment']} #{run_id} — {row['status']}", show_edge=False, header_style="bold"
    )
    table.add_column("epoch", justify="right")
    table.add_column("split")
    for k in keys:
        table.add_column(k, justify="right")
    for ev in evals:
        mark = " ★" if ev["is_best"] else ""
        table.add_row(f"{ev['epoch']}{mark}", ev["split"], *(cell(ev["metrics"].get(k)) for k in keys))
    return table


def print_summary(registry: Registry, run_id: int) -> None:
    row = registry.get(run_id)
    if registry.evaluations(run_id, kind="epoch"):
        out.print(results_table(registry, run_id))
    else:
        out.print(f"{escape(row['experiment'])} #{run_id}: no evaluation recorded")
    took = (row["ended"] or time.time()) - (row["started"] or row["created"])
    out.print(
        f"status: [bold]{row['status']}[/]  time: {duration(took)}  run dir: {escape(str(row['run_dir']))}"
    )
    if row.get("error"):
        err.print(f"[red]error:[/] {escape(row['error'])}")
    sys.stdout.flush()


class Interrupted(BaseException):
    """SIGHUP (terminal gone, SSH dropped) or SIGTERM reached the foreground `dwc run` (see
    :func:`foreground_signals`); ``signame`` says which."""

    def __init__(self, signame: str):
        super().__init__(signame)
        self.signame = signame


@contextlib.contextmanager
def foreground_signals():
    """While a foreground `dwc run` supervises its runs, SIGHUP and SIGTERM raise :class:`Interrupted` (instead of
    ending this process on the spot) so that it can settle the runs it holds before it exits. After the first
    one, both are ignored until the process ends: a second signal cannot cut the clean-up or the exit short."""

    def deaf(_signum, _frame):
        pass

    def handler(signum, _frame):
        # the first counts; a second (SIGTERM after SIGHUP) must not cut the clean-up. A Python no-op, not SIG_IGN:
        # a signal already pending when SIG_IGN is set makes CPython raise "Signal N ignored due to race condition"
        for sig in previous:
            signal.signal(sig, deaf)
        raise Interrupted(signal.Signals(signum).name)

    previous: dict = {}

    previous.update({sig: signal.signal(sig, handler) for sig in (signal.SIGHUP, signal.SIGTERM)})
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is handler:  # not interrupted
            for sig, old in previous.items():
                signal.signal(sig, old)
        else:  # interrupted: stay deaf until the exit. A signal sent just after the first one is handled by
            # ``deaf`` first (the sleep lets it arrive), then SIG_IGN: unlike a Python handler, it survives the
            # interpreter's finalization, which would otherwise let a late SIGTERM kill the exit (code -15)
            time.sleep(0.05)
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)


def say(message: str) -> None:
    """Print to stderr, unless it is gone (a terminal closed by SIGHUP): then the message is dropped."""
    with contextlib.suppress(OSError, ValueError):
        err.print(message, soft_wrap=True)
