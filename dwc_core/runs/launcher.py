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


def spawn(registry: Registry, run: dict, registry_path: Path, gpus: str | None = None) -> subprocess.Popen:
    """Start the training process of a claimed run; returns the Popen (its pid is the process group id)."""
    run_dir = Path(run["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
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


def reconcile_exit(registry: Registry, run_id: int, returncode: int) -> dict:
    """After the process ended: if it did not finish its row itself, mark the run failed with the cause."""
    row = registry.get(run_id)
    if row["status"] in ACTIVE:
        if returncode < 0:
            msg = f"training process killed by {signal_name(returncode)}"
        else:
            msg = f"training process exited with code {returncode} without finishing the run (see train.log)"
        registry.set_status(run_id, "failed", msg, only_from=ACTIVE, error=msg, exit_code=returncode)
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


def reap_lost(registry: Registry, host: str, stale_s: float = STALE_HEARTBEAT_S) -> list[int]:
    """Mark active runs as ``lost`` when their process on this host is gone or their heartbeat is stale."""
    lost = []
    now = time.time()
    for row in registry.runs(statuses=list(ACTIVE)):
        reason = None
        if row["host"] == host and row["pid"] and not pid_alive(row["pid"]):
            reason = f"process {row['pid']} on {host} is gone"
        elif row["status"] == "running" and row["heartbeat"] and now - row["heartbeat"] > stale_s:
            reason = f"no heartbeat for {now - row['heartbeat']:.0f}s"
        if reason and registry.set_status(row["id"], "lost", reason, only_from=ACTIVE, error=reason):
            lost.append(row["id"])
    return lost
