"""One run: frozen config, environment, per-epoch evaluations, events, the full log (following), checkpoints."""

from __future__ import annotations

from pathlib import Path

from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Collapsible, DataTable, Log, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from dwc_core.results.slurm_view import slurm_line, slurm_summary
from dwc_tui.app import data
from dwc_tui.app.rows import number, status_style
from dwc_tui.app.widgets.keybar import KeyBar

LOG_FOLLOW_S = 1.0
REFRESH_S = 2.0  # an active run's status, evaluations, events and checkpoints are re-read this often
ACTIVE = ("queued", "starting", "running")
MAIN_VERSIONS = ("python", "torch", "cuda", "precision", "dwc")  # one line; the rest is folded
ENV_LABEL_WIDTH = 8  # "versions"


def metric_order(name: str) -> tuple:
    """R@1, R@5, R@10, R@50 by K (not as strings), each average after the plain ones, mean last."""
    if name == "mean":
        return (2, 0, name)
    avg, _, k = name.removeprefix("avg/").partition("@")
    return (int(name.startswith("avg/")), int(k) if k.isdigit() else 10**9, name)


def git_text(r: dict) -> str:
    """The commit the run trained from; when none was recorded, why: outside git, or not started yet."""
    if r.get("git_commit"):
        return str(r["git_commit"])
    if r.get("versions"):  # the trainer recorded its environment and found no git work tree
        return "not a git repository"
    return "not recorded yet (the run has not started)"


def version_lines(versions: dict, width: int | None = None) -> tuple[str, list[str]]:
    """("python 3.11.9  torch 2.4.0  cuda 12.1  precision bf16  dwc 0.1.0", ["cudnn 90100", "numpy 2.0", …]);
    the trainer's argv is not a version and is left out. Within ``width`` characters the main line keeps the
    leading versions that fit (at least one) and the others move to the folded rest, so it never wraps."""
    main: list[str] = []
    rest: list[str] = []
    for k in MAIN_VERSIONS:
        if versions.get(k) is None:
            continue
        item = f"{k} {versions[k]}"
        fits = width is None or not main or len("  ".join([*main, item])) <= width
        (main if fits and not rest else rest).append(item)
    rest += [
        f"{k} {v}" for k, v in versions.items() if k not in MAIN_VERSIONS and k != "argv" and v is not None
    ]
    return "  ".join(main) or "not recorded yet", rest


class RunScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("o", "tab('overview')", "Overview"),
        Binding("e", "tab('evaluations')", "Evals"),
        Binding("v", "tab('events')", "Events"),
        Binding("l", "tab('log')", "Log"),
        Binding("k", "tab('checkpoints')", "Checkpoints"),
        Binding("f", "toggle_follow", "Follow"),
    ]
    KEYS = (
        ("esc", "back", 0), ("o", "overview", 2), ("e", "evals", 1), ("v", "events", 2), ("l", "log", 1),
        ("k", "checkpoints", 2), ("f", "follow", 3),
    )  # fmt: skip

    def __init__(self, run_id: int, tab: str = "overview"):
        super().__init__()
        self.run_id = run_id
        self.initial_tab = tab
        self.info: dict | None = None
        self.log_offset = 0
        self.log_path: Path | None = None
        self.follow = True

    def compose(self) -> ComposeResult:
        yield Static(f"run #{self.run_id} — loading…", id="run-title")
        with TabbedContent(initial=self.initial_tab, id="run-tabs"):
            with TabPane("overview", id="overview"), VerticalScroll():
                yield Static("", id="run-env")
                with Collapsible(title="more versions", id="run-more", collapsed=True):
                    yield Static("", id="run-more-versions")
                yield Static("", id="run-config")
            with TabPane("evaluations", id="evaluations"):
                yield DataTable(id="run-evals", cursor_type="row", zebra_stripes=True)
            with TabPane("events", id="events"):
                yield DataTable(id="run-events", cursor_type="row", zebra_stripes=True)
            with TabPane("log", id="log"):
                yield Log(id="run-log", max_lines=20_000, auto_scroll=True)
            with TabPane("checkpoints", id="checkpoints"):
                yield DataTable(id="run-checkpoints", cursor_type="row")
        yield KeyBar()

    def on_mount(self) -> None:
        self._load()

    def _load(self) -> None:
        """Read the run on a thread worker (the first time, and every REFRESH_S while it is active)."""
        if not self.is_attached:
            return
        path, rid = self.app.registry_path, self.run_id
        self.run_worker(
            lambda: data.load_run(path, rid),
            thread=True,
            group="run-load",
            exclusive=True,
            exit_on_error=False,
        )

    def action_tab(self, tab: str) -> None:
        self.query_one("#run-tabs", TabbedContent).active = tab

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        self.query_one("#run-log", Log).auto_scroll = self.follow
        self.app.notify(f"log follow {'on' if self.follow else 'off'}", timeout=2)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if not self.is_attached:  # the app is shutting down: this screen's widgets may be gone
            return
        group = event.worker.group
        if group == "run-load":
            if event.state == WorkerState.SUCCESS:
                info = event.worker.result
                self.show(info)
                if (
                    info["run"]["status"] in ACTIVE
                ):  # it moves on: read it again (the last read shows it ended)
                    self.set_timer(REFRESH_S, self._load)
            elif event.state == WorkerState.ERROR:
                msg = getattr(event.worker.error, "message", str(event.worker.error))
                self.query_one("#run-title", Static).update(Text(msg, style="bold red"))
                if self.info is not None and self.info["run"]["status"] in ACTIVE:
                    self.set_timer(REFRESH_S, self._load)  # a passing error (registry busy): try again
        elif group == "run-log" and event.state in (WorkerState.SUCCESS, WorkerState.ERROR):
            if event.state == WorkerState.SUCCESS:
                text, self.log_offset = event.worker.result
                if text:
                    self.query_one("#run-log", Log).write(text)
            if self.is_mounted:
                self.set_timer(LOG_FOLLOW_S, self._read_log)

    def _read_log(self) -> None:
        if self.log_path is None or not self.is_attached:
            return
        path, offset = self.log_path, self.log_offset
        self.run_worker(
            lambda: data.read_log_from(path, offset), thread=True, group="run-log", exclusive=True,
            exit_on_error=False,
        )  # fmt: skip

    def show(self, info: dict) -> None:
        """The whole screen the first time; later (an active run re-read) only the parts that changed."""
        old, self.info = self.info, info
        r = info["run"]
        # one line at any width: what matters first, Slurm's view last (the overview has it in full)
        title = Text.assemble(
            (f"#{r['id']} {r['experiment']}  ", "bold"),
            (r["status"], status_style(r["status"])),
            f"  seed {r['seed']}  epoch {r['epoch']}/{r['epochs']}",
            (f"  slurm {slurm_summary(r)}" if r.get("slurm_job") else "", "dim"),
            no_wrap=True,
            overflow="ellipsis",
        )
        self.query_one("#run-title", Static).update(title)
        if old is None or old["run"] != r:
            self._show_env(r)
        if old is None:
            self._show_rest(info)
            return
        if old["evaluations"] != info["evaluations"]:
            self._fill_evals(info["evaluations"])
        if old["events"] != info["events"]:
            self._fill_events(info["events"])
        if old["checkpoints"] != info["checkpoints"]:
            self._fill_checkpoints(info["checkpoints"])
        if self.log_path is None and r.get("run_dir"):
            self.log_path = Path(r["run_dir"]) / "train.log"
            self._read_log()

    def on_resize(self, event) -> None:
        if self.info is not None:  # how many versions fit on the versions line
            self._show_env(self.info["run"])

    def _show_env(self, r: dict) -> None:
        versions = r.get("versions") or {}
        # the width the values get: the screen less the labels, the padding and the scrollbar
        main_versions, more_versions = version_lines(versions, max(self.size.width - ENV_LABEL_WIDTH - 5, 20))
        dirty = Text(" (dirty)", style="yellow") if r.get("git_commit") and r.get("git_dirty") else ""
        rows = [
            ("run dir", str(r.get("run_dir"))),
            ("git", Text.assemble(git_text(r), dirty)),
            ("host", f"{r.get('host') or '–'}  device {r.get('device') or '–'}  gpus {r.get('gpus') or '–'}  "
                     f"pid {r.get('pid') or '–'}"),
            ("versions", main_versions),
            ("created", f"{data.when(r.get('created'))}  started {data.when(r.get('started'))}  "
                        f"ended {data.when(r.get('ended'))}"),
        ]  # fmt: skip
        if r.get("variant"):
            rows.append(("variant", " ".join(f"{k}={v}" for k, v in r["variant"].items())))
        slurm = slurm_line(r)
        if slurm:
            rows.append(("slurm", slurm.removeprefix("slurm ")))
        if r.get("error"):
            rows.append(("error", Text(str(r["error"]), style="red")))
        # labels in a column of their own: a long value (a path, an error) wraps under itself, not under them
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True, width=ENV_LABEL_WIDTH)
        grid.add_column(overflow="fold", ratio=1)
        for label, value in rows:
            value = (
                value if isinstance(value, Text) else Text(value)
            )  # never markup: paths, node lists [01-04]
            grid.add_row(Text(label, style="red bold" if label == "error" else "bold"), value)
        self.query_one("#run-env", Static).update(grid)
        self.query_one("#run-more", Collapsible).display = bool(more_versions)
        self.query_one("#run-more-versions", Static).update(Text("\n".join(more_versions)))

    def _show_rest(self, info: dict) -> None:
        r = info["run"]
        cfg = {
            k: r["config"][k] for k in ("dataset", "model", "trainer", "eval") if k in (r.get("config") or {})
        }
        import yaml

        self.query_one("#run-config", Static).update(
            Syntax(
                yaml.safe_dump(cfg, sort_keys=False), "yaml", theme="ansi_dark", background_color="default"
            )
        )
        self._fill_evals(info["evaluations"])
        self._fill_events(info["events"])
        self._fill_checkpoints(info["checkpoints"])
        if r.get("run_dir"):
            self.log_path = Path(r["run_dir"]) / "train.log"
            self._read_log()

    def _fill_events(self, events: list[dict]) -> None:
        table = self.query_one("#run-events", DataTable)
        row = table.cursor_row
        table.clear(columns=True)
        table.add_columns("time", "kind", "message")
        for e in events:
            table.add_row(data.when(e["time"]), e["kind"], Text(str(e["message"])))
        table.move_cursor(row=row, animate=False)  # a refresh keeps the row the reader was on

    def _fill_checkpoints(self, checkpoints: list[dict]) -> None:
        table = self.query_one("#run-checkpoints", DataTable)
        row = table.cursor_row
        table.clear(columns=True)
        table.add_columns("file", "MB", "modified")
        for c in checkpoints:
            table.add_row(c["file"], f"{c['size_mb']:.1f}", data.when(c["modified"]))
        table.move_cursor(row=row, animate=False)

    def _fill_evals(self, evals: list[dict]) -> None:
        table = self.query_one("#run-evals", DataTable)
        row = table.cursor_row
        table.clear(columns=True)
        names: list[str] = []
        for e in evals:
            for k in e.get("metrics") or {}:
                if (k.startswith(("R@", "avg/R@")) or k == "mean") and k not in names:
                    names.append(k)
        names.sort(key=metric_order)
        table.add_columns("epoch", "kind", "split", *names, "queries")
        for e in evals:
            m = e.get("metrics") or {}
            mark = " ★" if e.get("is_best") else ""
            table.add_row(
                f"{e['epoch']}{mark}", e["kind"], e["split"], *(number(m.get(k)) for k in names),
                str(e.get("num_queries") or "–"),
            )  # fmt: skip
        table.move_cursor(row=row, animate=False)
