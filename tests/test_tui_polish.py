"""`dwc tui` polish: the shutdown race, Slurm's view beside our status, the Run screen's environment, narrow
terminals, plots loaded after the first paint, and legibility with NO_COLOR and 16 colours."""

from __future__ import annotations

import io

import pytest
from rich.color import ColorSystem
from rich.console import Console
from test_tui import make_app, make_project, open_run, ready, seed_registry, select, text_of, until

from dwc_core.runs.registry import Registry

pytestmark = pytest.mark.anyio


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setenv("DWC_FAKE_GPUS", "2")
    p = make_project(tmp_path)
    ids = seed_registry(p)
    reg = Registry(p / "runs" / "registry.db")
    reg.update(ids["grid1"], slurm_job="4242", slurm_state="TIMEOUT", slurm_requeues=1)
    reg.update(ids["queued"], slurm_job="4243", slurm_state="PENDING", slurm_reason="Priority")
    reg.update(
        ids["demo"],
        git_commit=None,
        versions={
            "python": "3.11.9", "torch": "2.4.0", "cuda": None, "cudnn": 90100, "platform": "Linux-6.1-x86_64",
            "argv": ["/usr/bin/python", "-m", "dwc_core.engine.train", "1"], "numpy": "2.0.1",
            "precision": "fp32", "dwc": "0.1.0",
        },
    )  # fmt: skip
    reg.close()
    return p, ids


async def test_poll_result_arriving_while_the_dashboard_is_taken_apart_is_ignored(project):
    """The race behind test_sort_by_columns' rare failure: a poll finishing while the app shuts down (its screens'
    widgets already removed) used to raise NoMatches('#runs') inside the app."""
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        dash = app.dashboard
        await dash.query_one("#runs").remove()
        applied = app.polls_applied
        app.apply_snapshot(app.last_snapshot)  # the old code: NoMatches
        dash.show_error("registry gone")
        app.start_poll()
        await until(pilot, lambda: app.polls_applied > applied + 1, what="polls after the table went away")
    # run_test re-raises any exception the app hit: reaching here means none did


async def test_slurm_state_beside_our_status_in_table_detail_and_run_screen(project):
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        screen = text_of(app)
        assert "done TO ↻1" in screen  # grid1: our status, then squeue's code and the re-submissions
        assert "queued PD Prior…" in screen  # cut to the cell's width
        await select(pilot, ids["queued"])
        await until(
            pilot, lambda: "slurm PENDING (Priority)" in text_of(app), what="Slurm in the detail pane"
        )
        await pilot.press("slash")
        await pilot.press(*"pending", "enter")  # Slurm's state is searchable too
        assert app.dashboard.shown_ids == [ids["queued"]]
        await pilot.press("escape")
        await open_run(pilot, ids["grid1"])
        screen = text_of(app)
        assert "slurm TIMEOUT · requeued 1×" in screen
        assert "slurm job 4242  state TIMEOUT  reason –  nodes –  requeues 1" in screen


async def test_run_screen_versions_in_one_line_the_rest_folded_and_no_git(project):
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await open_run(pilot, ids["demo"])
        screen = text_of(app)
        assert "versions python 3.11.9  torch 2.4.0  precision fp32  dwc 0.1.0" in screen
        assert "git not a git repository" in screen
        assert "dwc_core.engine.train" not in screen  # the trainer's argv is not a version
        assert "cudnn 90100" not in screen  # folded
        assert "more versions" in screen
        evals = app.screen.query_one("#run-evals")
        labels = [str(c.label) for c in evals.columns.values()]
        assert labels == ["epoch", "kind", "split", "R@1", "R@5", "R@10", "R@50", "mean", "queries"]  # by K
        app.screen.query_one("#run-more").collapsed = False
        await until(pilot, lambda: "cudnn 90100" in text_of(app), what="the folded versions")
        screen = text_of(app)
        assert "numpy 2.0.1" in screen and "platform Linux-6.1-x86_64" in screen
        assert "dwc_core.engine.train" not in screen
        await pilot.press("escape")
        # a run that has not started: nothing recorded yet, rather than a bare dash
        await open_run(pilot, ids["failed"])
        assert "git not recorded yet (the run has not started)" in text_of(app)
        assert "versions not recorded yet" in text_of(app)


async def test_80_columns_fit_without_scrolling_sideways_and_wide_shows_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("DWC_FAKE_GPUS", "2")
    p = make_project(tmp_path)
    seed_registry(p)  # no Slurm runs: the status column is as narrow as the words
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        table = app.dashboard.query_one("#runs")
        await pilot.pause(0.1)
        assert app.dashboard.column_keys[:3] == ("id", "experiment", "status")
        assert table.virtual_size.width <= table.size.width  # nothing hidden off the right edge
        assert "ETA" in text_of(app)
        await pilot.resize_terminal(120, 40)
        await until(pilot, lambda: "dataset" in app.dashboard.column_keys, what="wide columns")
        await pilot.pause(0.1)
        screen = text_of(app)
        assert "method" in screen and "synthetic" in screen
        assert len(app.dashboard.shown_ids) == 5 and table.row_count == 5
        await pilot.resize_terminal(80, 24)
        await until(pilot, lambda: "dataset" not in app.dashboard.column_keys, what="narrow columns")
        assert table.row_count == 5


async def test_plots_arrive_after_the_first_paint_and_show_the_selected_run(project):
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await select(pilot, ids["demo"])
        await until(pilot, lambda: app.dashboard.focus_version is not None, what="plots")
        plots = app.dashboard.plots
        assert plots["loss-plot"].series_names == ["loss"]
        assert plots["recall-plot"].series_names == ["R@1", "R@5", "R@10", "R@50"]
        # no legend drawn over the curves: the names head the plot, each in its line's colour
        await until(pilot, lambda: "R@1 R@5 R@10 R@50 · test" in text_of(app), what="recall plot title")
        assert " loss " in text_of(app)


def _row_backgrounds(app, standard: bool) -> dict[int, set]:
    """Screen line → the background colours it is drawn with (downgraded to the 16 standard colours when
    ``standard``, as Rich does for TERM=xterm); the cursor row is told apart from its neighbours by these."""
    lines = app.screen._compositor.render_update(
        full=True, screen_stack=app._background_screens, simplify=True
    )
    console = Console(width=app.size.width, file=io.StringIO(), force_terminal=True, color_system="truecolor")
    out: dict[int, set] = {}
    y = 0
    for seg in console.render(lines):
        if seg.text == "\n":
            y += 1
            continue
        bg = seg.style.bgcolor if seg.style is not None else None
        if bg is None:
            continue
        key = f"ansi {bg.downgrade(ColorSystem.STANDARD).number}" if standard else bg.get_truecolor().hex
        out.setdefault(y, set()).add(key)
    return out


@pytest.mark.parametrize("mode", ["NO_COLOR", "16 colours"])
async def test_selection_and_status_stay_legible_without_colour_and_in_16_colours(project, monkeypatch, mode):
    """With NO_COLOR (Textual draws in greys) or TERM=xterm (16 colours), the cursor row still looks unlike the
    rows around it (striped or not), and statuses and marks are words and glyphs, not colour alone."""
    p, ids = project
    if mode == "NO_COLOR":
        monkeypatch.setenv("NO_COLOR", "1")
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        assert app.no_color == (mode == "NO_COLOR")
        await select(pilot, ids["failed"])
        await pilot.press("space")  # mark it (the cursor moves down to the first grid run)
        await select(pilot, ids["grid1"])
        await pilot.pause(0.1)
        screen = text_of(app)
        assert "failed" in screen and "●2" in screen and "queued" in screen
        table = app.dashboard.query_one("#runs")
        cursor_y = table.region.y + 1 + table.cursor_row  # + the header line
        backgrounds = _row_backgrounds(app, standard=mode == "16 colours")
        assert len(backgrounds[cursor_y]) == 1
        for y in (cursor_y - 2, cursor_y - 1, cursor_y + 1, cursor_y + 2):  # both stripes
            assert backgrounds[y] != backgrounds[cursor_y], (
                f"{mode}: screen line {y} has the cursor line's background {backgrounds[cursor_y]}"
            )


START_PATH = """
import asyncio, sys
from pathlib import Path
from dwc_tui.app.app import DwcApp
from dwc_tui.app.screens.dashboard import DashboardScreen
HEAVY = ("numpy", "textual_plot", "yaml", "sqlite_utils", "torch")
first = []
apply = DashboardScreen.apply
def recording_apply(self, snap):  # what was imported when the first table was drawn
    apply(self, snap)
    if self.shown_ids and not first:
        first.append(sorted(m for m in HEAVY if m in sys.modules))
DashboardScreen.apply = recording_apply
async def main():
    app = DwcApp(Path(sys.argv[1]), poll_interval=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        while not (app.polls_applied and app.dashboard.shown_ids):
            await pilot.pause(0.01)
        print("first table:", first[0])
        while not app.dashboard.plots:
            await pilot.pause(0.05)
        print("plots:", sorted(m for m in HEAVY if m in sys.modules))
asyncio.run(main())
"""


def test_start_path_leaves_numpy_yaml_and_sqlite_utils_for_later(tmp_path, monkeypatch):
    """Start-up < 1 s (bench/tui_start.py measures it): the runs table is up before textual-plot (numpy), yaml or
    sqlite-utils are imported; the plots then arrive by themselves."""
    import subprocess
    import sys

    monkeypatch.setenv("DWC_FAKE_GPUS", "1")
    p = make_project(tmp_path)
    seed_registry(p)
    out = subprocess.run(
        [sys.executable, "-c", START_PATH, str(p)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "first table: []" in out
    assert "plots: ['numpy', 'textual_plot']" in out


def test_metric_columns_order_by_k_then_averages_then_mean():
    from dwc_tui.app.screens.run import metric_order

    names = ["R@10", "mean", "avg/R@10", "R@1", "avg/R@5", "R@50", "R@5"]
    assert sorted(names, key=metric_order) == ["R@1", "R@5", "R@10", "R@50", "avg/R@5", "avg/R@10", "mean"]
