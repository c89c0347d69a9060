"""`dwc tui` as a process: live updates written by another process, import hygiene, quitting / SIGHUP never touch
runs, clear messages for a registry it cannot use."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_tui import add_run, make_app, make_project, ready, recall, seed_registry, text_of, until
from typer.testing import CliRunner

from dwc_core.runs import registry as registry_mod
from dwc_core.runs.registry import Registry
from dwc_tui.cli import app as cli_app

pytestmark = pytest.mark.anyio
HEAVY = ("torch", "torchvision", "open_clip")


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setenv("DWC_FAKE_GPUS", "1")
    p = make_project(tmp_path)
    return p, seed_registry(p)


WRITER = """
import sys, time
from dwc_core.runs.registry import Registry
reg = Registry(sys.argv[1])
rid = int(sys.argv[2])
reg.log_metrics(rid, [{"step": 7, "epoch": 1.5, "split": "train", "name": "loss", "value": 0.4321}])
reg.heartbeat(rid, epoch=2, step=7, total_steps=12, phase="train", epoch_step=1, epoch_steps=4, loss=0.4321, eta_s=30)
print(time.time(), flush=True)
"""


async def test_progress_written_by_another_process_shows_within_2s(project):
    p, ids = project
    reg = Registry(p / "runs" / "registry.db")
    rid = add_run(reg, p, "live", "running", epochs=3, losses=[1.0])
    reg.close()
    app = make_app(p, poll_interval=1.0)  # the real interval
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        row = lambda: app.dashboard.rows[rid]["cells"]  # noqa: E731
        assert "0.4321"[:5] not in row()["loss"].plain
        res = subprocess.run(
            [sys.executable, "-c", WRITER, str(p / "runs" / "registry.db"), str(rid)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        written = float(res.stdout.strip())
        await until(
            pilot, lambda: "0.432" in text_of(app) and row()["epoch"].plain.split()[0] == "2/3", timeout=5,
            what="new epoch and loss on screen",
        )  # fmt: skip
        assert time.time() - written < 2.0


async def test_a_run_queued_by_another_process_shows_within_2s_of_its_creation(project):
    """`dwc queue` in another process creates a new run while the TUI runs (the poll interval is the real one):
    its row is on the dashboard, queued, within 2 s of the time the registry recorded its creation."""
    import asyncio

    p, ids = project
    app = make_app(p, poll_interval=1.0)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.pause(1.5)  # a poll or two of nothing new: the next one must notice the new row by itself
        assert sorted(app.dashboard.shown_ids) == sorted(ids.values())
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dwc_tui.cli", "--project", str(p), "queue", "demo",
            "--set", "dataset.num_test=64",  # a gallery large enough for R@50
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)  # the app keeps running meanwhile
        assert proc.returncode == 0, err.decode()
        new = int(out.decode().split()[0])  # `dwc queue` prints the new run's id
        assert new not in ids.values()
        seen = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if new in app.dashboard.shown_ids:
                seen = time.time()
                break
            await pilot.pause(0.02)
        assert seen is not None, f"run {new} never showed:\n{text_of(app)}"
        created = Registry(p / "runs" / "registry.db", create=False).get(new)["created"]
        assert seen - created < 2.0, f"shown {seen - created:.2f} s after it was created"
        line = next(x for x in text_of(app).splitlines() if x.split()[:1] == [str(new)])
        assert "demo" in line and "queued" in line, line
        assert "queued 2" in text_of(app)  # the header counts it too


NO_TORCH_SCREENS = """
import asyncio, sys, time
from dwc_tui.app.app import DwcApp

async def main(project):
    app = DwcApp(project, poll_interval=0.2)
    seen = []
    async with app.run_test(size=(80, 24)) as pilot:
        async def wait(cond, what):
            deadline = time.monotonic() + 30
            while not cond():
                if time.monotonic() > deadline:
                    raise SystemExit("timed out waiting for " + what)
                await pilot.pause(0.05)

        async def open_with(keys, name, loaded):
            await pilot.press(*keys)
            await wait(lambda: type(app.screen).__name__ == name and loaded(app.screen), name)
            seen.append(name)
            await pilot.press("escape")
            await wait(lambda: type(app.screen).__name__ == "DashboardScreen", "the dashboard again")

        await wait(lambda: app.polls_applied >= 2 and app.dashboard.shown_ids, "two polls")
        app.dashboard.query_one("#runs").move_cursor(row=0)  # the finished demo run
        await wait(lambda: app.poller.focus is not None, "the selected run's curves")
        await open_with(["enter"], "RunScreen", lambda s: s.info is not None)
        await open_with(["q"], "QueueScreen", lambda s: s.valid)
        await open_with(["b"], "BrowseScreen", lambda s: s.view is not None)
        await open_with(["space", "space", "space", "C"], "CompareScreen", lambda s: s.table is not None)
    print("SCREENS=" + ",".join(seen))

asyncio.run(main(sys.argv[1]))
print("HEAVY=" + ",".join(m for m in sys.argv[2:] if m in sys.modules))
"""


def test_tui_does_not_import_torch(tmp_path):
    """The dashboard and every screen it opens (run, queue, browse, compare) load without torch, torchvision or
    open_clip: checked in a fresh interpreter after all of them were shown."""
    make_project(tmp_path)
    seed_registry(tmp_path)
    res = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCREENS, str(tmp_path), *HEAVY],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.strip().splitlines()
    assert "SCREENS=RunScreen,QueueScreen,BrowseScreen,CompareScreen" in lines, res.stdout + res.stderr
    assert lines[-1] == "HEAVY=", res.stdout


def test_newer_registry_schema_is_a_clear_error(tmp_path):
    make_project(tmp_path)
    seed_registry(tmp_path)
    conn = sqlite3.connect(tmp_path / "runs" / "registry.db")
    conn.execute("INSERT INTO _dwc_migrations (name, applied) VALUES ('999_from_the_future', 0)")
    conn.commit()
    conn.close()
    res = CliRunner().invoke(cli_app, ["--project", str(tmp_path), "tui"])
    assert res.exit_code == 3, res.output
    assert "newer version of dwc" in res.output and "999_from_the_future" in res.output
    assert "Traceback" not in res.output


async def test_registry_replaced_by_a_newer_one_while_open_shows_message(project):
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        conn = sqlite3.connect(p / "runs" / "registry.db")
        conn.execute("INSERT INTO _dwc_migrations (name, applied) VALUES ('999_from_the_future', 0)")
        conn.commit()
        conn.close()
        await until(pilot, lambda: "newer version of dwc" in text_of(app), what="message in the summary line")
        assert len(app.dashboard.shown_ids) == 5  # what was shown stays


async def test_read_only_registry_shows_runs_and_refuses_changes(project, monkeypatch):
    p, ids = project
    # as root every file is writable: make the registry believe its file is not
    monkeypatch.setattr(registry_mod.os, "access", lambda path, mode: False)
    app = make_app(p)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        assert len(app.dashboard.shown_ids) == 5
        table = app.dashboard.query_one("#runs")
        table.move_cursor(row=app.dashboard.shown_ids.index(ids["queued"]))
        await pilot.press("c")
        await until(pilot, lambda: app.messages, what="the action's outcome")
        assert app.messages[-1][0] == "error" and "is read-only" in app.messages[-1][1]
        assert "Traceback" not in text_of(app)
    assert Registry(p / "runs" / "registry.db", create=False).get(ids["queued"])["status"] == "queued"


@contextlib.contextmanager
def read_only_mount(folder: Path):
    """``folder`` bind-mounted read-only onto itself (a real read-only file system, even for root; skips where
    mounting is not allowed)."""
    res = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot bind-mount read-only here: {res.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)


async def test_starting_on_a_read_only_mount_shows_runs_and_says_read_only_once(project):
    """`dwc tui` opened on a project that is read-only from the start (a real read-only mount, not a registry
    turning read-only): every run is shown, the read-only note comes once (not at every poll), an action is
    refused with a clear message, and nothing changes."""
    p, ids = project
    with read_only_mount(p):
        assert not os.access(p / "runs" / "registry.db", os.W_OK)
        app = make_app(p)
        async with app.run_test(size=(100, 30), notifications=True) as pilot:
            await ready(pilot)
            assert sorted(app.dashboard.shown_ids) == sorted(ids.values())
            await until(pilot, lambda: "read-only" in text_of(app), what="the read-only note")
            polls = app.polls_applied
            await until(pilot, lambda: app.polls_applied >= polls + 3, what="three more polls")
            notes = [m for m in app.messages if "read-only" in m[1]]
            assert notes == [("warning", f"{p / 'runs' / 'registry.db'} is read-only here: the runs are shown as "
                              "they are; queue, cancel, resume and delete are refused.")]  # fmt: skip
            assert text_of(app).count("read-only") == 1
            assert "Traceback" not in text_of(app)
            table = app.dashboard.query_one("#runs")
            table.move_cursor(row=app.dashboard.shown_ids.index(ids["queued"]))
            await pilot.press("c")
            await until(pilot, lambda: app.messages[-1][0] == "error", what="the refused cancel")
            assert "read-only" in app.messages[-1][1]
        assert Registry(p / "runs" / "registry.db", create=False).get(ids["queued"])["status"] == "queued"
    app = make_app(p)  # writable again: no note
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        await ready(pilot)
        await pilot.pause(0.5)
        assert not app.messages and "read-only" not in text_of(app)


def test_dwc_tui_process_on_a_read_only_mount_shows_runs_and_quits_cleanly(project):
    """The real command in a terminal of its own, on a read-only mount: the runs and the read-only note are on the
    screen, no traceback, and ctrl+q exits 0."""
    p, ids = project
    with read_only_mount(p):
        pid, fd = _start_tui(p)
        status = None
        try:
            out = b""
            deadline = time.time() + 30
            while time.time() < deadline and not (b"grid" in out and b"read-only" in out):
                if select.select([fd], [], [], 0.2)[0]:
                    try:
                        out += os.read(fd, 65536)
                    except OSError:
                        break
            assert b"grid" in out and b"read-only" in out, out[-2000:]
            assert b"Traceback" not in out
            os.write(fd, b"\x11")
            status = _wait_exit(pid, fd)
        finally:
            if status is None:  # failed before it quit: do not leave it running on the mount
                with contextlib.suppress(ProcessLookupError, ChildProcessError):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
            os.close(fd)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


# ------------------------------------------------------------------------------------- quitting never touches runs
def _dummy_run(project: Path) -> tuple[int, subprocess.Popen]:
    """A long-lived process in its own session, registered as a running run (as a worker would start it)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    reg = Registry(project / "runs" / "registry.db")
    rid = add_run(reg, project, "longrun", "running", losses=[1.0])
    reg.update(rid, pid=proc.pid, pgid=proc.pid, host=os.uname().nodename)
    reg.close()
    return rid, proc


def _start_tui(project: Path) -> tuple[int, int]:
    pid, fd = pty.fork()
    if pid == 0:  # the child: `dwc tui` on a terminal of its own
        os.environ["TERM"] = "xterm-256color"
        os.environ["COLUMNS"], os.environ["LINES"] = "100", "30"
        os.execv(sys.executable, [sys.executable, "-m", "dwc_tui.cli", "--project", str(project), "tui"])
    return pid, fd


def _read_until(fd: int, needle: bytes, timeout: float = 30.0) -> bytes:
    buf = b""
    deadline = time.time() + timeout
    while time.time() < deadline and needle not in buf:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                buf += os.read(fd, 65536)
            except OSError:
                break
    assert needle in buf, buf[-2000:]
    return buf


def _wait_exit(pid: int, fd: int, timeout: float = 20.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with_output = select.select([fd], [], [], 0.1)[0]
        if with_output:
            with contextlib.suppress(OSError):
                os.read(fd, 65536)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
    os.kill(pid, signal.SIGKILL)
    raise AssertionError("dwc tui did not exit")


@pytest.mark.parametrize("how", ["ctrl+q", "SIGHUP"])
def test_quitting_or_sighup_leaves_runs_running(tmp_path, how):
    make_project(tmp_path)
    rid, proc = _dummy_run(tmp_path)
    try:
        pid, fd = _start_tui(tmp_path)
        _read_until(fd, b"longrun")
        if how == "ctrl+q":
            os.write(fd, b"\x11")
            status = _wait_exit(pid, fd)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        else:
            os.kill(pid, signal.SIGHUP)
            _wait_exit(pid, fd)
        os.close(fd)
        time.sleep(0.3)
        assert proc.poll() is None, "the run's process was touched"
        row = Registry(tmp_path / "runs" / "registry.db", create=False).get(rid)
        assert row["status"] == "running" and not row["cancel_requested"]
    finally:
        proc.kill()
        proc.wait()


async def test_a_cell_that_grows_after_its_row_was_added_is_shown_whole(project):
    """A queued run's cells are short ("queued", "–"); once it runs they grow ("running", an ETA of 1h05m): the
    columns widen with them instead of cutting the new values to the old width ("runnin", "1h0")."""
    p, ids = project
    reg = Registry(p / "runs" / "registry.db")
    rid = add_run(reg, p, "grows", "queued", epochs=3, losses=[])
    app = make_app(p, poll_interval=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        reg.set_status(rid, "running", "running")
        reg.heartbeat(rid, epoch=1, step=2, total_steps=12, phase="train", epoch_step=2, epoch_steps=4,
                      loss=12.346, eta_s=3900)  # fmt: skip
        await until(pilot, lambda: app.dashboard.rows[rid]["status"] == "running", timeout=10, what="running")
        await pilot.pause(0.3)
        line = next(x for x in text_of(app).splitlines() if "grows" in x)
        assert "running" in line and "1h05m" in line and "12.346" in line, line
    reg.close()


# ------------------------------------------------------------------------------------------- in a real terminal
@pytest.mark.slow
def test_in_tmux_100x30_shows_the_finished_demo_run_and_ctrl_q_exits_0(tmp_path):
    """`dwc tui` in a real terminal: a detached tmux session of 100×30 on a socket of its own, in a project with a
    finished demo run; the screen shows `demo` and `done`, ctrl+q (sent as a key) quits with exit status 0."""
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("tmux is not installed: this test drives `dwc tui` in a real terminal through tmux")
    make_project(tmp_path)
    reg = Registry(tmp_path / "runs" / "registry.db")
    add_run(
        reg,
        tmp_path,
        "demo",
        "done",
        losses=[2.0, 1.2, 0.8],
        recalls=[recall(1, 2, 3, 9), recall(50, 70, 80, 95)],
    )
    reg.close()
    rc_file = tmp_path / "exit_status"
    socket = f"dwc-test-{os.getpid()}-{time.monotonic_ns()}"
    tm = [tmux, "-L", socket, "-f", "/dev/null"]
    command = (
        f"cd {shlex.quote(str(tmp_path))} && {shlex.quote(sys.executable)} -m dwc_tui.cli tui; "
        f"echo $? > {shlex.quote(str(rc_file))}"
    )
    env = {**os.environ, "TERM": "xterm-256color"}
    env.pop("TMUX", None)  # a tmux the tests themselves run in is not this one
    socket_path = None
    try:
        subprocess.run([*tm, "new-session", "-d", "-s", "dwc", "-x", "100", "-y", "30", command], env=env, check=True,
                       timeout=30)  # fmt: skip
        what = "#{pane_width}x#{pane_height} #{socket_path}"
        shown = subprocess.run([*tm, "display-message", "-p", "-t", "dwc", what], capture_output=True, text=True,
                               timeout=30).stdout.split()  # fmt: skip
        socket_path = Path(shown[1])
        assert shown[0] == "100x30", shown
        screen = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            screen = subprocess.run([*tm, "capture-pane", "-p", "-t", "dwc"], capture_output=True, text=True,
                                    timeout=30).stdout  # fmt: skip
            row = next((x for x in screen.splitlines() if " demo " in x and " done " in x), None)
            if row is not None:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"demo and done never showed together:\n{screen}")
        assert "Traceback" not in screen
        subprocess.run([*tm, "send-keys", "-t", "dwc", "C-q"], check=True, timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (rc_file.exists() and rc_file.read_text().strip()):
            time.sleep(0.1)
        assert rc_file.exists(), "dwc tui did not exit after ctrl+q"
        assert rc_file.read_text().strip() == "0"
    finally:
        subprocess.run([*tm, "kill-server"], capture_output=True, timeout=30)
        # tmux leaves its socket file behind when the server ends with its session
        if socket_path is not None:
            socket_path.unlink(missing_ok=True)
