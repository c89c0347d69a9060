"""Exclusive locks held for a process's whole life: one per run (its trainer) and one per GPU (its worker).

A lock is ``flock(LOCK_EX | LOCK_NB)`` on a small file; the kernel releases it when the holder dies, however it dies
(SIGKILL included), so a stale lock can never block anyone. The holder writes who it is (pid, host, what, since)
into the file, so whoever is refused can say who holds it. Locks are per host: flock over NFS is not trusted, which
is why a cluster run is never locked from another node (see ``dwc_core.runs`` ingestion). Torch-free.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

RUN_LOCK_NAME = ".run.lock"


class LockHeld(Exception):
    """The lock is held by another live process; ``holder`` says who (may be empty if it wrote nothing yet)."""

    def __init__(self, path: Path, holder: dict):
        self.path = path
        self.holder = holder
        super().__init__(f"{path} is locked by {describe_holder(holder)}")


def describe_holder(holder: dict) -> str:
    if not holder:
        return "another process"
    what = f" ({holder['what']})" if holder.get("what") else ""
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}{what}"


class FileLock:
    """An exclusive, non-blocking, process-lifetime lock on ``path``.

    >>> lock = FileLock(run_dir / ".run.lock", what="trainer of run 3")
    >>> lock.acquire()            # raises LockHeld naming the holder if another process has it
    >>> ...; lock.release()       # or let the process exit
    """

    def __init__(self, path: str | os.PathLike, what: str = ""):
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FileLock:
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(self.path, read_holder(self.path)) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what, "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_holder(path: str | os.PathLike) -> dict:
    """What the holder wrote into the lock file ({} when nothing readable)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    try:
        return json.loads(text) if text.strip() else {}
    except ValueError:
        return {}


def is_locked(path: str | os.PathLike) -> dict | None:
    """The holder (a dict, possibly empty) if some process holds the lock on ``path`` now, else None."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_holder(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def run_lock(run_dir: str | os.PathLike, run_id: int) -> FileLock:
    """The lock a training process holds on its run directory for its whole life."""
    return FileLock(Path(run_dir) / RUN_LOCK_NAME, what=f"trainer of run {run_id}")


def run_lock_holder(run_dir: str | os.PathLike) -> dict | None:
    """Who trains this run right now (on this host), or None."""
    return is_locked(Path(run_dir) / RUN_LOCK_NAME)
