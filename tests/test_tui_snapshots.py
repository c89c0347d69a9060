"""SVG snapshots of `dwc tui` screens at 80×24 and 120×40 (pytest-textual-snapshot; `--snapshot-update` after an
intended change, then look at the SVGs under tests/snapshots/)."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_textual_snapshot
from test_tui import make_app, make_project, seed_registry

from dwc_tui.app.app import DwcApp

SNAPSHOTS = Path(__file__).parent / "snapshots"


@pytest.fixture(autouse=True)
def _snapshots_here(monkeypatch):
    """Keep the SVGs in tests/snapshots/ (not syrupy's __snapshots__)."""
    monkeypatch.setattr(
        pytest_textual_snapshot.SVGImageExtension,
        "dirname",
        classmethod(lambda cls, *, test_location: str(SNAPSHOTS / test_location.basename)),
    )


@pytest.fixture
def app(tmp_path, monkeypatch) -> DwcApp:
    monkeypatch.setenv("DWC_FAKE_GPUS", "2")
    make_project(tmp_path)
    seed_registry(tmp_path)
    return make_app(tmp_path, poll_interval=0.5)


async def _settled(pilot) -> None:
    app = pilot.app
    for _ in range(200):
        await pilot.pause(0.05)
        if (
            app.polls_applied >= 2
            and app.poller.focus is not None
            and app.dashboard.focus_version is not None
        ):
            break
    await pilot.pause(0.2)


def _then(*keys: str):
    async def run(pilot) -> None:
        await _settled(pilot)
        for key in keys:  # each key here opens a screen: wait for it (a loaded machine is slow), then settle
            before = pilot.app.screen
            await pilot.press(key)
            for _ in range(200):
                if pilot.app.screen is not before:
                    break
                await pilot.pause(0.05)
            await pilot.pause(0.4)

    return run


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_dashboard(snap_compare, app, size):
    assert snap_compare(app, terminal_size=size, run_before=_then())


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_help(snap_compare, app, size):
    assert snap_compare(app, terminal_size=size, run_before=_then("question_mark"))


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_queue(snap_compare, app, size):
    async def run(pilot) -> None:
        await _settled(pilot)
        await pilot.press("q")
        for _ in range(100):
            await pilot.pause(0.05)
            if pilot.app.screen.valid:
                break
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=size, run_before=run)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_compare(snap_compare, app, size):
    async def run(pilot) -> None:
        await _settled(pilot)
        table = pilot.app.dashboard.query_one("#runs")
        table.move_cursor(row=0)
        for _ in range(4):
            await pilot.press("space")
        await pilot.press("C")
        for _ in range(100):
            await pilot.pause(0.05)
            if getattr(pilot.app.screen, "table", None) is not None:
                break
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=size, run_before=run)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_run_evaluations(snap_compare, app, size):
    """The Run screen's title, tabs, evaluations and footer (the overview shows the test's temporary path)."""

    async def run(pilot) -> None:
        await _settled(pilot)
        await pilot.press("enter")
        for _ in range(100):
            await pilot.pause(0.05)
            if getattr(pilot.app.screen, "info", None) is not None:
                break
        await pilot.press("e")
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=size, run_before=run)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_browse(snap_compare, app, size):
    async def run(pilot) -> None:
        await _settled(pilot)
        await pilot.press("b")
        for _ in range(100):
            await pilot.pause(0.05)
            if getattr(pilot.app.screen, "view", None) is not None:
                break
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=size, run_before=run)


def test_dashboard_no_color_80x24(snap_compare, tmp_path, monkeypatch):
    """NO_COLOR: greys only; the recall curves still differ by their marks."""
    monkeypatch.setenv("NO_COLOR", "1")  # read when the app is made
    monkeypatch.setenv("DWC_FAKE_GPUS", "2")
    make_project(tmp_path)
    seed_registry(tmp_path)
    app = make_app(tmp_path, poll_interval=0.5)
    assert app.no_color
    assert snap_compare(app, terminal_size=(80, 24), run_before=_then())
