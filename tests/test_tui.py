"""`dwc tui`: Pilot tests of every screen and action against a registry the test seeds, live updates from another
process, quitting and SIGHUP leave runs alone, import hygiene, clear errors for unusable registries."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from rich.console import Console
from textual.widgets import Input

from dwc_core.runs.registry import Registry
from dwc_tui.app import actions
from dwc_tui.app.app import DwcApp

EXPERIMENTS = """\
experiments:
  demo:
    description: tiny TIRG on synthetic shapes
    dataset: {name: synthetic, num_train: 64, num_test: 16, image_size: 32}
    model: {name: tirg, embed_dim: 32, cnn: {arch: tiny}, text: {word_dim: 16, hidden: 32}}
    trainer: {epochs: 2, num_workers: 0, max_steps_per_epoch: 2}
  grid:
    extends: demo
    grid: {model.embed_dim: [16, 32]}
    seeds: [1, 2]
"""
pytestmark = pytest.mark.anyio
T0 = 1_780_000_000.0  # fixed times keep snapshots stable


def make_project(tmp: Path) -> Path:
    (tmp / "experiments.yaml").write_text(EXPERIMENTS)
    (tmp / "runs").mkdir(exist_ok=True)
    return tmp


def _config(
    method: str = "tirg", dataset: str = "synthetic", seed: int = 599, epochs: int = 3, dim: int = 32
):
    return {
        "dataset": {"name": dataset, "num_train": 64, "num_test": 16},
        "model": {"name": method, "embed_dim": dim},
        "trainer": {"epochs": epochs, "seed": seed, "lr": 0.001},
        "eval": {},
    }


def add_run(
    reg: Registry,
    project: Path,
    experiment: str,
    status: str,
    *,
    method: str = "tirg",
    seed: int = 599,
    epochs: int = 3,
    losses: list[float] | None = None,
    recalls: list[dict] | None = None,
    dim: int = 32,
    started: float = T0,
    log: str = "",
    queries: bool = False,
) -> int:
    if recalls:
        epochs = len(recalls) - 1
    row = reg.create_run(experiment, _config(method, seed=seed, epochs=epochs, dim=dim), project / "runs")
    rid = row["id"]
    with reg.write() as c:
        c.execute("UPDATE runs SET created = ? WHERE id = ?", (started - 10, rid))
    if status == "queued":
        return rid
    steps = len(losses or [])
    rows = [
        {"step": i + 1, "epoch": (i + 1) * epochs / max(steps, 1), "split": "train", "name": "loss", "value": v,
         "time": started + i}
        for i, v in enumerate(losses or [])
    ]  # fmt: skip
    best, best_epoch = None, None
    for ep, metrics in enumerate(recalls or []):
        for name, value in metrics.items():
            rows.append(
                {"step": ep * 10, "epoch": ep, "split": "test", "name": name, "value": value, "time": started}
            )
        eid = reg.add_evaluation(
            rid, epoch=ep, step=ep * 10, kind="epoch", split="test", checkpoint=f"epoch {ep}",
            protocol={"name": "synthetic"}, metrics=metrics, num_queries=4, gallery_size=8, skipped_queries=0,
        )  # fmt: skip
        if ep > 0 and (best is None or metrics["mean"] > best[1]["mean"]):
            best, best_epoch = (eid, metrics), ep
        if queries:
            reg.add_query_results(
                rid, eid, _query_rows(ep, (1, 3, 12, None) if experiment == "demo" else (1, 12, 3, None))
            )
    reg.log_metrics(rid, rows)
    epoch = len(recalls or []) - 1 if recalls else 0
    fields = {"started": started, "epoch": max(epoch, 0), "host": "testhost", "worker": "w1", "device": "cpu"}
    if best is not None:
        reg.mark_best(rid, best[0])
        fields.update(
            best_value=best[1]["mean"], best_epoch=best_epoch, best_metrics={**best[1], "epoch": best_epoch}
        )
    reg.update(rid, **fields)
    if status in ("running", "starting"):
        reg.set_status(rid, status, status)
    else:
        reg.set_status(
            rid,
            status,
            status,
            ended=started + 125,
            error="boom: loss is NaN" if status == "failed" else None,
        )
    if log:
        (Path(reg.get(rid)["run_dir"]) / "train.log").write_text(log)
    return rid


def _query_rows(epoch: int, ranks: tuple = (1, 3, 12, None)) -> list[dict]:
    """Four queries; by default 0 and 1 hit (rank 1 and 3), 2 misses (rank 12), 3 is not in the stored top-5."""
    out = []
    for q, rank in enumerate(ranks if epoch else [None] * 4):
        topk = [f"img{q}-{i}" for i in range(5)]
        if rank is not None and rank <= 5:
            topk[rank - 1] = f"target{q}"
        out.append({
            "eval_set": "test", "qidx": q, "ref_id": f"ref{q}", "text": f"make shape {q} red",
            "target_ids": [f"target{q}"], "topk_ids": topk, "topk_scores": [0.9 - 0.1 * i for i in range(5)],
            "target_rank": rank,
        })  # fmt: skip
    return out


def recall(r1: float, r5: float, r10: float, r50: float) -> dict:
    return {"R@1": r1, "R@5": r5, "R@10": r10, "R@50": r50, "mean": (r1 + r5 + r10 + r50) / 4}


def seed_registry(project: Path) -> dict[str, int]:
    """A registry with a finished demo run, a failed one, a queued one and two seeds of a grid experiment."""
    reg = Registry(project / "runs" / "registry.db")
    ids = {}
    ids["demo"] = add_run(
        reg, project, "demo", "done", losses=[2.0, 1.6, 1.3, 1.1, 0.9, 0.8],
        recalls=[recall(1, 2, 3, 9), recall(50, 70, 80, 95), recall(60, 80, 90, 99)],
        log="loading dataset synthetic\nepoch 1 done: 2 steps in 0.4s\nepoch 2 done: 2 steps in 0.4s\n",
        queries=True,
    )  # fmt: skip
    ids["failed"] = add_run(reg, project, "demo", "failed", method="tirg", losses=[2.0, 2.5])
    ids["grid1"] = add_run(
        reg, project, "grid", "done", seed=1, dim=16, losses=[1.5, 1.0],
        recalls=[recall(1, 2, 3, 4), recall(40, 60, 70, 90)], queries=True,
    )  # fmt: skip
    ids["grid2"] = add_run(
        reg, project, "grid", "done", seed=2, dim=16, losses=[1.4, 0.9],
        recalls=[recall(1, 2, 3, 4), recall(44, 62, 74, 92)], queries=True,
    )  # fmt: skip
    ids["queued"] = add_run(reg, project, "demo", "queued")
    reg.close()
    return ids


# ------------------------------------------------------------------------------------------------- pilot helpers
def text_of(app) -> str:
    """What the terminal shows now, as plain text."""
    w, h = app.size
    console = Console(
        width=w, height=h, file=io.StringIO(), force_terminal=True, color_system=None, record=True
    )
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens, simplify=True)
    )
    return console.export_text()


async def until(pilot, cond, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await pilot.pause(0.05)
        if cond():
            return
    raise AssertionError(f"timed out waiting for {what or cond}:\n{text_of(pilot.app)}")


def table_ids(app) -> list[int]:
    return list(app.dashboard.shown_ids)


def status_of(project: Path, rid: int) -> dict:
    reg = Registry(project / "runs" / "registry.db", create=False)
    try:
        return reg.get(rid)
    finally:
        reg.close()


async def ready(pilot) -> None:
    """The first poll is applied and the runs table drawn: DataTable measures rows it was given when idle, so on
    a loaded machine the rows can exist a few frames before they are on screen."""
    await until(
        pilot, lambda: pilot.app.dashboard.shown_ids and pilot.app.polls_applied >= 1, what="first poll"
    )
    dash = pilot.app.dashboard
    runs = dash.query_one("#runs")
    await until(pilot, lambda: runs.virtual_size.height > len(dash.shown_ids), what="the runs table drawn")


async def select(pilot, rid: int) -> None:
    table = pilot.app.dashboard.query_one("#runs")
    table.move_cursor(row=table_ids(pilot.app).index(rid))
    await pilot.pause(0.05)
    assert pilot.app.dashboard.selected_id() == rid


async def open_run(pilot, rid: int) -> None:
    """Select run `rid` on the dashboard, press enter, and wait until its Run screen has loaded."""
    await select(pilot, rid)
    await pilot.press("enter")
    await until(
        pilot, lambda: type(pilot.app.screen).__name__ == "RunScreen" and pilot.app.screen.info is not None,
        what="run screen",
    )  # fmt: skip


async def open_browse(pilot, rid: int) -> None:
    """Select run `rid` on the dashboard, press b, and wait until its Browse screen has loaded."""
    await select(pilot, rid)
    await pilot.press("b")
    await until(
        pilot, lambda: type(pilot.app.screen).__name__ == "BrowseScreen" and pilot.app.screen.view is not None,
        what="browse screen",
    )  # fmt: skip


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setenv("DWC_FAKE_GPUS", "2")
    p = make_project(tmp_path)
    return p, seed_registry(p)


def make_app(project: Path, **kw) -> DwcApp:
    return DwcApp(project, poll_interval=kw.pop("poll_interval", 0.2), **kw)


# -------------------------------------------------------------------------------------------------- dashboard
async def test_dashboard_shows_runs_counts_and_detail(project):
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        assert table_ids(app) == sorted(ids.values())
        screen = text_of(app)
        assert "queued 1" in screen and "done 3" in screen and "failed 1" in screen
        assert "GPUs 0,1" in screen
        assert "90.00" in screen  # best R@10 of the demo run
        await select(pilot, ids["demo"])
        await until(pilot, lambda: "epoch 2 done" in text_of(app), what="log tail of the selected run")
        assert app.poller.focus is not None and app.poller.focus.loss[1][-1] == pytest.approx(0.8)
        assert sorted(app.poller.focus.recall) == ["R@1", "R@10", "R@5", "R@50", "mean"]


async def test_detail_pane_shows_the_phase_and_progress_of_a_running_run(project):
    """The selected running run's phase line: data / cache (images done) / train (step in the epoch, it/s and how
    much of the run is done) / eval, following its heartbeats."""
    p, ids = project
    reg = Registry(p / "runs" / "registry.db")
    rid = add_run(reg, p, "live", "running", epochs=3, losses=[1.0])
    reg.heartbeat(rid, epoch=1, phase="data")
    app = make_app(p)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await select(pilot, rid)
        phase = app.dashboard.query_one("#phase")

        def lines() -> list[str]:
            return str(phase.render()).splitlines()

        await until(pilot, lambda: "phase data  epoch 1/3" in lines(), what="data phase")
        assert lines()[0] == f"#{rid} live running"
        reg.heartbeat(rid, epoch=1, phase="cache", cache_done=120, cache_total=480)
        await until(pilot, lambda: "phase cache  epoch 1/3  120/480 images" in lines(), what="cache phase")
        reg.heartbeat(rid, epoch=2, step=5, total_steps=12, phase="train", epoch_step=1, epoch_steps=4,
                      loss=0.5, it_s=3.46, eta_s=30)  # fmt: skip
        # epoch 2 of 3, step 1 of 4 in it: (1 + 1/4) / 3 of the run done = 41%
        await until(pilot, lambda: "phase train  epoch 2/3  step 1/4" in lines(), what="train phase")
        assert "3.5 it/s  41%" in lines()
        reg.heartbeat(rid, epoch=2, phase="eval")
        await until(pilot, lambda: "phase eval  epoch 2/3" in lines(), what="eval phase")
        assert not any("it/s" in x for x in lines())
        await select(pilot, ids["demo"])  # a finished run: no phase line
        await until(pilot, lambda: lines()[0].startswith(f"#{ids['demo']} demo"), what="the done run")
        assert not any(x.startswith("phase") for x in lines())
    reg.close()


async def test_filter_by_text_and_status(project):
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("slash")
        await pilot.press(*"grid", "enter")
        assert table_ids(app) == [ids["grid1"], ids["grid2"]]
        await pilot.press("slash")
        await pilot.press(*("ctrl+a", "ctrl+k"), *"status:failed,queued", "enter")
        assert table_ids(app) == [ids["failed"], ids["queued"]]
        await pilot.press("escape")
        assert len(table_ids(app)) == 5


async def test_sort_by_columns(project):
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        app.dashboard.sort_by("mean", reverse=True)
        await pilot.pause()
        assert table_ids(app)[:3] == [ids["demo"], ids["grid2"], ids["grid1"]]
        await pilot.press("S")  # reverse: runs without a mean first (ties by id)
        assert table_ids(app)[:2] == [ids["failed"], ids["queued"]]
        await pilot.press("s")  # next column after mean: elapsed
        assert app.dashboard.sort_key == "elapsed"


async def test_cancel_resume_delete(project):
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await select(pilot, ids["queued"])
        await pilot.press("c")
        await until(pilot, lambda: status_of(p, ids["queued"])["status"] == "cancelled", what="cancel")
        await select(pilot, ids["failed"])
        await pilot.press("r")
        await until(pilot, lambda: status_of(p, ids["failed"])["status"] == "queued", what="resume")
        await until(
            pilot, lambda: app.dashboard.rows[ids["failed"]]["status"] == "queued", what="poll after resume"
        )
        await select(pilot, ids["grid1"])
        await pilot.press("d")
        assert type(app.screen).__name__ == "ConfirmScreen"
        await pilot.press("n")  # declined: nothing happens
        await pilot.pause(0.3)
        assert not status_of(p, ids["grid1"])["deleted"]
        await pilot.press("d", "y")
        await until(pilot, lambda: ids["grid1"] not in table_ids(app), what="deleted run hidden")
        assert status_of(p, ids["grid1"])["deleted"] == 1


async def test_marks_apply_actions_to_several_runs(project):
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await select(pilot, ids["grid1"])
        await pilot.press("space", "space")  # marks grid1, then grid2 (the cursor moves down)
        assert app.dashboard.marked == {ids["grid1"], ids["grid2"]}
        assert "●" in text_of(app)
        await pilot.press("d", "y")
        await until(
            pilot, lambda: not ({ids["grid1"], ids["grid2"]} & set(table_ids(app))), what="both deleted"
        )


async def test_open_run_screen_and_log(project):
    p, ids = project
    run_dir = Path(status_of(p, ids["demo"])["run_dir"])
    with open(
        run_dir / "last.pt", "wb"
    ) as fh:  # any bytes: the tab lists files and sizes, it does not load them
        fh.truncate(3 * 2**20 + 2**19)  # 3.5 MB
    (run_dir / "best.pt").write_bytes(b"\0" * 300 * 1024)  # 0.29 MB
    (run_dir / "notes.txt").write_text("not a checkpoint")
    app = make_app(p)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await open_run(pilot, ids["demo"])
        evals = app.screen.query_one("#run-evals")
        assert evals.row_count == 3
        assert "num_train: 64" in text_of(app)
        await pilot.press("e")
        assert "2 ★" in text_of(app)
        await pilot.press("v")
        assert "done" in text_of(app)
        await pilot.press("k")
        ckpts = app.screen.query_one("#run-checkpoints")
        rows = [[str(c) for c in ckpts.get_row_at(i)] for i in range(ckpts.row_count)]
        assert [(r[0], r[1]) for r in rows] == [("best.pt", "0.3"), ("last.pt", "3.5")]
        shown = text_of(app)
        assert "best.pt" in shown and "last.pt" in shown and "3.5" in shown and "notes.txt" not in shown
        await pilot.press("escape", "l")
        await until(pilot, lambda: "epoch 2 done" in text_of(app), what="full log")
        # the log follows the tail
        with open(Path(status_of(p, ids["demo"])["run_dir"]) / "train.log", "a") as fh:
            fh.write("a new line at the end\n")
        await until(pilot, lambda: "a new line at the end" in text_of(app), what="log follow")


async def test_queue_screen_validates_and_queues(project, monkeypatch):
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await pilot.press("q")
        await until(pilot, lambda: "tiny TIRG" in text_of(app), what="experiment description")
        await until(pilot, lambda: "1 run" in text_of(app), what="run count")
        await pilot.press("down")  # the grid experiment: 2 values × 2 seeds
        await until(pilot, lambda: "4 runs" in text_of(app), what="grid run count")
        await pilot.press("enter")  # to the overrides box
        await pilot.press(*"trainer.epohcs=3")
        await until(pilot, lambda: "Did you mean 'epochs'" in text_of(app), what="inline error")
        await pilot.press("enter")  # refused while invalid
        await pilot.pause(0.3)
        assert status_of_count(p) == 5
        for _ in range(len("epohcs=3")):
            await pilot.press("backspace")
        await pilot.press(*"epochs=1")
        await until(pilot, lambda: "4 runs" in text_of(app), what="valid again")
        await pilot.press("enter")
        await until(pilot, lambda: status_of_count(p) == 9, what="queued 4 runs")
        await until(pilot, lambda: "No worker is alive" in text_of(app), what="worker offer")
        # ctrl+w starts one although the GPU box (a text box, which binds ctrl+w itself) has the focus
        assert isinstance(app.focused, Input) and app.focused.id == "queue-gpus"
        started = []
        monkeypatch.setattr(
            actions, "start_worker", lambda proj, gpus: started.append(gpus) or "worker w-1 started"
        )
        await pilot.press("ctrl+w")
        await until(
            pilot, lambda: "worker w-1 started: the runs start" in text_of(app), what="worker started"
        )
        assert len(started) == 1
        await pilot.press("escape")
        await until(pilot, lambda: len(table_ids(app)) == 9, what="new runs on the dashboard")


def status_of_count(project: Path) -> int:
    reg = Registry(project / "runs" / "registry.db", create=False)
    try:
        return len(reg.runs())
    finally:
        reg.close()


async def test_compare_marked_runs(project):
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("C")  # nothing marked: a hint, no screen
        assert type(app.screen).__name__ == "DashboardScreen"
        for rid in (ids["demo"], ids["grid1"], ids["grid2"]):
            await select(pilot, rid)
            await pilot.press("space")
        await pilot.press("C")
        await until(
            pilot, lambda: type(app.screen).__name__ == "CompareScreen" and app.screen.table is not None
        )
        screen = text_of(app)
        assert "72.00 ± 2.83" in screen  # grid R@10 over seeds 1 and 2: 70 and 74
        assert "model.embed_dim" in screen  # the one config key that differs


async def test_browse_and_against(project):
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await open_browse(pilot, ids["demo"])
        assert "4/4 queries" in text_of(app)
        assert "make shape 0 red" in text_of(app) and "HIT" in text_of(app)
        await pilot.press("m")  # misses
        await until(pilot, lambda: "2/4 queries" in text_of(app), what="misses filter")
        await pilot.press("m")  # hits
        await until(pilot, lambda: "2/4 queries" in text_of(app) and "[hits]" in text_of(app), what="hits")
        await pilot.press("m", "slash", *"shape 1", "enter")
        await until(pilot, lambda: "1/4 queries" in text_of(app), what="text filter")
        await pilot.press("escape")
        # against: the demo run with grid1 marked
        await select(pilot, ids["grid1"])
        await pilot.press("space")
        await open_browse(pilot, ids["demo"])
        assert f"only #{ids['demo']} 1" in text_of(app) and f"only #{ids['grid1']} 1" in text_of(app)


async def test_help_and_command_palette(project):
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("question_mark")
        assert "command palette" in text_of(app)
        await pilot.press("escape")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for t in ("Queue an experiment", "Cancel runs", "Resume runs", "Delete runs", "Compare runs",
                  "Browse queries", "Sort by mean"):  # fmt: skip
            assert t in titles
        sort_mean = next(c for c in app.get_system_commands(app.screen) if c.title == "Sort by mean")
        sort_mean.callback()
        await pilot.pause()
        assert app.dashboard.sort_key == "mean"
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        assert type(app.screen).__name__ == "CommandPalette"


async def run_from_palette(pilot, title: str) -> None:
    """ctrl+p, type `title`, enter: the way a user runs a command (not its callback called by the test)."""
    app = pilot.app
    await pilot.press("ctrl+p")
    await until(pilot, lambda: type(app.screen).__name__ == "CommandPalette", what="the command palette")
    await pilot.press(*title)
    palette = app.screen

    def first_hit() -> str | None:
        from textual.command import CommandList

        options = palette.query_one(CommandList)
        if not options.option_count:
            return None
        return str(options.get_option_at_index(0).prompt).split("\n")[0]

    await until(pilot, lambda: (first_hit() or "").startswith(title), what=f"{title!r} first in the palette")
    for _ in range(
        3
    ):  # enter highlights the first hit (and runs it when it is the only one), enter again runs it
        await pilot.press("enter")
        await pilot.pause(0.1)
        if app.screen is not palette:
            break
    assert app.screen is not palette, "the palette stayed open"


async def test_palette_cancel_cancels_the_selected_queued_run(project):
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await select(pilot, ids["queued"])
        await run_from_palette(pilot, "Cancel runs")
        await until(pilot, lambda: app.messages, what="the cancel's outcome")
        assert app.messages[-1][0] == "information", app.messages
        assert status_of(p, ids["queued"])["status"] == "cancelled"
        await until(pilot, lambda: app.dashboard.rows[ids["queued"]]["status"] == "cancelled", what="row")
        assert status_of(p, ids["demo"])["status"] == "done"  # only the selected run


async def test_palette_action_from_another_screen_returns_to_the_dashboard_first(project):
    """A dashboard command run from the palette on the Run screen (or from the help over it) leaves that screen
    and does the action for the dashboard's selected run: one screen over the dashboard, not a stack."""
    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await open_run(pilot, ids["demo"])
        await run_from_palette(pilot, "Browse queries")
        await until(
            pilot, lambda: type(app.screen).__name__ == "BrowseScreen" and app.screen.view is not None,
            what="the browse screen",
        )  # fmt: skip
        assert [type(s).__name__ for s in app.screen_stack[1:]] == ["DashboardScreen", "BrowseScreen"]
        assert app.screen.run_id == ids["demo"]
        await pilot.press("question_mark")  # two screens over the dashboard: browse, and the help over it
        await until(pilot, lambda: type(app.screen).__name__ == "HelpScreen", what="help")
        await run_from_palette(pilot, "Open run")
        await until(
            pilot, lambda: type(app.screen).__name__ == "RunScreen" and app.screen.info is not None,
            what="the run screen",
        )  # fmt: skip
        assert [type(s).__name__ for s in app.screen_stack[1:]] == ["DashboardScreen", "RunScreen"]
        assert app.screen.info["run"]["id"] == ids["demo"]
        await pilot.press("escape")
        assert app.screen is app.dashboard


async def test_a_poll_asked_for_while_one_runs_never_drops_what_the_running_one_read(project):
    """poll_soon() (after an action, or a change of selection) while a poll is running on its thread: the running
    poll used to be replaced and its snapshot dropped, though the poller had already taken its changes as seen;
    a run cancelled at that moment kept showing "queued" for good (the counts, re-sent each poll, said 0 queued)."""
    import threading

    p, ids = project
    app = make_app(p)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        real_poll = app.poller.poll
        read, slow = threading.Event(), threading.Event()

        def poll():
            snap = real_poll()
            if slow.is_set():
                slow.clear()
                read.set()
                time.sleep(0.5)  # the changes are read; the snapshot is not delivered yet
            return snap

        app.poller.poll = poll
        reg = Registry(p / "runs" / "registry.db", create=False)
        reg.set_status(ids["queued"], "cancelled", "cancelled in the test")
        reg.close()
        slow.set()
        app.start_poll()
        await until(pilot, read.is_set, what="the poll that reads the cancel")
        app.poll_soon()  # while that poll sleeps
        await until(
            pilot, lambda: app.dashboard.rows[ids["queued"]]["status"] == "cancelled", timeout=5,
            what="the cancelled run's row",
        )  # fmt: skip
        line = next(x for x in text_of(app).splitlines() if x.split()[:1] == [str(ids["queued"])])
        assert "cancelled" in line, line


# ------------------------------------------------------------------------------- cheap full re-reads, live screens
def test_full_reread_decodes_only_changed_rows_and_still_catches_plain_updates(project, monkeypatch):
    """Every FULL_EVERY-th poll compares each run's raw columns and reads whole, decodes and formats only the rows
    that differ; a soft-delete and a plain column update (no heartbeat, no event) still show within FULL_EVERY
    polls, and a row that did not change is not sent to the UI again."""
    import json

    from dwc_tui.app import poller as poller_mod

    p, ids = project
    db = p / "runs" / "registry.db"
    poller = poller_mod.Poller(db)
    first = poller.poll()
    assert first.full and set(first.rows) == set(ids.values())  # every row, once
    decoded = []
    real = poller_mod.fmt.decode_run
    monkeypatch.setattr(poller_mod.fmt, "decode_run", lambda row: decoded.append(row["id"]) or real(row))
    with Registry(db, create=False).write() as c:  # plain updates: no heartbeat, no event
        best = {**recall(10, 20, 33, 40), "epoch": 1}
        c.execute(
            "UPDATE runs SET best_metrics = ?, best_value = ? WHERE id = ?",
            (json.dumps(best), best["mean"], ids["grid1"]),
        )
        c.execute("UPDATE runs SET deleted = 1 WHERE id = ?", (ids["failed"],))
    snaps = [poller.poll() for _ in range(poller_mod.FULL_EVERY)]
    assert poller.polls % poller_mod.FULL_EVERY == 1  # the last of them was the full re-read
    rows = {rid: r for s in snaps for rid, r in s.rows.items()}
    assert rows[ids["grid1"]]["cells"]["r10"].plain == "33.00"
    assert ids["failed"] in set().union(*(s.removed for s in snaps))
    assert sorted(decoded) == sorted([ids["grid1"], ids["failed"]])  # not the 3 rows that did not change
    assert set(rows) == {ids["grid1"]}  # the deleted one is removed, the unchanged ones are not re-sent
    decoded.clear()
    poller.polls = poller_mod.FULL_EVERY  # another full re-read with nothing changed: nothing decoded or sent
    snap = poller.poll()
    assert decoded == [] and snap.rows == {} and snap.removed == set()


async def test_compare_switches_between_best_and_last_metrics(project):
    p, ids = project
    reg = Registry(p / "runs" / "registry.db", create=False)
    for rid, r10 in ((ids["demo"], 11.0), (ids["grid1"], 21.0), (ids["grid2"], 25.0)):
        reg.update(rid, last_metrics={**recall(1, 2, r10, 50), "epoch": 2})
    reg.close()
    app = make_app(p)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        for rid in (ids["demo"], ids["grid1"], ids["grid2"]):
            await select(pilot, rid)
            await pilot.press("space")
        await pilot.press("C")
        await until(
            pilot, lambda: type(app.screen).__name__ == "CompareScreen" and app.screen.table is not None
        )
        screen = text_of(app)
        assert "best metrics" in screen and "72.00 ± 2.83" in screen  # grid's best R@10 (70, 74)
        await pilot.press("w")
        await until(pilot, lambda: app.screen.table is not None and app.screen.table.which == "last")
        screen = text_of(app)
        assert "last metrics" in screen and "23.00 ± 2.83" in screen  # grid's last R@10 (21, 25)
        assert "72.00" not in screen
        await pilot.press("w")
        await until(pilot, lambda: app.screen.table is not None and app.screen.table.which == "best")
        assert "72.00 ± 2.83" in text_of(app)


async def test_run_screen_refreshes_an_active_run(project, monkeypatch):
    """The Run screen of a running run re-reads it: a new evaluation, event and status show without reopening."""
    from dwc_tui.app.screens import run as run_mod

    monkeypatch.setattr(run_mod, "REFRESH_S", 0.2, raising=False)
    loads = []
    real_load = run_mod.data.load_run
    monkeypatch.setattr(run_mod.data, "load_run", lambda *a: loads.append(a) or real_load(*a))
    p, _ids = project
    reg = Registry(p / "runs" / "registry.db", create=False)
    rid = add_run(
        reg, p, "demo", "running", losses=[2.0, 1.5], recalls=[recall(1, 2, 3, 9), recall(30, 40, 50, 60)]
    )
    app = make_app(p)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await open_run(pilot, rid)
        evals = app.screen.query_one("#run-evals")
        assert evals.row_count == 2
        reg.add_evaluation(
            rid, epoch=2, step=20, kind="epoch", split="test", checkpoint="epoch 2",
            protocol={"name": "synthetic"}, metrics=recall(41, 52, 63, 74), num_queries=4, gallery_size=8,
            skipped_queries=0,
        )  # fmt: skip
        await until(pilot, lambda: evals.row_count == 3, what="the new evaluation")
        await pilot.press("e")
        assert "63.00" in text_of(app)
        reg.set_status(rid, "done", "finished in the test", ended=T0 + 300)
        await until(pilot, lambda: app.screen.info["run"]["status"] == "done", what="the run ended")
        await pilot.press("v")
        assert "finished in the test" in text_of(app)
        await pilot.pause(0.3)
        before = len(loads)
        await pilot.pause(0.6)  # ended: no more re-reads
        assert len(loads) == before
    reg.close()
