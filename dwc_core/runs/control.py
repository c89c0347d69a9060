"""The run-management verbs, shared by the CLI and the TUI (torch-free).

Queue an experiment, cancel with a grace period, resume (re-queue from ``last.pt``), hold/release, soft delete /
restore / purge, list workers, and read a run's log. Each verb is a registry write plus, where a process must be
told, a signal to its process group; none of them ever starts training itself (workers do).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dwc_core.errors import DwcError, UsageError
from dwc_core.fileio import temp_files
from dwc_core.runs import launcher
from dwc_core.runs.locks import is_locked, run_lock_holder
from dwc_core.runs.registry import ACTIVE, FINISHED, Registry

WORKERS_DIR = "workers"
WORKER_STALE_S = 60.0  # a worker on another host is live while its file's heartbeat is fresher than this
RESUMABLE = ("failed", "cancelled", "lost")
CONFIG_META_KEYS = ("experiment", "description", "tags", "variant", "overrides")  # not part of "the same run"


class DuplicateRuns(UsageError):
    """Queuing would repeat runs that already finished with the same experiment, config and seed."""

    def __init__(self, message: str, existing: list[int]):
        super().__init__(message)
        self.existing = existing


# ------------------------------------------------------------------------------------------------------ paths
def runs_dir(project: str | os.PathLike) -> Path:
    return Path(project) / "runs"


def registry_path(project: str | os.PathLike) -> Path:
    return runs_dir(project) / "registry.db"


def workers_dir(project: str | os.PathLike) -> Path:
    return runs_dir(project) / WORKERS_DIR


# ------------------------------------------------------------------------------------------------------ queue
def _same_run_key(config: dict) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in CONFIG_META_KEYS}, sort_keys=True)


def resolve_specs(
    project: str | os.PathLike,
    name: str,
    overrides: list[str] | None = None,
    seeds: list[int] | None = None,
    experiments_file: str | os.PathLike | None = None,
) -> list:
    """The run specs (grid × seeds) of experiment ``name``; ``seeds`` replaces the experiment's seeds."""
    from dwc_core.config.experiments import ExperimentsFile

    path = Path(experiments_file) if experiments_file else Path(project) / "experiments.yaml"
    return ExperimentsFile.load(path).resolve(name, list(overrides or []), seeds=seeds)


def finished_duplicates(registry: Registry, specs: list) -> list[int]:
    """Ids of ``done`` runs (not deleted) with the same experiment, resolved config and seed as one of ``specs``."""
    wanted = {(s.experiment, _same_run_key(s.config)) for s in specs}
    experiments = sorted({s.experiment for s in specs})
    return [
        r["id"]
        for r in registry.runs(experiments, ["done"])
        if (r["experiment"], _same_run_key(r["config"])) in wanted
    ]


def queue_specs(
    registry: Registry,
    project: str | os.PathLike,
    specs: list,
    priority: int = 0,
    hold: bool = False,
    force: bool = False,
) -> list[dict]:
    """Create a queued run per spec. Without ``force``, refuses (DuplicateRuns) if an identical run is done."""
    if not force:
        dups = finished_duplicates(registry, specs)
        if dups:
            raise DuplicateRuns(
                f"identical runs already finished (same experiment, config and seed): "
                f"{', '.join(map(str, dups))}. Pass --force to run them again.",
                dups,
            )
    rows = []
    for s in specs:
        row = registry.create_run(
            s.experiment, s.config, runs_dir(project), variant=s.variant, priority=priority
        )
        if hold:
            set_hold(registry, [row["id"]], True)
            row = registry.get(row["id"])
        rows.append(row)
    return rows


def queue_experiment(
    registry: Registry,
    project: str | os.PathLike,
    name: str,
    overrides: list[str] | None = None,
    seeds: list[int] | None = None,
    priority: int = 0,
    hold: bool = False,
    force: bool = False,
    experiments_file: str | os.PathLike | None = None,
) -> list[dict]:
    """Expand experiment ``name`` into queued runs; returns their rows (see :func:`queue_specs`)."""
    specs = resolve_specs(project, name, overrides, seeds, experiments_file)
    return queue_specs(registry, project, specs, priority=priority, hold=hold, force=force)


def reconcile(registry: Registry) -> list[int]:
    """Mark this host's runs whose training process died unrecorded as ``lost`` (or ``failed`` from their log) —
    done by every command that acts on a run's state, so that such a run is resumable at once, not only after
    the next `dwc runs` or worker."""
    return launcher.reap_lost(registry, socket.gethostname())


def queue_failed(registry: Registry, name: str) -> list[int]:
    """Re-queue the failed / lost / cancelled runs of experiment ``name`` (each resumes from its last.pt); a run
    whose Slurm job Slurm still holds is left alone (a Slurm worker follows it again), never given a second job."""
    reconcile(registry)
    ids = []
    for row in registry.runs([name], list(RESUMABLE)):
        with contextlib.suppress(UsageError):
            _refuse_live_slurm_job(row)
            ids.append(row["id"])
    for rid in ids:
        registry.requeue(rid, f"re-queued with the failed runs of {name}")
        _unhold(registry, rid)
    return ids


def _unhold(registry: Registry, run_id: int) -> None:
    """A re-queued run is for workers (a run that `dwc run` trained in the foreground was held while queued)."""
    with registry.write() as c:
        c.execute("UPDATE runs SET hold = 0 WHERE id = ? AND status = 'queued'", (run_id,))


# ---------------------------------------------------------------------------------------------------- cancel
def cancel(registry: Registry, run_id: int) -> str:
    """Ask a run to stop: a queued run leaves the queue at once; a running one gets SIGTERM to its process group
    (it checkpoints and ends as ``cancelled``) when it runs on this host, and the cancellation flag either way.
    Returns what happened, in words. Use :func:`wait_cancelled` to enforce a grace period. A run whose process
    died unrecorded is reconciled first (it is ``lost``, not running: there is nothing left to stop)."""
    reconcile(registry)
    row = registry.get(run_id)
    if row.get("slurm_job") and row["status"] == "lost":
        said = _cancel_lost_slurm_job(registry, row)
        if said:
            return said
    registry.request_cancel(run_id)
    if row.get("slurm_job") and row["status"] in ACTIVE:  # a run handed to Slurm: scancel its job
        from dwc_core.runs import slurm

        said = slurm.cancel(registry, run_id)
        if said:
            return said
    if row["status"] == "queued":
        return f"run {run_id}: removed from the queue (cancelled)"
    if row["status"] in ACTIVE and _signal_group(row, signal.SIGTERM):
        return f"run {run_id}: asked to stop (SIGTERM to process group {row['pgid']}); it saves a checkpoint first"
    return f"run {run_id}: cancellation requested (the training process reads it at its next heartbeat)"


def _cancel_lost_slurm_job(registry: Registry, row: dict) -> str | None:
    """A run marked lost (no worker followed it) whose job Slurm still has: scancel the job and record the run
    cancelled. None when Slurm no longer has the job (nothing to cancel)."""
    from dwc_core.runs import slurm

    job = str(row["slurm_job"])
    info = slurm.job_states([job]).get(job)
    if info is None or not info.active:
        return None
    slurm.scancel(job)
    why = f"cancelled: scancel {job} (it was {info.describe()} in Slurm while the run was lost)"
    registry.update(row["id"], cancel_requested=1)
    registry.event(row["id"], "cancel", f"scancel {job}")
    registry.set_status(row["id"], "cancelled", why, only_from=("lost",), error=why, slurm_state="CANCELLED")
    return f"run {row['id']}: scancel {job} (it was {info.describe()}); the run is cancelled"


def _signal_group(row: dict, sig: int) -> bool:
    if row.get("host") not in (None, socket.gethostname()) or not row.get("pgid"):
        return False
    if not launcher.pid_alive(row["pgid"]):
        return False
    try:
        os.killpg(row["pgid"], sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def wait_cancelled(registry: Registry, run_id: int, grace_s: float = 60.0, poll_s: float = 0.2) -> dict:
    """Wait until a cancelled run ended; after ``grace_s`` SIGKILL its process group and record it cancelled."""
    deadline = time.time() + grace_s
    while time.time() < deadline:
        row = registry.get(run_id)
        if row["status"] not in ACTIVE:
            return row
        if (
            row.get("pgid")
            and row.get("host") == socket.gethostname()
            and not launcher.pid_alive(row["pgid"])
        ):
            break
        time.sleep(poll_s)
    row = registry.get(run_id)
    if row["status"] in ACTIVE:
        killed = _signal_group(row, signal.SIGKILL)
        msg = f"cancelled: killed after a grace of {grace_s:g}s" if killed else "cancelled"
        registry.set_status(run_id, "cancelled", msg, only_from=ACTIVE, error=msg if killed else None)
    return registry.get(run_id)


# ---------------------------------------------------------------------------------------------------- resume
def resume(registry: Registry, run_id: int, from_scratch: bool = False) -> dict:
    """Re-queue a failed / cancelled / lost run; a worker continues it from ``last.pt`` in its run directory
    (``from_scratch``: its trainer clears what the run recorded and starts again at epoch 0)."""
    reconcile(registry)
    _refuse_live_slurm_job(registry.get(run_id))
    registry.requeue(run_id, "resume requested", from_scratch=from_scratch)
    _unhold(registry, run_id)
    return registry.get(run_id)


def _refuse_live_slurm_job(row: dict) -> None:
    """A run whose Slurm job is still alive in Slurm (pending, held, running: e.g. marked lost while no worker
    followed it) is not re-queued: a second job would train it beside the first. Asks Slurm; where Slurm cannot be
    asked, the state last recorded decides."""
    job = row.get("slurm_job")
    if not job or row["status"] not in RESUMABLE:
        return
    from dwc_core.runs import slurm

    try:
        info = slurm.job_states([str(job)]).get(str(job))
        state, alive = (info.describe(), info.active) if info else ("", False)
    except DwcError:  # no Slurm client here: trust what was recorded
        state = row.get("slurm_state") or ""
        alive = state.split(" ")[0] in slurm.ACTIVE_STATES
    if alive:
        raise UsageError(
            f"run {row['id']}'s slurm job {job} is still {state} in Slurm: a resume would start a second job beside "
            f"it. A Slurm worker follows it again (`dwc worker --slurm`), or cancel it first (`dwc cancel "
            f"{row['id']}`, which runs `scancel {job}`) and then resume."
        )


# ------------------------------------------------------------------------------------------ hold / release
def set_hold(registry: Registry, run_ids: list[int], held: bool) -> list[int]:
    """Hold (workers skip it) or release queued runs. Returns the ids changed; a run that is not queued is an
    error naming its status."""
    for rid in run_ids:
        row = registry.get(rid)
        if row["status"] != "queued":
            raise UsageError(
                f"run {rid} is {row['status']}; only a queued run can be {'held' if held else 'released'}."
            )
    changed = []
    with registry.write() as c:
        for rid in run_ids:
            cur = c.execute(
                "UPDATE runs SET hold = ? WHERE id = ? AND status = 'queued' AND hold != ?",
                (int(held), rid, int(held)),
            )
            if cur.rowcount:
                changed.append(rid)
                Registry._event(c, rid, "hold" if held else "release", "held" if held else "released")
    return changed


# ------------------------------------------------------------------------------------------ rm / restore / purge
def remove(registry: Registry, run_ids: list[int]) -> list[int]:
    """Soft-delete runs (hidden from lists; ``dwc restore`` brings them back). Active runs must be cancelled
    first."""
    for rid in run_ids:
        row = registry.get(rid)
        if row["status"] in ACTIVE:
            raise UsageError(
                f"run {rid} is {row['status']}; cancel it first (dwc cancel {rid}), then remove it."
            )
    now = time.time()
    with registry.write() as c:
        for rid in run_ids:
            # a queued run leaves the queue as it is hidden (and goes back to it when restored)
            queued = c.execute("SELECT status FROM runs WHERE id = ?", (rid,)).fetchone()[0] == "queued"
            c.execute(
                "UPDATE runs SET deleted = 1, deleted_at = ?, status = CASE status WHEN 'queued' THEN 'cancelled' "
                "ELSE status END, ended = CASE status WHEN 'queued' THEN ? ELSE ended END WHERE id = ?",
                (now, now, rid),
            )
            Registry._event(c, rid, "deleted", REMOVED_QUEUED if queued else "removed (soft delete)")
    return list(run_ids)


REMOVED_QUEUED = "removed (soft delete) while queued: left the queue"


def restore(registry: Registry, run_ids: list[int]) -> list[int]:
    """Bring soft-deleted runs back; returns the ids that were removed and are now restored (others are left).
    A run removed while it was queued goes back to the queue (``dwc rm`` then ``dwc restore`` changes nothing)."""
    for rid in run_ids:
        registry.get(rid)
    done = []
    with registry.write() as c:
        for rid in dict.fromkeys(run_ids):
            cur = c.execute(
                "UPDATE runs SET deleted = 0, deleted_at = NULL WHERE id = ? AND deleted = 1", (rid,)
            )
            if not cur.rowcount:
                continue
            last = c.execute(
                "SELECT message FROM events WHERE run_id = ? AND kind = 'deleted' ORDER BY rowid DESC LIMIT 1",
                (rid,),
            ).fetchone()
            requeue = last is not None and last[0] == REMOVED_QUEUED
            if requeue:
                c.execute(
                    "UPDATE runs SET status = 'queued', ended = NULL WHERE id = ? AND status = 'cancelled'",
                    (rid,),
                )
            Registry._event(c, rid, "restored", "restored to the queue" if requeue else "restored")
            done.append(rid)
    return done


def run_disk_usage(run_dir: str | os.PathLike | None) -> int:
    """Bytes used by a run directory (0 when it does not exist); files are counted once, links not followed."""
    if not run_dir:
        return 0
    total = 0
    for root, _dirs, files in os.walk(run_dir):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


@dataclass
class PurgeItem:
    id: int
    experiment: str
    status: str
    run_dir: str | None
    bytes: int


def purge_plan(registry: Registry) -> list[PurgeItem]:
    """What ``purge`` would delete: the soft-deleted runs, with their directories' sizes."""
    rows = registry._rows("SELECT id, experiment, status, run_dir FROM runs WHERE deleted = 1 ORDER BY id")
    return [
        PurgeItem(r["id"], r["experiment"], r["status"], r["run_dir"], run_disk_usage(r["run_dir"]))
        for r in rows
    ]


def purge(registry: Registry, items: list[PurgeItem] | None = None) -> tuple[int, int]:
    """Delete soft-deleted runs for good: rows (with metrics, events, evaluations, per-query results) and run
    directories. Returns (runs deleted, bytes freed)."""
    items = purge_plan(registry) if items is None else items
    freed = 0
    done = 0
    for item in items:
        with registry.write() as c:
            row = c.execute("SELECT deleted, status FROM runs WHERE id = ?", (item.id,)).fetchone()
            if row is None or not row["deleted"] or row["status"] in ACTIVE:
                continue  # restored (or restarted) meanwhile
            for table in ("query_results", "evaluations", "metrics", "events"):
                c.execute(f"DELETE FROM {table} WHERE run_id = ?", (item.id,))
            c.execute("DELETE FROM runs WHERE id = ?", (item.id,))
        if item.run_dir and Path(item.run_dir).is_dir():
            shutil.rmtree(item.run_dir, ignore_errors=True)
        freed += item.bytes
        done += 1
    return done, freed


@dataclass
class OrphanTemp:
    run_id: int
    path: Path
    bytes: int


def orphan_temps(registry: Registry) -> list[OrphanTemp]:
    """Temp files of writes that were killed (a checkpoint's ``.last.pt.tmp…`` can be tens of MB), in the
    directories of runs nobody trains: not starting/running, run lock free, and the writer named in the file's
    name no longer alive. The trainer removes its own at the next start; ``purge`` removes the others."""
    out = []
    for r in registry._rows("SELECT id, status, run_dir FROM runs WHERE deleted = 0 ORDER BY id"):
        run_dir = Path(r["run_dir"]) if r["run_dir"] else None
        if run_dir is None or r["status"] in ACTIVE or not run_dir.is_dir() or run_lock_holder(run_dir):
            continue
        out += [OrphanTemp(int(r["id"]), p, n) for p, n in temp_files(run_dir, dead_writers_only=True)]
    return out


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# ---------------------------------------------------------------------------------------------------- workers
def worker_name(host: str | None = None, pid: int | None = None) -> str:
    return f"{host or socket.gethostname()}-{pid or os.getpid()}"


def list_workers(project: str | os.PathLike, clean: bool = False) -> list[dict]:
    """Every worker file under ``runs/workers/``: its info (pid, host, gpus, started, heartbeat…) plus ``alive``
    and ``runs`` (ids of the active runs it holds). With ``clean``, the files of dead workers are removed."""
    folder = workers_dir(project)
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        info["alive"] = worker_alive(info, path)
        info["file"] = str(path)
        out.append(info)
        if clean and not info["alive"]:
            for p in (path, path.with_suffix(".lock")):
                p.unlink(missing_ok=True)
    reg_path = registry_path(project)
    if out and reg_path.exists():
        reg = Registry(reg_path)
        try:
            held: dict[str, list[int]] = {}
            for r in reg._rows("SELECT id, worker FROM runs WHERE status IN ('starting', 'running')"):
                held.setdefault(r["worker"] or "", []).append(r["id"])
        finally:
            reg.close()
        for info in out:
            info["runs"] = held.get(info.get("name", ""), [])
    return out


def worker_alive(info: dict, path: Path | None = None) -> bool:
    """Same host: its lock file is held (the kernel drops it when the worker dies). Other host: fresh heartbeat."""
    if info.get("host") == socket.gethostname():
        if path is not None:
            return is_locked(path.with_suffix(".lock")) is not None
        return launcher.pid_alive(info.get("pid"))
    return time.time() - float(info.get("heartbeat") or 0) < WORKER_STALE_S


def live_workers(project: str | os.PathLike) -> list[dict]:
    """The workers alive now (any host sharing this project's runs/ folder)."""
    return [w for w in list_workers(project) if w["alive"]]


def nobody_will_take(project: str | os.PathLike) -> str | None:
    """A sentence for the user when queued runs would sit waiting because no worker is alive; None otherwise."""
    if live_workers(project):
        return None
    return (
        "no worker is running, so nothing will take the queued run(s) yet. Start one with `dwc worker` "
        "(GPUs of this machine; `--cpu` for CPU slots, `--detach` to keep it in the background)."
    )


def gpu_warnings(specs: list) -> list[str]:
    """For queued specs whose ``trainer.gpus`` this machine cannot meet: a sentence each (the run may be meant for
    another host or Slurm, so queueing goes on; a local worker fails it rather than wait forever)."""
    from dwc_core.runs.gpus import gpu_request_problem

    out = []
    for s in specs:
        problem = gpu_request_problem(s.config.get("trainer", {}), s.experiment)
        if problem:
            out.append(
                f"{problem} Queued anyway for a worker with enough GPUs (another host, or `dwc worker --slurm`); "
                "a worker on this machine fails it rather than wait forever."
            )
    return out


def gpu_holders(project: str | os.PathLike) -> dict[str, dict]:
    """GPU id → the worker holding its lock on this host (from ``runs/workers/gpu-<id>.lock``)."""
    folder = workers_dir(project)
    out = {}
    if folder.is_dir():
        for path in folder.glob("gpu-*.lock"):
            holder = is_locked(path)
            if holder is not None:
                out[path.stem[len("gpu-") :]] = holder
    return out


# ------------------------------------------------------------------------------------------------------- logs
def log_path(row: dict) -> Path:
    return Path(row["run_dir"]) / "train.log"


def log_tail(row: dict, n: int = 20) -> list[str]:
    """The last ``n`` lines of a run's train.log (empty when there is none yet)."""
    path = log_path(row)
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            block = min(size, max(4096, n * 200))
            while True:
                fh.seek(size - block)
                data = fh.read(block)
                if data.count(b"\n") > n or block == size:
                    break
                block = min(size, block * 2)
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-n:] if n > 0 else []


def follow_log(
    registry: Registry,
    run_id: int,
    n: int = 20,
    poll_s: float = 0.3,
    linger_s: float = 1.0,
    reconcile_s: float = 3.0,
) -> Iterator[str]:
    """Yield the last ``n`` lines of the run's log, then new lines as they are written, until the run is no longer
    queued or active (plus ``linger_s`` to catch its last words). Every ``reconcile_s`` seconds the runs of this
    host are reconciled (:func:`reconcile`): a run whose trainer died with nobody left to record it (its worker
    killed too) ends the follow as ``lost`` instead of being followed forever."""
    row = registry.get(run_id)
    path = log_path(row)
    yield from log_tail(row, n)
    pos = path.stat().st_size if path.exists() else 0
    buf = b""
    ended_at: float | None = None
    reconciled_at = time.monotonic()
    while True:
        if time.monotonic() - reconciled_at >= reconcile_s:
            reconcile(registry)  # a read-only registry is left as it is
            reconciled_at = time.monotonic()
        if path.exists():
            with open(path, "rb") as fh:
                fh.seek(pos)
                data = fh.read()
                pos = fh.tell()
            if data:
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", errors="replace")
        status = registry.get(run_id)["status"]
        if status in FINISHED:
            if ended_at is None:
                ended_at = time.time()
            elif time.time() - ended_at >= linger_s:
                if buf:
                    yield buf.decode("utf-8", errors="replace")
                return
        time.sleep(poll_s)


# ------------------------------------------------------------------------------------------------- experiments
def experiment_summary(
    project: str | os.PathLike, experiments_file: str | os.PathLike | None = None
) -> list[dict]:
    """The experiments of the file: description, tags, grid size, seed count and run counts by status."""
    from dwc_core.config.experiments import ExperimentsFile

    path = Path(experiments_file) if experiments_file else Path(project) / "experiments.yaml"
    ef = ExperimentsFile.load(path)
    counts: dict[str, dict[str, int]] = {}
    reg_path = registry_path(project)
    if reg_path.exists():
        reg = Registry(reg_path, create=False)
        try:
            for r in reg.conn.execute(
                "SELECT experiment, status, count(*) FROM runs WHERE deleted = 0 GROUP BY experiment, status"
            ):
                counts.setdefault(r[0], {})[r[1]] = r[2]
        finally:
            reg.close()
    rows = []
    for name in ef.names():
        data = ef.merged(name).data
        # its own description: one inherited through `extends` would describe the parent
        parent = ef.experiments.get(name, {}).get("extends")
        own = ef.description(name) or (f"(extends {parent})" if parent else "")
        grid = data.get("grid") or {}
        size = 1
        for values in grid.values() if isinstance(grid, dict) else []:
            size *= len(values) if isinstance(values, list) else 1
        seeds = data.get("seeds")
        tags = data.get("tags") or []
        rows.append(
            {
                "experiment": name,
                "description": own,
                "tags": [str(t) for t in tags] if isinstance(tags, list) else [],
                "grid": size,
                "seeds": len(seeds) if isinstance(seeds, list) else 1,
                "runs": {
                    s: counts.get(name, {}).get(s, 0) for s in STATUS_ORDER if counts.get(name, {}).get(s)
                },
            }
        )
    return rows


STATUS_ORDER = ("queued", "starting", "running", "done", "failed", "cancelled", "lost")


# ------------------------------------------------------------------------------- interrupted foreground runs
def cancel_unstarted(registry: Registry, run_ids: list[int], why: str) -> list[int]:
    """Cancel the runs of ``run_ids`` that are still queued (a foreground `dwc run` created and held them, then
    was interrupted before starting them): they end ``cancelled``, not held, with an event saying ``why``, so
    that nothing waits forever for a command that is gone; `dwc resume ID` or `dwc queue --failed NAME` starts
    them again. Runs already claimed or finished are left alone. Returns the ids cancelled."""
    return [
        rid
        for rid in run_ids
        if registry.set_status(rid, "cancelled", f"cancelled: {why}", only_from=("queued",), hold=0)
    ]
