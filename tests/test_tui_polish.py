"""`dwc tui` polish: the shutdown race, Slurm's view beside our status, the Run screen's environment, narrow
terminals, plots loaded after the first paint, and legibility with NO_COLOR and 16 colours; at 80×24 the footer
keeps the keys that matter, the runs table stays inside the screen whatever its cells hold, the Run screen's title
and versions stay on one line, and the recall curves are told apart without colour."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from rich.color import ColorSystem
from rich.console import Console
from test_tui import (
    T0,
    add_run,
    make_app,
    make_project,
    open_browse,
    open_run,
    ready,
    recall,
    seed_registry,
    select,
    text_of,
    until,
)

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
        assert "slurm    job 4242  state TIMEOUT  reason –  nodes –  requeues 1" in screen


async def test_run_screen_versions_in_one_line_the_rest_folded_and_no_git(project):
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await open_run(pilot, ids["demo"])
        screen = text_of(app)
        assert "versions python 3.11.9  torch 2.4.0  precision fp32  dwc 0.1.0" in screen
        assert "git      not a git repository" in screen  # the labels in a column of their own
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
        assert "git      not recorded yet (the run has not started)" in text_of(app)
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


def test_downsample_keeps_the_ends_and_the_extremes_of_a_long_series():
    import math
    import random

    from dwc_tui.app.widgets.plots import MAX_POINTS, downsample

    rng = random.Random(7)
    n = 10_000
    xs = [i / 1000 for i in range(n)]  # epochs 0 … 9.999
    ys = [2.0 - 1.5 * i / n + rng.uniform(-0.05, 0.05) for i in range(n)]
    ys[5003] = 9.0  # a spike in one step: a bucket mean would shrink it ~40 times
    ys[7777] = 0.01  # the best value
    dx, dy = downsample(xs, ys)
    assert len(dx) == len(dy) <= MAX_POINTS and len(dx) >= MAX_POINTS - 2
    assert (dx[0], dy[0]) == (xs[0], ys[0]) and (dx[-1], dy[-1]) == (xs[-1], ys[-1])
    pairs = list(zip(dx, dy, strict=True))
    assert (xs[5003], 9.0) in pairs and (xs[7777], 0.01) in pairs
    assert max(dy) == 9.0 and min(dy) == 0.01
    assert all(a < b for a, b in zip(dx, dx[1:], strict=False)), "x must stay in order"
    # the rest are means of consecutive buckets: they follow the trend (about 1.25 half-way), within the data
    assert all(min(ys) <= y <= max(ys) for y in dy)
    middle = [y for x, y in zip(dx, dy, strict=True) if 4.9 < x < 5.1 and y != 9.0]
    assert middle and all(abs(y - 1.25) < 0.05 for y in middle)
    # a series that fits is returned as it is (copies); a NaN loss does not break the extremes
    short = [1.0, 0.5, 0.25]
    assert downsample([0, 1, 2], short) == ([0, 1, 2], short)
    ys[42] = math.nan
    dx, dy = downsample(xs, ys)
    assert len(dx) <= MAX_POINTS and 9.0 in dy and 0.01 in dy


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
        # no legend drawn over the curves: the Ks head the plot, each with its line's mark, in its line's colour
        await until(pilot, lambda: "R@K o1 +5 x10 *50 · test" in text_of(app), what="recall plot title")
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


# ------------------------------------------------------------------------------------------------- 80 columns
def _lines(app) -> list[str]:
    return text_of(app).rstrip("\n").split("\n")


def _region_text(app, widget) -> str:
    r = widget.region
    return "\n".join(line[r.x : r.right] for line in _lines(app)[r.y : r.bottom])


def test_footer_fit_keeps_priority_zero_and_the_order():
    from dwc_tui.app.widgets.keybar import fit, line_width

    keys = [("a", "alpha", 2), ("b", "beta", 1), ("c", "gamma", 3), ("?", "help", 0), ("^q", "quit", 0)]
    assert fit(keys, 200) == keys
    assert line_width(keys) == 2 + sum(len(k) + 1 + len(label) for k, label, _ in keys) + 2 * 4
    assert fit(keys, line_width(keys) - 1) == [keys[0], keys[1], keys[3], keys[4]]  # priority 3 went first
    assert fit(keys, 20) == [keys[3], keys[4]]  # " ? help  ^q quit " is all that fits
    assert fit(keys, 5) == [keys[3], keys[4]]  # never dropped, even when they do not fit


async def test_footer_shows_the_keys_that_matter_at_80_columns_on_every_screen(project):
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        footer = _lines(app)[-1]
        for key in (
            "q queue",
            "c cancel",
            "r resume",
            "d delete",
            "C compare",
            "/ filter",
            "? help",
            "^q quit",
        ):
            assert key in footer, footer
        assert footer.rstrip().endswith("^q quit")  # the last key whole, not cut at the edge
        assert "b browse" not in footer  # did not fit: the help screen lists it
        await pilot.press("question_mark")
        assert "browse per-query results" in text_of(app)
        await pilot.press("escape")
        await pilot.press("slash")  # typing a filter: what enter and esc do there
        await until(pilot, lambda: "enter apply the filter" in _lines(app)[-1], what="filter keys")
        assert "q queue" not in _lines(app)[-1]
        await pilot.press("escape")
        await until(pilot, lambda: "q queue" in _lines(app)[-1], what="dashboard keys again")
        await pilot.resize_terminal(120, 40)  # wider: the rest come back
        await until(pilot, lambda: "b browse" in _lines(app)[-1], what="wide footer")
        for key in ("enter open", "space mark", "l log", "^q quit"):
            assert key in _lines(app)[-1]
        await pilot.resize_terminal(80, 24)
        await open_run(pilot, ids["demo"])
        footer = _lines(app)[-1]
        for key in ("esc back", "e evals", "l log", "? help", "^q quit"):
            assert key in footer, footer
        await pilot.press("escape", "q")
        await until(pilot, lambda: type(app.screen).__name__ == "QueueScreen", what="queue screen")
        await pilot.pause(0.2)
        footer = _lines(app)[-1]
        for key in ("esc back", "^w start a worker", "? help", "^q quit"):
            assert key in footer, footer


def _crowded(p: Path, ids: dict) -> list[int]:
    """Runs whose cells are as wide as they get: Slurm states with nodes, reasons and re-submissions, a long
    experiment name, hundreds of epochs, a loss in the thousands, days of training; enough rows to scroll."""
    reg = Registry(p / "runs" / "registry.db")
    reg.update(ids["failed"], slurm_job="1", slurm_state="RUNNING", slurm_nodes="gpu-node[01-04]")
    reg.update(ids["queued"], slurm_job="2", slurm_state="PENDING", slurm_reason="QOSMaxJobsPerUserLimit")
    reg.update(ids["grid1"], slurm_job="3", slurm_state="OUT_OF_MEMORY", slurm_requeues=12)
    more = [
        add_run(reg, p, "fashioniq_clip_vitb16_long_name", "done", epochs=100, losses=[1234.5, 999.9],
                recalls=[recall(1, 2, 3, 4)] + [recall(9.5, 19.5, 29.5, 99.75)] * 100, started=T0 - 3 * 86400)
    ]  # fmt: skip
    for i in range(8):
        rid = add_run(reg, p, "demo", "cancelled" if i % 2 else "failed", losses=[2.0, 1.0])
        reg.update(rid, slurm_job=str(10 + i), slurm_state="TIMEOUT", slurm_requeues=3)
        more.append(rid)
    reg.close()
    return more


async def test_runs_table_stays_inside_80_columns_whatever_the_cells_hold(project):
    from dwc_tui.app.rows import NARROW_MAX

    p, ids = project
    more = _crowded(p, ids)
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await until(pilot, lambda: len(app.dashboard.shown_ids) == 5 + len(more), what="all runs")
        await pilot.pause(0.2)
        table = app.dashboard.query_one("#runs")
        assert (
            table.virtual_size.height > table.size.height
        )  # rows to scroll: the vertical scrollbar is there
        assert table.virtual_size.width <= table.scrollable_content_region.width  # nothing off the right edge
        header = _lines(app)[table.region.y]
        assert header.split() == [
            "id",
            "experiment",
            "status",
            "epoch",
            "loss",
            "R@10",
            "mean",
            "elapsed",
            "ETA",
        ]
        widths = {str(c.key.value): c.get_render_width(table) for c in table.columns.values()}
        assert widths["status"] <= NARROW_MAX["status"] + 1  # + the space before it
        cells = {rid: app.dashboard.rows[rid]["narrow"]["status"].plain for rid in app.dashboard.rows}
        assert cells[ids["failed"]] == "failed R"  # our status whole, then Slurm's code; nodes in the detail
        assert cells[ids["queued"]] == "queued PD"
        assert cells[ids["grid1"]] == "done OOM↻12"  # the code and the re-submissions, exactly 11
        assert cells[more[2]] == "cancelled …"  # no room for "TO↻3": cut, our status kept whole
        long_run = app.dashboard.rows[more[0]]["narrow"]
        assert long_run["experiment"].plain == "fashioniq…"
        assert long_run["epoch"].plain == "100/100 ██"  # the bar gives way to the numbers
        assert long_run["loss"].plain == "999.90"
        await select(pilot, ids["grid1"])
        await until(
            pilot, lambda: "slurm OUT_OF_MEMORY" in text_of(app), what="Slurm's full state in the detail pane"
        )
        # wide: Slurm's detail comes back beside the status
        await pilot.resize_terminal(120, 40)
        await until(pilot, lambda: "failed R gpu-no…" in text_of(app), what="wide status cells")
        assert table.virtual_size.width <= table.scrollable_content_region.width


async def test_run_screen_title_and_versions_stay_on_one_line_at_80_columns(project):
    p, ids = project
    reg = Registry(p / "runs" / "registry.db")
    reg.update(
        ids["grid1"],
        slurm_job="4242", slurm_state="PENDING", slurm_reason="ReqNodeNotAvail, UnavailableNodes:gpu[01-08]",
        versions={"python": "3.11.9", "torch": "2.4.0+cu121", "cuda": "12.1", "precision": "bf16-mixed",
                  "dwc": "0.1.0", "numpy": "2.0.1"},
    )  # fmt: skip
    reg.close()
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await open_run(pilot, ids["grid1"])
        lines = _lines(app)
        assert lines[0].startswith(" #3 grid  done  seed 1  epoch 1/1  slurm PENDING")
        assert lines[0].rstrip().endswith("…")  # cut, not wrapped: the tabs are on the next line
        assert lines[1].split() == ["overview", "evaluations", "events", "log", "checkpoints"]
        versions = next(i for i, line in enumerate(lines) if line.startswith("versions "))
        assert "python 3.11.9  torch 2.4.0+cu121  cuda 12.1  precision bf16-mixed" in lines[versions]
        assert lines[versions + 1].startswith("created ")  # nothing wrapped onto a second line
        assert "dwc 0.1.0" not in text_of(app)  # it did not fit: folded with the other versions
        slurm = next(line for line in lines if line.startswith("slurm "))
        assert "[01-08]" in text_of(app)  # a node list is shown as it is, not read as markup
        assert slurm.startswith("slurm    job 4242  state PENDING")
        app.screen.query_one("#run-more").collapsed = False
        await until(pilot, lambda: "dwc 0.1.0" in text_of(app), what="the folded versions")
        assert "numpy 2.0.1" in text_of(app)
        await pilot.resize_terminal(120, 40)  # wide: every main version on the line again
        await until(
            pilot, lambda: "precision bf16-mixed  dwc 0.1.0" in text_of(app), what="versions line at 120"
        )


async def test_compare_title_is_read_whole_at_80x24_and_the_table_keeps_its_rows(project):
    """The --only-changed title lists the shared settings ("shared: dataset.num_test=16, …"): longer than 80
    columns, it used to be cut with "…". Now the shared settings have a line of their own, wrapped at the words."""
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        marked = [ids["demo"], ids["failed"], ids["grid1"], ids["grid2"]]
        for rid in marked:
            await select(pilot, rid)
            await pilot.press("space")
        await pilot.press("C")
        await until(
            pilot, lambda: type(app.screen).__name__ == "CompareScreen" and app.screen.table is not None
        )
        await pilot.pause(0.2)
        table = app.screen.table
        assert "shared: dataset.num_test=16" in table.title and len(table.title) > 80
        title = _region_text(app, app.screen.query_one("#compare-title"))
        lines = [line.strip() for line in title.split("\n")]
        assert 3 <= len(lines) <= 4, title
        assert "…" not in title, title
        assert lines[0] == f"compare {', '.join(f'#{i}' for i in marked)} — best metrics  (w: last)"
        head, _, shared = table.title.rpartition(" · ")
        assert lines[1] == head  # which epoch, dataset and method: one line
        assert lines[2].startswith("shared: dataset.num_test=16")
        assert " ".join(lines[2:]) == shared  # every word of the shared settings, in order
        screen = _lines(app)
        table_top = app.screen.query_one("#compare-table").region.y
        assert table_top == len(lines)  # the table starts right under the title
        assert screen[table_top].split()[:3] == ["experiment", "model.embed_dim", "trainer.epochs"]
        assert "42.00 ± 2.83" in text_of(app)  # the grid row (R@1 over seeds 1 and 2: 40, 44) on screen
        # the failed run has no results: left out of the rows (not a row of dashes counted as a seed), and said
        assert f"left out, no best-epoch results yet: #{ids['failed']}" in text_of(app)
        assert screen[-1].lstrip().startswith("esc back")
        await pilot.resize_terminal(120, 40)  # wide: the shared settings fit on their line
        await until(
            pilot, lambda: app.screen.query_one("#compare-title").region.height == 3, what="3 lines at 120"
        )
        assert shared in text_of(app)


async def test_no_color_recall_curves_have_marks_of_their_own(project, monkeypatch):
    from dwc_tui.app.widgets.plots import MARKS, legend, mark_points

    assert legend(["R@1", "R@5", "R@10", "R@50"]) == ("R@K", ["1", "5", "10", "50"])
    assert legend(["avg/R@1", "avg/R@10"]) == ("avg/R@K", ["1", "10"])
    assert legend(["R@1", "avg/R@1"]) == ("", ["R@1", "avg/R@1"])
    xs = list(range(100))
    mx, _ = mark_points(xs, xs, 12)
    assert len(mx) == 12 and mx[0] == 0 and mx[-1] == 99
    monkeypatch.setenv("NO_COLOR", "1")
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        assert app.no_color
        await select(pilot, ids["demo"])
        await until(pilot, lambda: app.dashboard.focus_version is not None, what="plots")
        await until(
            pilot, lambda: "R@K o1 +5 x10 *50 · test" in text_of(app), what="marks named in the title"
        )
        plot = app.dashboard.plots["recall-plot"]
        canvas = _region_text(app, plot)
        for mark in MARKS[:4]:  # each curve's own mark is drawn on the plot itself
            assert mark in canvas, f"{mark!r} not on the recall plot:\n{canvas}"
        loss = _region_text(app, app.dashboard.plots["loss-plot"])
        assert not set(MARKS) & set(loss), "a single curve needs no marks"


def test_gpu_list_shows_runs_of_three_or_more_as_ranges():
    from dwc_tui.app.screens.dashboard import gpu_list

    assert gpu_list([]) == "none"
    assert gpu_list(["0", "1"]) == "0,1"
    assert gpu_list([str(i) for i in range(8)]) == "0-7"
    assert gpu_list(["6", "0", "1", "2", "3"]) == "0-3,6"
    assert gpu_list(["GPU-a", "GPU-b"]) == "GPU-a,GPU-b"


async def test_summary_line_fits_80_columns_with_marks_and_eight_gpus(project, monkeypatch):
    monkeypatch.setenv("DWC_FAKE_GPUS", "8")
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await select(pilot, ids["demo"])
        await pilot.press("space", "space")
        await until(pilot, lambda: "marked 2" in _lines(app)[0], what="marks in the summary")
        assert _lines(app)[0].split("│")[0].split() == [
            "queued", "1", "running", "0", "done", "3", "failed", "1", "lost", "0",
        ]  # fmt: skip
        assert _lines(app)[0].rstrip().endswith("│ workers 0 │ GPUs 0-7")
        await pilot.resize_terminal(120, 40)  # wide: room for the name and the double spaces
        await until(pilot, lambda: _lines(app)[0].startswith(" dwc queued 1  running 0"), what="wide summary")


def test_epoch_bars_line_up_and_a_budget_stopped_run_shows_what_it_trained():
    from dwc_tui.app.rows import display_row

    def row(rid, status, epoch, epochs=100):
        return {"id": rid, "experiment": "e", "status": status, "epoch": epoch, "epochs": epochs}

    rows = [display_row(row(1, "cancelled", 3), []), display_row(row(2, "cancelled", 17), [])]
    for kind in ("cells", "narrow"):
        texts = [r[kind]["epoch"].plain for r in rows]
        assert len({t.index("/") for t in texts}) == 1, texts  # counts right-aligned
        assert len({t.rstrip("░█").__len__() for t in texts}) == 1, texts  # bars start in one column
    stopped = display_row(row(3, "done", 3), [])["cells"]["epoch"].plain
    assert stopped.endswith("░░░░") and stopped.strip().startswith("3/100"), stopped
    finished = display_row(row(4, "done", 2, epochs=2), [])["cells"]["epoch"].plain
    assert finished.endswith("████"), finished


FOOTER_TO_BINDING = {
    "esc": "escape",
    "/": "slash",
    ">": "greater_than_sign",
    "<": "less_than_sign",
    "?": "question_mark",
    "^": "ctrl+",
}
WIDGET_KEYS = {
    "← →",
    "enter",
}  # handled by the focused widget (table scrolling, text box submit), not a binding


def _binding_key(label: str) -> str:
    if label.startswith("^"):
        return "ctrl+" + label[1:]
    return FOOTER_TO_BINDING.get(label, label)


@pytest.mark.parametrize("name", ["dashboard", "browse", "compare", "queue", "run"])
def test_footer_keys_and_bindings_agree(name):
    """The footer (KEYS) is written beside BINDINGS: every key it shows is bound (on the screen or the app, or
    native to a widget), and every binding the screen shows in Textual's sense is in the footer."""
    import importlib

    from textual.screen import Screen

    from dwc_tui.app.app import DwcApp

    module = importlib.import_module(f"dwc_tui.app.screens.{name}")
    (screen,) = [
        c for c in vars(module).values()
        if isinstance(c, type) and issubclass(c, Screen) and c.__module__ == module.__name__ and hasattr(c, "KEYS")
    ]  # fmt: skip
    bound = {b.key for b in screen.BINDINGS} | {b.key for b in DwcApp.BINDINGS} | {"ctrl+p"}
    shown = {label for label, _, _ in (*screen.KEYS, *getattr(screen, "INPUT_KEYS", ()))}
    unbound = {k for k in shown - WIDGET_KEYS if _binding_key(k) not in bound}
    assert not unbound, f"{screen.__name__}: footer keys with no binding: {unbound}"
    footer = {_binding_key(k) for k in shown}
    missing = {
        b.key for b in screen.BINDINGS if b.show and b.key not in footer and b.key not in ("question_mark",)
    }
    assert not missing, f"{screen.__name__}: bindings missing from the footer: {missing}"


def test_dashboard_poller_marks_a_run_whose_process_died_lost(tmp_path):
    """Trainer and worker killed, nothing recorded: a dashboard left open must not show the run running forever."""
    import socket
    import subprocess
    import sys

    from dwc_core.config.experiments import default_config
    from dwc_tui.app.poller import Poller

    reg = Registry(tmp_path / "runs" / "registry.db")
    rid = reg.create_run("demo", default_config(), tmp_path / "runs")["id"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    reg.set_status(rid, "running", "running", pid=dead.pid, host=socket.gethostname())
    poller = Poller(reg.path)
    poller.poll()  # the first poll is a full one: it sees the dead process and reconciles
    assert reg.get(rid)["status"] == "lost"
    assert poller.poll().rows[rid]["status"] == "lost"  # the next poll shows it (the status change's event)


async def test_failed_lost_and_cancelled_stay_readable_without_colour(project, monkeypatch):
    """NO_COLOR: Textual draws colours as greys by brightness; red/magenta statuses came out grey on grey
    (fg 237 on bg 235). After the app's own filters, every such word has a contrast ratio of at least 3:1."""
    from textual.color import Color

    p, ids = project
    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app(p)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.pause(0.1)
        lines = app.screen._compositor.render_update(
            full=True, screen_stack=app._background_screens, simplify=True
        )
        console = Console(width=120, file=io.StringIO(), force_terminal=True, color_system="truecolor")
        segments = list(console.render(lines))
        for f in app._filters:
            segments = f.apply(segments, Color(0, 0, 0))

        def luminance(c) -> float:
            r, g, b = (v / 255 for v in c.get_truecolor())
            lin = [x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in (r, g, b)]
            return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

        seen = set()
        for seg in segments:
            word = seg.text.strip()
            if word not in ("failed", "lost", "cancelled") or seg.style is None:
                continue
            seen.add(word)
            fg, bg = seg.style.color, seg.style.bgcolor
            if fg is None or bg is None:
                continue  # the terminal's own default colours
            hi, lo = sorted((luminance(fg), luminance(bg)), reverse=True)
            assert (hi + 0.05) / (lo + 0.05) >= 3.0, (word, fg, bg, seg.style)
        assert {"failed", "lost"} <= seen


def test_header_counts_live_workers_not_runs_held_by_a_foreground_dwc_run(tmp_path, monkeypatch):
    """`workers N` in the header is `dwc workers`' count: a foreground `dwc run` is no worker, an idle live worker
    is one."""
    import socket

    from dwc_core.config.experiments import default_config
    from dwc_core.runs.control import workers_dir
    from dwc_core.runs.worker import hold_worker_lock, write_worker_file
    from dwc_tui.app import poller as poller_mod

    monkeypatch.setattr(poller_mod, "WORKERS_EVERY_S", 0.0)
    reg = Registry(tmp_path / "runs" / "registry.db")
    rid = reg.create_run("demo", default_config(), tmp_path / "runs")["id"]
    reg.set_status(rid, "running", "running", pid=os.getpid(), host=socket.gethostname())
    reg.update(rid, worker=f"cli:{os.getpid()}")
    p = poller_mod.Poller(reg.path)
    p.poll()
    assert p.poll().workers == 0
    folder = workers_dir(tmp_path)
    lock = hold_worker_lock(folder, "vm-1")
    try:
        write_worker_file(folder, "vm-1", {"name": "vm-1", "host": socket.gethostname(), "pid": os.getpid()})
        assert p.poll().workers == 1
    finally:
        lock.release()
    assert p.poll().workers == 0


# ------------------------------------------------------------------------------------- audit at 80×24 (issue 11)
def _status_segments(app, width: int) -> list:
    """The screen's segments after the app's own filters (ANSI colours to the theme's RGB, NO_COLOR's greys)."""
    from textual.color import Color

    lines = app.screen._compositor.render_update(
        full=True, screen_stack=app._background_screens, simplify=True
    )
    console = Console(width=width, file=io.StringIO(), force_terminal=True, color_system="truecolor")
    segments = list(console.render(lines))
    for f in app._filters:
        segments = f.apply(segments, Color(0, 0, 0))
    return segments


def _contrast(fg, bg) -> float:
    def luminance(c) -> float:
        r, g, b = (v / 255 for v in c.get_truecolor())
        lin = [x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in (r, g, b)]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    hi, lo = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.fixture
def every_status(project):
    """The seeded project plus a running, a lost and a cancelled run."""
    p, ids = project
    reg = Registry(p / "runs" / "registry.db")
    for status in ("running", "lost", "cancelled"):
        ids[status] = add_run(reg, p, "demo", status, losses=[2.0, 1.5])
    reg.close()
    return p, ids


async def test_16_colours_give_running_failed_lost_and_cancelled_distinct_meaningful_colours(every_status):
    """TERM=xterm: Textual maps named colours through its theme's RGB and then to the nearest of 16, so "yellow"
    (running) came out bright red and red/magenta (failed, lost, cancelled) all one magenta."""
    from dwc_tui.app.rows import status_style

    p, ids = every_status
    app = make_app(p)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.pause(0.1)
        colour = {}
        runs = app.dashboard.query_one("#runs")
        table, cursor_y = runs.region, runs.region.y + 1 + runs.cursor_row
        y = 0
        for seg in _status_segments(app, 120):
            y += seg.text == "\n"
            word = seg.text.strip()
            # the table's status cells (the header's labels are plain; the cursor row has the cursor's colours)
            if not table.y < y < table.bottom or y == cursor_y:
                continue
            if word in ("running", "failed", "lost", "cancelled", "done", "queued") and seg.style is not None:
                assert seg.style.color is not None, word
                colour.setdefault(word, set()).add(seg.style.color.downgrade(ColorSystem.STANDARD).number)
    assert all(len(c) == 1 for c in colour.values()), colour
    std = {w: c.pop() for w, c in colour.items()}
    assert std["failed"] in (1, 9)  # red
    assert std["running"] in (2, 10, 6, 14)  # green or cyan
    assert std["lost"] in (3, 11, 5, 13)  # yellow or magenta
    assert std["cancelled"] in (7, 15, 8)  # grey/white: readable, not loud
    assert len({std[w] for w in ("running", "failed", "lost", "cancelled")}) == 4, std
    assert std["running"] != std["done"] and std["queued"] not in (std["running"], std["failed"])
    # the header counts share the words' styles
    assert status_style("failed") != status_style("lost") != status_style("running")


async def test_no_color_statuses_and_counts_carry_attributes_not_dim_greys(every_status, monkeypatch):
    """NO_COLOR: failed, lost and cancelled (and the header's failed/lost counts) are drawn with bold, reverse or
    underline, in the terminal's own colours or at a readable contrast; never dim."""
    p, ids = every_status
    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app(p)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.pause(0.1)
        segments = _status_segments(app, 120)
    seen = set()
    header_counts = []
    y = 0
    for i, seg in enumerate(segments):
        y += seg.text == "\n"
        word = seg.text.strip()
        if seg.style is None:
            continue
        if (
            word in ("failed", "lost", "cancelled") and y > 0
        ):  # in the header the label is plain, its count styled
            seen.add(word)
        elif y == 0 and word.isdigit() and segments[i - 1].text.rstrip().endswith(("failed", "lost")):
            header_counts.append(seg)
        else:
            continue
        style = seg.style
        assert not style.dim, (word, style)
        assert style.bold or style.reverse or style.underline, (word, style)
        if style.color is not None and style.bgcolor is not None:
            assert _contrast(style.color, style.bgcolor) >= 4.5, (word, style)
    assert seen == {"failed", "lost", "cancelled"}
    assert len(header_counts) == 2, header_counts


async def test_browse_rank_box_is_on_screen_filters_as_typed_and_the_title_names_the_filters(project):
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await open_browse(pilot, ids["demo"])
        screen = app.screen
        for box_id in ("#browse-grep", "#browse-rank"):
            region = screen.query_one(box_id).region
            assert region.width >= 10 and region.right <= 80 and region.y + region.height <= 24, (
                box_id,
                region,
            )
        assert "rank worse than N" in text_of(app)
        await pilot.press("greater_than_sign")
        assert app.focused is screen.query_one("#browse-rank")
        await pilot.press("2")  # no enter: the list follows the number
        await until(pilot, lambda: "3/4 queries [all · rank > 2]" in text_of(app), what="rank filter")
        assert len(screen.items) == 3 and all(
            q.target_rank is None or q.target_rank > 2 for _, q, _ in screen.items
        )
        await pilot.press("enter", "slash", *"shape 2", "enter")  # enter: back to the list, where / is a key
        await until(pilot, lambda: "[all · text 'shape 2' · rank > 2]" in text_of(app), what="both filters")
        assert len(screen.items) == 1


async def test_browse_rank_range_boxes_fit_80x24_and_filter_between_the_bounds(project):
    """The better-than box beside the worse-than box: together a rank range (N < rank < M), both on screen at
    80×24 with their keys on the footer; the list and the title follow the numbers as they are typed."""
    p, ids = project  # the demo run's queries rank 1, 3, 12 and beyond the stored top-5
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await open_browse(pilot, ids["demo"])
        screen = app.screen
        regions = [screen.query_one(b).region for b in ("#browse-grep", "#browse-rank", "#browse-rank-below")]
        for region in regions:
            assert region.width >= 20 and region.right <= 80 and region.y + region.height <= 24, region
        assert (
            regions[0].right <= regions[1].x and regions[1].right <= regions[2].x
        )  # side by side, no overlap
        shown = text_of(app)
        assert "rank worse than N" in shown and "rank better than N" in shown
        assert "> rank >" in shown.splitlines()[-1] and "< rank <" in shown.splitlines()[-1]
        await pilot.press("less_than_sign")
        assert app.focused is screen.query_one("#browse-rank-below")
        await pilot.press("6")  # no enter: the list follows the number
        await until(pilot, lambda: "2/4 queries [all · rank < 6]" in text_of(app), what="upper bound")
        assert [q.target_rank for _, q, _ in screen.items] == [1, 3]
        await pilot.press("enter", "greater_than_sign", "1")
        await until(pilot, lambda: "1/4 queries [all · 1 < rank < 6]" in text_of(app), what="the range")
        assert [q.target_rank for _, q, _ in screen.items] == [3]
        await pilot.press("backspace", "enter", "less_than_sign", "backspace", "enter")  # both boxes emptied
        await until(pilot, lambda: "4/4 queries [all]" in text_of(app), what="no rank filter")
        await pilot.press("greater_than_sign", "5", "enter", "less_than_sign", "3", "enter")  # empty: refused
        await until(
            pilot, lambda: "no rank is both worse than 5 and better than 3" in text_of(app), what="error"
        )


async def test_browse_list_items_are_one_line_each_with_long_captions(tmp_path, monkeypatch):
    monkeypatch.setenv("DWC_FAKE_GPUS", "2")
    p = make_project(tmp_path)
    reg = Registry(p / "runs" / "registry.db")
    rid = add_run(reg, p, "demo", "done", recalls=[recall(1, 2, 3, 9), recall(50, 70, 80, 95)], queries=True)
    caption = "is shorter and more colorful, with thin straps and a flowing skirt that reaches the knees " * 2
    with reg.write() as c:
        c.execute("UPDATE query_results SET text = ? || qidx WHERE run_id = ?", (caption, rid))
    reg.close()
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await open_browse(pilot, rid)
        await pilot.pause(0.1)
        ol = app.screen.query_one("#browse-list")
        assert ol.option_count == 4
        assert ol.virtual_size.height == 4  # one line each
        assert text_of(app).count("is shorter and m…") == 4


async def test_queue_list_keeps_a_long_experiment_name_on_one_line(tmp_path, monkeypatch):
    from test_tui import EXPERIMENTS

    monkeypatch.setenv("DWC_FAKE_GPUS", "2")
    p = make_project(tmp_path)
    long_name = "fiq-dress-dwc-clip4cir-protocol"
    (p / "experiments.yaml").write_text(EXPERIMENTS + f"  {long_name}:\n    extends: demo\n")
    seed_registry(p)
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("q")
        ol = app.screen.query_one("#queue-list")
        await until(pilot, lambda: ol.option_count == 3, what="experiments listed")
        await pilot.pause(0.1)
        assert ol.virtual_size.height == 3  # one line each: a wrapped name looked like two experiments
        screen = text_of(app)
        assert "fiq-dress-dwc-clip4" in screen and "…" in screen and "protocol" not in screen.split("▎")[0]
        await pilot.press("down", "down")
        await until(pilot, lambda: long_name in text_of(app), what="the whole name beside the list")


def test_epoch_axis_ticks_are_whole_epochs_labelled_as_placed():
    from dwc_tui.app.widgets.plots import EpochFormatter, epoch_axis

    labels = EpochFormatter().get_labels_for_ticks
    assert epoch_axis(0, 3) == (0, 3, [0.0, 1.0, 2.0, 3.0])
    lo, hi, ticks = epoch_axis(0, 2)
    assert ticks == [0, 1, 2] and labels(ticks) == ["0", "1", "2"]  # was 0, 1.5 ("2"), 2
    lo, hi, ticks = epoch_axis(-0.01, 0.0)  # a single evaluation at epoch 0, drawn as a short flat segment
    assert labels(ticks) == ["0"] and lo <= ticks[0] <= hi  # was "-0"
    assert epoch_axis(0.33, 2.0)[2] == [1.0, 2.0]
    assert epoch_axis(0.1, 0.9) == (0, 1, [0.0, 1.0])  # within the first epoch: its whole epoch
    assert epoch_axis(0.5, 1.0) == (0, 1, [0.0, 1.0])  # not a lone "1" at the right end
    for lo, hi in ((0, 7), (0, 100), (3, 250), (0.5, 9999.5)):
        _lo, _hi, ticks = epoch_axis(lo, hi)
        assert 2 <= len(ticks) <= 4 and all(t == int(t) and lo <= t <= hi for t in ticks), (lo, hi, ticks)
        assert labels(ticks) == [str(int(t)) for t in ticks]


async def test_recall_plot_axis_reads_whole_epochs(project):
    """Three evaluations (epochs 0, 1, 2): the axis reads "0 1 2", no "1.5" or a middle "2"."""
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await select(pilot, ids["demo"])
        await until(pilot, lambda: app.dashboard.plots and app.dashboard.focus_version, what="plots")
        await pilot.pause(0.3)
        plot = app.dashboard.plots["recall-plot"]
        assert plot._x_ticks == [0.0, 1.0, 2.0]
        lines = [line[plot.region.x : plot.region.right] for line in text_of(app).splitlines()]
        axis = lines[plot.region.bottom - 2]  # the labels, under the frame (then a blank margin line)
        assert axis.split() == ["0", "1", "2"], "\n".join(lines[plot.region.y : plot.region.bottom])


def test_log_tail_drops_the_clock_time_keeps_the_message():
    from dwc_tui.app.rows import log_message

    assert log_message("[14:23:29] loading dataset fashioniq") == "loading dataset fashioniq"
    assert log_message("=== 2026-11-23 16:11:22 start run 5 ===") == "=== start run 5 ==="
    assert log_message("[2026-11-23 16:11:22,123] INFO x: y") == "INFO x: y"
    assert log_message("epoch 1 done: 12:00:00 left") == "epoch 1 done: 12:00:00 left"


async def test_dashboard_log_tail_at_80_columns_shows_messages_not_times(tmp_path, monkeypatch):
    monkeypatch.setenv("DWC_FAKE_GPUS", "2")
    p = make_project(tmp_path)
    reg = Registry(p / "runs" / "registry.db")
    add_run(reg, p, "demo", "done", losses=[2.0, 1.0], log="[14:23:29] loading dataset synthetic\n")
    reg.close()
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await until(pilot, lambda: "loading dataset synth" in text_of(app), what="log tail")
        assert "14:23:29" not in text_of(app)
