"""Process-lifetime file locks: exclusive across processes, released when the holder dies (even by SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from dwc_core.runs.locks import FileLock, LockHeld, is_locked, run_lock, run_lock_holder

HOLDER = (
    "import sys, time\n"
    "from dwc_core.runs.locks import run_lock\n"
    "run_lock(sys.argv[1], 7).acquire()\n"
    "print('locked', flush=True)\n"
    "time.sleep(60)\n"
)


def _start_holder(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_process_is_refused_naming_the_holder(tmp_path):
    proc = _start_holder(tmp_path)
    try:
        holder = run_lock_holder(tmp_path)
        assert holder["pid"] == proc.pid and holder["what"] == "trainer of run 7"
        with pytest.raises(LockHeld) as info:
            run_lock(tmp_path, 7).acquire()
        assert f"pid {proc.pid}" in str(info.value)
    finally:
        proc.kill()
        proc.wait()


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    proc = _start_holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert run_lock_holder(tmp_path) is None
    lock = run_lock(tmp_path, 7).acquire()
    assert lock.held and run_lock_holder(tmp_path)["pid"] == os.getpid()
    lock.release()
    assert run_lock_holder(tmp_path) is None


def test_release_and_context_manager(tmp_path):
    path = tmp_path / "gpu0.lock"
    assert is_locked(path) is None
    with FileLock(path, what="worker") as lock:
        assert lock.held
        deadline = time.time() + 5
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from dwc_core.runs.locks import is_locked; print(is_locked({str(path)!r}))",
            ],
            capture_output=True,
            text=True,
            timeout=deadline - time.time() + 30,
        ).stdout
        assert "'what': 'worker'" in out
    assert is_locked(path) is None
