"""`dwc tui`: the UI thread never runs SQL. Every registry access opens its own sqlite3 connection
(``sqlite3.connect``), and a connection only works on the thread that opened it (``check_same_thread``, left at
its default everywhere). So recording the thread of every ``sqlite3.connect`` while the app runs every screen and
action, and finding none on the thread that runs the event loop, shows that no query ran there."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from test_tui import make_app, open_browse, open_run, ready, select, status_of, table_ids, until

pytestmark = pytest.mark.anyio


@pytest.fixture
def project(tmp_path, monkeypatch):
    from test_tui import make_project, seed_registry

    monkeypatch.setenv("DWC_FAKE_GPUS", "2")
    p = make_project(tmp_path)
    return p, seed_registry(p)


class ConnectRecorder:
    """Wraps ``sqlite3.connect``: records (thread name, whether it is the UI thread) of each call."""

    def __init__(self, ui_thread: threading.Thread):
        self.ui_thread = ui_thread
        self.real = sqlite3.connect
        self.calls: list[tuple[str, bool]] = []

    def __call__(self, *args, **kwargs):
        me = threading.current_thread()
        self.calls.append((me.name, me is self.ui_thread))
        return self.real(*args, **kwargs)

    def on_ui_thread(self) -> int:
        return sum(1 for _, ui in self.calls if ui)


async def test_no_registry_connection_is_opened_on_the_ui_thread(project, monkeypatch):
    p, ids = project
    app = make_app(p)
    recorder = ConnectRecorder(threading.current_thread())  # Pilot runs the app's event loop on this thread
    monkeypatch.setattr(sqlite3, "connect", recorder)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await open_run(pilot, ids["demo"])  # run screen: config, evaluations, events, log, checkpoints
        for key in ("e", "v", "l", "k"):
            await pilot.press(key)
            await pilot.pause(0.1)
        await pilot.press("escape")
        await open_browse(pilot, ids["demo"])  # browse, then its filters
        await pilot.press("m")
        await pilot.pause(0.3)
        await pilot.press("escape")
        for rid in (ids["grid1"], ids["grid2"]):  # compare the two seeds
            await select(pilot, rid)
            await pilot.press("space")
        await pilot.press("C")
        await until(
            pilot, lambda: type(app.screen).__name__ == "CompareScreen" and app.screen.table is not None
        )
        await pilot.press("escape")
        for rid in (ids["grid1"], ids["grid2"]):  # unmark: the actions below are for the selected run
            await select(pilot, rid)
            await pilot.press("space")
        assert not app.dashboard.marked
        await pilot.press("q")  # queue screen: experiments and their sizes
        await until(pilot, lambda: type(app.screen).__name__ == "QueueScreen")
        await pilot.pause(0.5)
        await pilot.press("escape")
        await select(pilot, ids["queued"])
        await pilot.press("c")  # cancel
        await until(pilot, lambda: app.dashboard.rows[ids["queued"]]["status"] == "cancelled", what="cancel")
        await select(pilot, ids["failed"])
        await pilot.press("r")  # resume
        await until(pilot, lambda: app.dashboard.rows[ids["failed"]]["status"] == "queued", what="resume")
        await select(pilot, ids["grid1"])
        await pilot.press("d", "y")  # delete
        await until(pilot, lambda: ids["grid1"] not in table_ids(app), what="delete")
        polls = app.polls_applied
        await until(pilot, lambda: app.polls_applied >= polls + 2, what="two more polls")
    monkeypatch.undo()
    # the actions really reached the registry, and each opened its connection off the UI thread
    assert status_of(p, ids["queued"])["status"] == "cancelled"
    assert status_of(p, ids["failed"])["status"] == "queued"
    assert status_of(p, ids["grid1"])["deleted"] == 1
    assert len(recorder.calls) >= 10, recorder.calls  # polls, screen loads and actions all connect
    assert recorder.on_ui_thread() == 0, [name for name, ui in recorder.calls if ui]


async def test_the_recorder_sees_a_connection_opened_on_the_ui_thread(project, monkeypatch):
    """The check above can fail: a registry read done in an event handler is caught."""
    from dwc_core.runs.registry import Registry

    p, ids = project
    app = make_app(p)
    recorder = ConnectRecorder(threading.current_thread())
    monkeypatch.setattr(sqlite3, "connect", recorder)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        Registry(p / "runs" / "registry.db", create=False).get(ids["demo"])  # what a view must never do
    monkeypatch.undo()
    assert recorder.on_ui_thread() == 1
