"""The dashboard: queue counts, the runs table (filter, sort, marks) and the selected run's live detail."""

from __future__ import annotations

import gc

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Input, Static
from textual.worker import Worker, WorkerState

from dwc_tui.app.poller import Focus, Snapshot
from dwc_tui.app.rows import COLUMNS, COUNTED, log_message, status_style
from dwc_tui.app.widgets.keybar import KeyBar

MARK = "●"
# below this many columns the runs table leaves out method and dataset (the detail pane names them) and cuts its
# cells shorter (rows.NARROW_MAX, rows.WIDE_MAX): either way it fits the screen without scrolling sideways
NARROW = 120
NARROW_HIDES = ("method", "dataset")
PLOTS = (("loss-plot", "loss", "train"), ("recall-plot", "Recall@K (test)", "test"))  # id, title, short title


def _load_curves():
    """The plot widget's class: textual-plot pulls in numpy (~0.3 s), so it is imported after the first paint."""
    from dwc_tui.app.widgets.plots import Curves

    return Curves


_frozen = False


def freeze_startup_objects() -> None:
    """Once per process, when the first table and the plots are up: move what exists now (modules, the first
    snapshot's rows) out of the garbage collector's scans. With 1,000 runs a full (gen-2) collection took ~110-140 ms
    every ~10 polls, holding the GIL and so stalling a poll and the UI; the rows replaced later are still freed as
    usual (by reference count), only cycles among what is frozen now would never be collected."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.freeze()


def visible_columns(width: int) -> tuple[tuple[str, str], ...]:
    """The runs table's columns for a terminal ``width`` columns wide (80 columns fit without scrolling sideways)."""
    return COLUMNS if width >= NARROW else tuple(c for c in COLUMNS if c[0] not in NARROW_HIDES)


def gpu_list(gpus: list[str]) -> str:
    """ "0,1" as it is, three or more consecutive numbers as a range: "0-7", "0-3,6"; "none" without GPUs."""
    if not gpus:
        return "none"
    if not all(g.isdigit() for g in gpus):
        return ",".join(gpus)
    out, nums = [], sorted(int(g) for g in gpus)
    start = prev = nums[0]
    for n in [*nums[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(f"{start}-{prev}" if prev - start >= 2 else ",".join(map(str, range(start, prev + 1))))
        if n is not None:
            start = prev = n
    return ",".join(out)


def parse_filter(text: str) -> tuple[set[str], list[str]]:
    """``status:failed dwc`` → ({'failed'}, ['dwc']): status tokens match exactly, other words as substrings."""
    statuses, words = set(), []
    for tok in text.lower().split():
        if tok.startswith(("status:", "s:")):
            statuses.update(x for x in tok.split(":", 1)[1].split(",") if x)
        else:
            words.append(tok)
    return statuses, words


class DashboardScreen(Screen):
    BINDINGS = [
        Binding("question_mark", "help", "Help"),
        Binding("q", "queue", "Queue"),
        Binding("c", "cancel", "Cancel"),
        Binding("r", "resume", "Resume"),
        Binding("d", "delete", "Delete"),
        Binding("enter", "open", "Open", show=False),
        Binding("l", "log", "Log"),
        Binding("b", "browse", "Browse"),
        Binding("C", "compare", "Compare"),
        Binding("slash", "filter", "Filter"),
        Binding("space", "mark", "Mark"),
        Binding("s", "sort_next", "Sort"),
        Binding("S", "sort_reverse", "Reverse", show=False),
        Binding("escape", "clear_filter", "Clear", show=False),
    ]
    # the footer: at 80 columns the priority-1/2 keys fit beside `? help` and `^q quit`; the help screen has all
    KEYS = (
        ("q", "queue", 1), ("c", "cancel", 1), ("r", "resume", 2), ("d", "delete", 2), ("C", "compare", 2),
        ("/", "filter", 2), ("b", "browse", 3), ("enter", "open", 3), ("space", "mark", 4), ("l", "log", 4),
        ("s", "sort", 5), ("^p", "palette", 5),
    )  # fmt: skip
    INPUT_KEYS = (("enter", "apply the filter", 1), ("esc", "clear it", 1))
    PALETTE = (
        ("Queue an experiment", "pick an experiment, edit --set overrides, queue its runs (q)", "queue"),
        ("Cancel runs", "cancel the marked runs, or the selected one (c)", "cancel"),
        ("Resume runs", "re-queue failed / cancelled / lost runs from last.pt (r)", "resume"),
        ("Delete runs", "hide the marked or selected runs; files are kept (d)", "delete"),
        ("Open run", "config, environment, events, log, evaluations, checkpoints (enter)", "open"),
        ("Show log", "the selected run's log, following the tail (l)", "log"),
        ("Browse queries", "per-query rankings of the selected run (b)", "browse"),
        ("Compare runs", "the marked runs side by side (C)", "compare"),
        ("Filter runs", "by text and status:NAME (/)", "filter"),
        ("Mark run", "mark / unmark the selected run (space)", "mark"),
        ("Help", "keys and screens (?)", "help"),
    )

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[int, dict] = {}
        self.shown_ids: list[int] = []
        self.marked: set[int] = set()
        self.filter_text = ""
        self.sort_key = "id"
        self.sort_reverse = False
        self.focus_version: tuple | None = None
        self._shown_cells: dict[int, tuple] = {}
        self.column_keys: tuple[str, ...] = ()
        # id → Curves, once textual-plot is imported (after the first table is painted)
        self.plots: dict[str, object] = {}
        self._plots_started = False

    def compose(self) -> ComposeResult:
        yield Static("dwc — reading the registry…", id="summary")
        yield Static("", id="error")
        yield Input(
            placeholder="filter: words, status:running,failed — enter to apply, esc to clear", id="filter"
        )
        table = DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        self._set_columns(table, self.app.size.width)
        yield table
        with Horizontal(id="detail"):
            for plot_id, title, _short in PLOTS:
                with Vertical(id=f"{plot_id}-box", classes="plot-box"):
                    yield Static(Text(f"{title} …", style="dim"), classes="plot-title")
            with Vertical(id="side"):
                yield Static("", id="phase")
                yield Static("", id="phase-error")
                yield Static("", id="log-tail")
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        self.query_one("#error", Static).display = False
        self.query_one("#runs", DataTable).focus()

    @property
    def narrow(self) -> bool:
        """Below NARROW columns: no method and dataset columns, cells cut to rows.NARROW_MAX."""
        return "method" not in self.column_keys

    def _set_columns(self, table: DataTable, width: int) -> bool:
        cols = visible_columns(width)
        keys = tuple(k for k, _ in cols)
        if keys == self.column_keys:
            return False
        table.clear(columns=True)
        self.column_keys = keys
        table.cell_padding = 0  # one space before each cell instead of one on both sides (_cells)
        for key, label in cols:
            table.add_column(f" {label}", key=key)
        return True

    def on_resize(self, event) -> None:
        table = self.query_one("#runs", DataTable)
        if self._set_columns(table, event.size.width):
            self._rebuild(table, self.shown_ids)
        if self.app.last_snapshot is not None:
            self._summary(self.app.last_snapshot)

    def _start_plots(self) -> None:
        """Import the plot widget once the first table is painted (not competing with the first poll)."""
        if not self._plots_started:
            self._plots_started = True
            self.call_after_refresh(
                lambda: self.run_worker(_load_curves, thread=True, group="plots", exit_on_error=False)
            )

    async def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "plots" or not self._live():
            return
        if event.state == WorkerState.SUCCESS:
            curves = event.worker.result
            plots = {}
            for plot_id, title, short in PLOTS:
                box = self.query_one(f"#{plot_id}-box", Vertical)
                box.query_one(".plot-title", Static).update(Text(title, style="bold"))
                plots[plot_id] = plot = curves(title, short, id=plot_id)
                await box.mount(plot)
            self.plots = plots  # only now: a plot fed before it is mounted draws nothing
            self.focus_version = None
            freeze_startup_objects()
            if self.app.last_snapshot is not None:
                self.call_after_refresh(self._apply_focus, self.app.last_snapshot.focus)
        elif event.state == WorkerState.ERROR:  # no plots: the rest of the dashboard still works
            for plot_id, _title, _short in PLOTS:
                self.query_one(f"#{plot_id}-box", Vertical).query_one(Static).update(
                    Text(f"plots unavailable: {event.worker.error}", style="red")
                )

    def _live(self) -> bool:
        """Still on screen with its widgets (a poll result can arrive while the app is shutting down)."""
        return self.is_attached and self.is_running and bool(self.query("#runs"))

    # ------------------------------------------------------------------------------------------ snapshots
    def apply(self, snap: Snapshot) -> None:
        if not self._live():
            return
        table = self.query_one("#runs", DataTable)
        self.show_error(None)
        for rid in snap.removed:
            self.rows.pop(rid, None)
            self.marked.discard(rid)
        self.rows.update(snap.rows)
        if snap.full:
            for rid in set(self.rows) - set(snap.rows):
                del self.rows[rid]
        wanted = self._ordered(self._matching())
        if wanted != self.shown_ids:
            self._rebuild(table, wanted)
        else:
            for rid in snap.rows:
                if rid in self._shown_cells:
                    self._update_row(table, rid)
        self._summary(snap)
        self._apply_focus(snap.focus)
        self._start_plots()
        if not self.rows and snap.error is None:
            self.query_one("#phase", Static).update("no runs yet:\npress q to queue\nan experiment")

    def show_error(self, message: str | None) -> None:
        if not self._live():
            return
        box = self.query_one("#error", Static)
        box.display = bool(message)
        box.update(Text(message or "", style="bold red"))
        if message:
            self._start_plots()

    def _summary(self, snap: Snapshot) -> None:
        """One line, the counts first; below NARROW columns without the "dwc" and the double spaces (with marks
        and 8 GPUs it still fits 80 columns); what does not fit is cut with "…" (the filter, shown above anyway)."""
        wide = self.app.size.width >= NARROW
        parts = [Text("dwc ", style="bold")] if wide else []
        for i, status in enumerate(COUNTED):
            parts += [
                Text(("  " if wide else " ") if i else "") + Text(f"{status} "),
                Text(str(snap.counts.get(status, 0)), style=status_style(status)),
            ]
        if self.marked:
            parts.append(Text(f" │ marked {len(self.marked)}", style="bold"))
        parts.append(Text(f" │ workers {snap.workers} │ GPUs {gpu_list(snap.gpus)}"))
        if self.filter_text:
            parts.append(Text(f" │ filter: {self.filter_text}", style="italic"))
        self.query_one("#summary", Static).update(Text.assemble(*parts))

    def _matching(self) -> list[int]:
        statuses, words = parse_filter(self.filter_text)
        out = []
        for rid, row in self.rows.items():
            if statuses and row["status"] not in statuses:
                continue
            if any(w not in row["search"] for w in words):
                continue
            out.append(rid)
        return out

    def _ordered(self, ids: list[int]) -> list[int]:
        key = self.sort_key
        return sorted(ids, key=lambda rid: (self.rows[rid]["sort"][key], rid), reverse=self.sort_reverse)

    def _cells(self, rid: int) -> tuple:
        cells = dict(self.rows[rid]["narrow" if self.narrow else "cells"])
        if rid in self.marked:
            cells["id"] = Text(f"{MARK}{rid}", style="bold reverse", justify="right")
        # one space between columns (cell_padding 1 would put one on both sides: 11 columns more)
        return tuple(Text.assemble(" ", cells[k], justify=cells[k].justify) for k in self.column_keys)

    def _rebuild(self, table: DataTable, ids: list[int]) -> None:
        current = self.selected_id()
        table.clear()
        self._shown_cells = {}
        for rid in ids:
            cells = self._cells(rid)
            table.add_row(*cells, key=str(rid))
            self._shown_cells[rid] = tuple(c.plain + str(c.style) for c in cells)
        self.shown_ids = ids
        if current in self._shown_cells:
            table.move_cursor(row=table.get_row_index(str(current)), animate=False)
        self._refocus()

    def _update_row(self, table: DataTable, rid: int) -> None:
        cells = self._cells(rid)
        sig = tuple(c.plain + str(c.style) for c in cells)
        old = self._shown_cells.get(rid)
        for i, key in enumerate(self.column_keys):
            if old is None or old[i] != sig[i]:
                table.update_cell(str(rid), key, cells[i], update_width=True)  # a cell that grew is not cut
        self._shown_cells[rid] = sig

    # --------------------------------------------------------------------------------------------- detail
    def selected_id(self) -> int | None:
        table = self.query_one("#runs", DataTable)
        if not self.shown_ids or table.cursor_row is None or table.cursor_row >= len(self.shown_ids):
            return None
        try:
            key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
        except Exception:
            return None
        return int(key) if key is not None else None

    def targets(self) -> list[int]:
        """The marked runs, or the selected one."""
        if self.marked:
            return sorted(self.marked)
        rid = self.selected_id()
        return [rid] if rid is not None else []

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._refocus()

    def _refocus(self) -> None:
        rid = self.selected_id()
        if rid != self.app.poller.focus_id:
            self.app.poller.set_focus(rid)
            self.focus_version = None
            self._show_phase(rid)
            self.app.poll_soon()

    def _apply_focus(self, focus: Focus | None) -> None:
        if not self._live():
            return
        rid = self.selected_id()
        self._show_phase(rid)
        if focus is None or focus.run_id != rid:
            if rid is None:
                for plot in self.plots.values():
                    plot.clear()
            return
        version = (focus.run_id, focus.version)
        if version != self.focus_version and self.plots:
            self.focus_version = version
            self.plots["loss-plot"].show({"loss": focus.loss})
            recall = {k: v for k, v in focus.recall.items() if k.startswith(("R@", "avg/R@"))}
            self.plots["recall-plot"].show(recall)
            for plot_id, plot in self.plots.items():
                self.query_one(f"#{plot_id}-box .plot-title", Static).update(plot.title_text())
        lines = map(log_message, focus.log_tail[-12:])  # without their clock times: the pane is narrow
        tail = Text("\n".join(lines), style="dim", no_wrap=True, overflow="ellipsis")
        self.query_one("#log-tail", Static).update(tail)

    def _show_phase(self, rid: int | None) -> None:
        row = self.rows.get(rid) if rid is not None else None
        if row is None:
            return
        p = row["progress"]
        # the side pane is ~27 columns at 80: one fact per line, each cut with "…" rather than wrapped
        lines = [
            Text.assemble(
                (f"#{rid} {row['experiment']} ", "bold"), (row["status"], status_style(row["status"]))
            ),
            Text(row["what"], style="dim"),
        ]
        if row.get("slurm"):
            lines.append(Text(f"slurm {row['slurm']}", style="dim"))
        if row["variant"]:
            lines.append(Text(" ".join(f"{k}={v}" for k, v in row["variant"].items()), style="dim"))
        if row["status"] in ("running", "starting"):
            phase = p.get("phase") or row["status"]
            detail = f"phase {phase}  epoch {row['epoch']}/{row['epochs']}"
            if phase == "train" and p.get("epoch_steps"):
                detail += f"  step {p.get('epoch_step', 0)}/{p['epoch_steps']}"
            if phase == "cache" and p.get("cache_total"):
                detail += f"  {p.get('cache_done', 0)}/{p['cache_total']} images"
            lines.append(Text(detail))
            if p.get("it_s"):
                lines.append(Text(f"{p['it_s']:.1f} it/s  {int(row['frac'] * 100)}%"))
        self.query_one("#phase", Static).update(Text("\n").join(lines))
        # the error wraps (up to 3 lines): more of the message matters than of the facts above
        self.query_one("#phase-error", Static).update(Text(str(row["error"] or ""), style="red"))

    # -------------------------------------------------------------------------------------------- actions
    def action_queue(self) -> None:
        from dwc_tui.app.screens.queue import QueueScreen

        self.app.push_screen(QueueScreen())

    def action_cancel(self) -> None:
        ids = self.targets()
        if ids:
            from dwc_tui.app import actions

            self.app.act(actions.cancel, self.app.registry_path, ids)

    def action_resume(self) -> None:
        ids = self.targets()
        if ids:
            from dwc_tui.app import actions

            self.app.act(actions.resume, self.app.registry_path, ids)

    def action_delete(self) -> None:
        ids = self.targets()
        if not ids:
            return
        from dwc_tui.app.screens.confirm import ConfirmScreen

        def done(ok: bool | None) -> None:
            if ok:
                from dwc_tui.app import actions

                self.marked.difference_update(ids)
                self.app.act(actions.delete, self.app.registry_path, ids)

        names = ", ".join(f"#{i}" for i in ids)
        self.app.push_screen(
            ConfirmScreen(f"Delete {escape(names)}? They are hidden from lists; their files are kept."), done
        )

    def action_open(self, tab: str = "overview") -> None:
        rid = self.selected_id()
        if rid is None:
            return
        from dwc_tui.app.screens.run import RunScreen

        self.app.push_screen(RunScreen(rid, tab=tab))

    def action_log(self) -> None:
        self.action_open("log")

    def action_browse(self) -> None:
        rid = self.selected_id()
        if rid is None:
            return
        from dwc_tui.app.screens.browse import BrowseScreen

        others = [i for i in sorted(self.marked) if i != rid]
        self.app.push_screen(BrowseScreen(rid, against=others[0] if others else None))

    def action_compare(self) -> None:
        ids = self.targets()
        if len(ids) < 2:
            self.app.notify("mark two or more runs with space, then press C", severity="warning")
            return
        from dwc_tui.app.screens.compare import CompareScreen

        self.app.push_screen(CompareScreen(ids))

    def action_help(self) -> None:
        self.app.action_help()

    def action_mark(self) -> None:
        rid = self.selected_id()
        if rid is None:
            return
        self.marked.symmetric_difference_update({rid})
        self._update_row(self.query_one("#runs", DataTable), rid)
        table = self.query_one("#runs", DataTable)
        table.action_cursor_down()
        if self.app.last_snapshot is not None:
            self._summary(self.app.last_snapshot)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.value = self.filter_text
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            self.set_filter(event.value.strip())

    def set_filter(self, text: str) -> None:
        self.filter_text = text
        box = self.query_one("#filter", Input)
        box.display = bool(text)
        self.query_one("#runs", DataTable).focus()
        self._rebuild(self.query_one("#runs", DataTable), self._ordered(self._matching()))
        if self.app.last_snapshot is not None:
            self._summary(self.app.last_snapshot)

    def action_clear_filter(self) -> None:
        self.set_filter("")

    def sort_by(self, key: str, reverse: bool | None = None) -> None:
        self.sort_key = key
        if reverse is not None:
            self.sort_reverse = reverse
        self._rebuild(self.query_one("#runs", DataTable), self._ordered(self._matching()))
        self.app.notify(
            f"sorted by {dict(COLUMNS)[key]}{' (descending)' if self.sort_reverse else ''}", timeout=2
        )

    def action_sort_next(self) -> None:
        keys = self.column_keys
        i = keys.index(self.sort_key) if self.sort_key in keys else -1
        self.sort_by(keys[(i + 1) % len(keys)])

    def action_sort_reverse(self) -> None:
        self.sort_by(self.sort_key, not self.sort_reverse)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = event.column_key.value
        self.sort_by(key, not self.sort_reverse if key == self.sort_key else False)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()
