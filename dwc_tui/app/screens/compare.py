"""The marked runs side by side: best or last metrics (`w` switches), mean ± std across seeds, only the config keys
that differ.

The table comes from ``dwc_core.results.compare`` (the same one `dwc compare` prints); this screen only shows it.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Static
from textual.worker import Worker, WorkerState

from dwc_tui.app import data
from dwc_tui.app.widgets.keybar import KeyBar


class CompareScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("w", "switch_which", "Best/last"),
    ]
    KEYS = (("esc", "back", 0), ("w", "best/last", 1), ("← →", "scroll sideways", 1))
    WHICH = ("best", "last")

    def __init__(self, run_ids: list[int]):
        super().__init__()
        self.run_ids = run_ids
        self.table = None
        self.which = "best"  # each run's best evaluation, or its last one

    def compose(self) -> ComposeResult:
        yield Static(self._loading_title(), id="compare-title")
        yield DataTable(id="compare-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="compare-notes")
        yield KeyBar()

    def _loading_title(self) -> str:
        return f"compare runs {', '.join(f'#{i}' for i in self.run_ids)} — {self.which} metrics, loading…"

    def on_mount(self) -> None:
        self._load()

    def _load(self) -> None:
        path, ids, which = self.app.registry_path, self.run_ids, self.which
        self.run_worker(
            lambda: data.compare_table(path, ids, which),
            thread=True, group="compare", exclusive=True, exit_on_error=False,
        )  # fmt: skip

    def action_switch_which(self) -> None:
        """Best metrics ↔ last metrics (the title says which)."""
        self.which = self.WHICH[1 - self.WHICH.index(self.which)]
        self.table = None
        self.query_one("#compare-title", Static).update(self._loading_title())
        self._load()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if not self.is_attached:  # the app is shutting down: this screen's widgets may be gone
            return
        if event.worker.group != "compare" or event.worker.is_cancelled:
            return
        title = self.query_one("#compare-title", Static)
        if event.state == WorkerState.ERROR:
            title.update(
                Text(getattr(event.worker.error, "message", str(event.worker.error)), style="bold red")
            )
        elif event.state == WorkerState.SUCCESS:
            self.show(event.worker.result)

    def show(self, table) -> None:
        from dwc_core.results.formats import cell_text, header

        self.table = table
        ids = ", ".join(f"#{i}" for i in self.run_ids)
        other = self.WHICH[1 - self.WHICH.index(table.which)]
        self.query_one("#compare-title", Static).update(
            Text.assemble(
                (f"compare {ids} — {table.which} metrics", "bold"),
                (f"  (w: {other})", "dim"),
                "\n",
                "\n".join(title_lines(table)),
            )
        )
        dt = self.query_one("#compare-table", DataTable)
        dt.clear(columns=True)
        info = table.info_columns(compact=True)
        records = table.records()
        for col in info:
            dt.add_column(col, key=f"i:{col}")
        for m in table.metrics:
            dt.add_column(header(m), key=f"m:{m}")
        for row, rec in zip(table.rows, records, strict=True):
            cells = [
                Text(_plain(rec.get("variant") if c == "variant" else rec.get(c, row.changed.get(c))))
                for c in info
            ]
            for m in table.metrics:
                c = row.cells.get(m)
                cells.append(
                    Text(cell_text(c), style="bold" if c is not None and c.best else "", justify="right")
                )
            dt.add_row(*cells)
        notes = list(table.notes)
        if table.only_changed and table.changed_keys:
            notes.insert(0, f"config keys that differ: {', '.join(table.changed_keys)}")
        elif table.only_changed:
            notes.insert(0, "the compared runs share every config key (apart from the seed)")
        self.query_one("#compare-notes", Static).update(Text("\n".join(notes), style="italic"))


def title_lines(table) -> list[str]:
    """The table's title as the lines the screen shows: what every row shares (which epoch, dataset, method) on
    one, and with --only-changed its account of the shared settings (the title's last " · " part, often longer
    than 80 columns) on the next, so a narrow terminal wraps that line rather than cutting the title short."""
    if table.only_changed:
        head, sep, shared = table.title.rpartition(" · ")
        if sep:
            return [head, shared]
    return [table.title]


def _plain(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return " ".join(map(str, v))
    return str(v)
