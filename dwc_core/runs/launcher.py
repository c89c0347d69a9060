"""Starting and supervising training processes (torch-free).

A training process runs in its own session/process group, with stdout/stderr appended to
``<run_dir>/train.log``, so closing the terminal, the TUI or the CLI that started it never kills it. Whoever
supervises it (``dwc run`` in the foreground, or a worker) reconciles the run row when the process ends without
finishing it itself (killed by a signal, crashed before reporting) and detects runs whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dwc_core.runs.locks import run_lock_holder
from dwc_core.runs.registry import ACTIVE, Registry

STALE_HEARTBEAT_S = 180.0


def train_command(run: dict, registry_path: Path) -> list[str]:
    gpus = int(run["config"]["trainer"].get("gpus", 1))
    base = ["-m", "dwc_core.engine.train", str(run["id"]), "--registry", str(registry_path)]
    if gpus > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={gpus}",
            *base,
        ]
    return [sys.executable, *base]


def spawn(
    registry: Registry,
    run: dict,
    registry_path: Path,
    gpus: str | None = None,
    env_extra: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start the training process of a claimed run; returns the Popen (its pid is the process group id).
    ``gpus`` becomes CUDA_VISIBLE_DEVICES; ``env_extra`` (e.g. OMP_NUM_THREADS from a worker) is added to the
    environment. The command is an argument list: nothing reaches a shell."""
    run_dir = Path(run["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    env.update(env_extra or {})
    log = open(run_dir / "train.log", "ab")  # noqa: SIM115 — handed to the child
    try:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start run {run['id']} ===\n".encode())
        log.flush()
        proc = subprocess.Popen(
            train_command(run, registry_path),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=str(registry_path.parent.parent),
        )
    finally:
        log.close()
    registry.update(run["id"], pid=proc.pid, pgid=proc.pid, gpus=gpus)
    return proc


def signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def log_tail(run_dir: str | os.PathLike | None, n: int = 5, max_bytes: int = 8192) -> list[str]:
    """The last ``n`` non-empty lines of ``<run_dir>/train.log`` (for error messages)."""
    if not run_dir:
        return []
    try:
        with open(Path(run_dir) / "train.log", "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return []
    lines = [x.rstrip() for x in data.decode("utf-8", errors="replace").splitlines() if x.strip()]
    return lines[-n:]


def reconcile_exit(registry: Registry, run_id: int, returncode: int | None) -> dict:
    """After the process ended: if it did not finish its row itself, mark the run failed with the cause (exit code
    or signal, and the log's last lines) — or cancelled, when a cancellation had been asked for.
    ``returncode`` None: the process was not our child (an adopted run) and its exit status is unknown."""
    row = registry.get(run_id)
    if row["status"] in ACTIVE:
        if returncode is None:
            cause = "training process ended (exit status unknown: it was adopted by a worker)"
        elif returncode < 0:
            cause = f"training process killed by {signal_name(returncode)}"
        else:
            cause = f"training process exited with code {returncode} without finishing the run"
        if row.get("cancel_requested"):
            registry.set_status(
                run_id, "cancelled", f"cancelled ({cause})", only_from=ACTIVE, exit_code=returncode
            )
            return registry.get(run_id)
        tail = log_tail(row.get("run_dir"))
        msg = cause + (" — last lines of train.log:\n" + "\n".join(tail) if tail else " (see train.log)")
        registry.set_status(run_id, "failed", cause, only_from=ACTIVE, error=msg, exit_code=returncode)
        row = registry.get(run_id)
    return row


def terminate(pgid: int, grace_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group (the run checkpoints and exits), SIGKILL after ``grace_s``."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace_s
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            return
        if proc is None and not pid_alive(pgid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


#: Slurm job states in which a run's trainer is not running (yet): its heartbeat is not expected to move
SLURM_WAITING = {
    "PENDING",
    "CONFIGURING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESV_DEL_HOLD",
    "SUSPENDED",
    "STOPPED",
}


def reap_lost(
    registry: Registry,
    host: str,
    stale_s: float = STALE_HEARTBEAT_S,
    exclude: set[int] | frozenset = frozenset(),
) -> list[int]:
    """Mark active runs as ``lost`` when their process on this host is gone or their heartbeat is stale.
    ``exclude``: runs whose end the caller reconciles itself (a worker's own children).

    A run handed to Slurm is judged by the Slurm worker that follows it, never by heartbeat age here: its heartbeat
    moves only while its job runs and a worker ingests it. It is lost only when no live worker follows it and its
    job was last seen running (a new ``dwc worker --slurm`` adopts it again; ``dwc resume`` asks Slurm first)."""
    lost = []
    now = time.time()
    if getattr(registry, "readonly", False):  # a read-only registry is shown as it is
        return lost
    followers: dict[str, bool] = {}
    for row in registry.runs(statuses=list(ACTIVE)):
        if row["id"] in exclude:
            continue
        if row.get("slurm_job"):
            if (row.get("slurm_state") or "PENDING").split(" ")[0] in SLURM_WAITING:
                continue  # waiting in Slurm's queue (pending, held, requeued): no heartbeat is expected
            worker = row.get("worker") or ""
            if worker not in followers:
                followers[worker] = _worker_alive(registry, worker)
            if followers[worker]:
                continue  # its Slurm worker follows the job and settles the run when Slurm ends it
            stale = row["status"] == "running" and row["heartbeat"] and now - row["heartbeat"] > stale_s
            reason = (
                f"no heartbeat for {now - row['heartbeat']:.0f}s and no live Slurm worker follows slurm job "
                f"{row['slurm_job']} (last seen {row.get('slurm_state') or 'submitted'}); `dwc worker --slurm` "
                "adopts it"
                if stale
                else None
            )
            if reason and registry.set_status(row["id"], "lost", reason, only_from=ACTIVE, error=reason):
                lost.append(row["id"])
            continue
        reason = None
        here = row["host"] == host
        alive = bool(here and row["pid"] and pid_alive(row["pid"]))
        holder = run_lock_holder(row["run_dir"]) if here and row.get("run_dir") else None
        stale = row["status"] == "running" and row["heartbeat"] and now - row["heartbeat"] > stale_s
        if here and row["pid"] and not alive and holder is None:
            reason = f"process {row['pid']} on {host} is gone"
            logged = _logged_failure(row.get("run_dir"))
            if logged and registry.set_status(
                row["id"],
                "failed",
                f"{reason}; its log says: {logged}",
                only_from=ACTIVE,
                error=logged,
                exit_code=1,
            ):  # it failed but could not record it (e.g. the disk was full): reconciled from train.log
                continue
        elif stale and (alive or holder is not None):  # alive on this host (e.g. SIGSTOPped): never lost
            _warn_stalled(registry, row, now)
        elif stale:
            reason = f"no heartbeat for {now - row['heartbeat']:.0f}s"
        if reason and registry.set_status(row["id"], "lost", reason, only_from=ACTIVE, error=reason):
            lost.append(row["id"])
    return lost


def _worker_alive(registry: Registry, name: str) -> bool:
    """Whether the worker ``name`` (``runs/workers/<name>.json`` beside the registry) is alive now."""
    if not name or getattr(registry, "path", None) is None:
        return False
    import json

    from dwc_core.runs import control  # control imports this module

    path = Path(registry.path).parent / control.WORKERS_DIR / f"{name}.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and control.worker_alive(info, path)


def _warn_stalled(registry: Registry, row: dict, now: float) -> None:
    """One ``stalled`` warning event per stall (a new one only after the heartbeat moved on)."""
    events = registry.events(row["id"])
    if any(e["kind"] == "stalled" and e["time"] > row["heartbeat"] for e in events):
        return
    who = f"pid {row['pid']}" if row["pid"] else "its trainer"
    registry.event(
        row["id"], "stalled",
        f"no heartbeat for {now - row['heartbeat']:.0f}s, but {who} on {row['host']} is alive (stopped or "
        "blocked?); the run stays running",
    )  # fmt: skip


def _logged_failure(run_dir: str | None) -> str | None:
    """The failure message the trainer logged in its last attempt (``[hh:mm:ss] failed: …``), if any."""
    message = None
    for line in log_tail(run_dir, n=40, max_bytes=32768):
        if line.startswith("=== ") and " start run " in line:
            message = None  # a later attempt started
        elif "] failed: " in line:
            message = line.split("] failed: ", 1)[1]
    return message


def torchrun_command(
    run: dict, registry_path: Path, nodes: int, gpus: int, endpoint: str, rdzv_id: str, extra: list[str] = ()
) -> list[str]:
    """One node's share of a multi-node run (started once per node, e.g. by ``srun``): torchrun with the c10d
    rendezvous at ``endpoint`` (host:port on the first node); ``extra`` goes to the training process."""
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc-per-node={gpus}",
        "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={rdzv_id}",
        "-m", "dwc_core.engine.train", str(run["id"]), "--registry", str(registry_path), *extra,
    ]  # fmt: skip
