"""Per-query results of a run (``dwc_core.results.browse``): filters (all / hits / misses, rank range: worse than N
and better than M, text) and the --against view of two runs. Each query as text: reference, modification text,
target, top-K with scores and hits marked."""

from __future__ import annotations

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import Worker, WorkerState

from dwc_tui.app import data
from dwc_tui.app.widgets.keybar import KeyBar

MODES = ("all", "misses", "hits")
ONE_LINE = {"no_wrap": True, "overflow": "ellipsis"}  # a query in the list: its whole text is in the detail


def parse_rank(text: str, bound: str = ">") -> int | None:
    """The number in a rank box ("5", or "> 5" in the worse-than box, "< 5" in the better-than box); None when
    empty."""
    text = text.strip().lstrip(bound).strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 0:
        what = "worse" if bound == ">" else "better"
        raise ValueError(
            f"rank filter {text!r}: write a whole number N (queries whose target ranks {what} than N)."
        )
    return int(text)


class BrowseScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("m", "mode", "All/misses/hits"),
        Binding("slash", "focus_text", "Text"),
        Binding("greater_than_sign", "focus_rank", "Rank >"),
        Binding("less_than_sign", "focus_rank_below", "Rank <"),
    ]
    # the two rank boxes together are a range: worse than N and better than M
    KEYS = (
        ("esc", "back", 0), ("m", "all/misses/hits", 1), ("/", "text", 1), (">", "rank >", 1), ("<", "rank <", 1),
    )  # fmt: skip
    INPUT_KEYS = (("enter", "apply", 1), ("esc", "back", 0))

    def __init__(self, run_id: int, against: int | None = None):
        super().__init__()
        self.run_id = run_id
        self.against = against
        self.mode = "all"
        self.view = None
        self.items: list = []
        self.shown_filters: dict = {}  # the filters of the view being loaded or shown

    def compose(self) -> ComposeResult:
        what = f"#{self.run_id} against #{self.against}" if self.against else f"#{self.run_id}"
        yield Static(f"browse {what} — loading…", id="browse-title")
        with Horizontal(id="browse-filters"):
            yield Input(placeholder="text in the modification", id="browse-grep")
            yield Input(placeholder="rank worse than N", id="browse-rank")
            yield Input(placeholder="rank better than N", id="browse-rank-below")
        with Horizontal(id="browse-body"):
            yield OptionList(id="browse-list")
            with VerticalScroll(id="browse-detail"):
                yield Static("", id="browse-query")
        yield KeyBar()

    def on_mount(self) -> None:
        if self.against is not None:
            self.query_one("#browse-filters").display = False
        self.reload()
        self.query_one("#browse-list", OptionList).focus()

    # ---------------------------------------------------------------------------------------------- loading
    def filters(self) -> dict:
        f: dict = {"misses": self.mode == "misses", "hits": self.mode == "hits"}
        grep = self.query_one("#browse-grep", Input).value.strip()
        if grep:
            f["grep"] = grep
        rank = parse_rank(self.query_one("#browse-rank", Input).value)
        if rank is not None:
            f["rank_above"] = rank
        below = parse_rank(self.query_one("#browse-rank-below", Input).value, "<")
        if below is not None:
            f["rank_below"] = below
        return f

    def reload(self, quiet: bool = False) -> None:
        try:
            f = self.filters()
        except ValueError as exc:
            if not quiet:
                self.app.notify(str(exc), severity="error")
            return
        self.shown_filters = f
        path, rid, other = self.app.registry_path, self.run_id, self.against
        self.run_worker(
            lambda: data.browse_view(path, rid, other, f), thread=True, group="browse", exclusive=True,
            exit_on_error=False,
        )  # fmt: skip

    def action_mode(self) -> None:
        self.mode = MODES[(MODES.index(self.mode) + 1) % len(MODES)]
        self.reload()

    def action_focus_text(self) -> None:
        self.query_one("#browse-grep", Input).focus()

    def action_focus_rank(self) -> None:
        self.query_one("#browse-rank", Input).focus()

    def action_focus_rank_below(self) -> None:
        self.query_one("#browse-rank-below", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        # a number filters as it is typed; a wrong one is named on enter
        if event.input.id in ("browse-rank", "browse-rank-below"):
            self.reload(quiet=True)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.reload()
        self.query_one("#browse-list", OptionList).focus()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if not self.is_attached:  # the app is shutting down: this screen's widgets may be gone
            return
        if event.worker.group != "browse":
            return
        if event.state == WorkerState.ERROR:
            msg = getattr(event.worker.error, "message", str(event.worker.error))
            self.query_one("#browse-title", Static).update(Text(msg, style="bold red"))
        elif event.state == WorkerState.SUCCESS:
            self.show(event.worker.result)

    # ---------------------------------------------------------------------------------------------- showing
    def show(self, view) -> None:
        self.view = view
        ol = self.query_one("#browse-list", OptionList)
        ol.clear_options()
        if self.against is not None:
            c = view.counts
            self.query_one("#browse-title", Static).update(
                Text.assemble(
                    (f"#{self.run_id} against #{self.against}", "bold"),
                    f"  within top {view.k}: both {c['both']} · only #{self.run_id} {c['a_only']} · "
                    f"only #{self.against} {c['b_only']} · neither {c['neither']}",
                )
            )
            self.items = [("A", a, b) for a, b in view.a_only] + [("B", a, b) for a, b in view.b_only]
            for side, a, _b in self.items:
                who = self.run_id if side == "A" else self.against
                ol.add_option(Option(Text(f"only #{who}  {a.eval_set}:{a.qidx} {a.text}", **ONE_LINE)))
        else:
            self.query_one("#browse-title", Static).update(
                Text.assemble(
                    (f"browse #{self.run_id} {view.run['experiment']}", "bold"),
                    f"  {view.matched}/{view.total} queries ",
                    (f"[{filters_text(self.mode, self.shown_filters)}]", "bold"),
                    f"  evaluation {view.evaluation['id']} (epoch {view.evaluation['epoch']})",
                )
            )
            self.items = [("", q, None) for q in view.queries]
            for _, q, _ in self.items:
                mark = "✓" if q.within(view.k) else "✗"
                rank = q.target_rank if q.target_rank is not None else ">K"
                ol.add_option(Option(Text(f"{mark} r{rank:<4} {q.eval_set}:{q.qidx} {q.text}", **ONE_LINE)))
        if self.items:
            ol.highlighted = 0
        else:
            self.query_one("#browse-query", Static).update("no query matches these filters")

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option_index >= len(self.items):
            return
        _side, a, b = self.items[event.option_index]
        parts = [describe(a, f"#{self.run_id}")]
        if b is not None:
            parts.append(describe(b, f"#{self.against}"))
        if len(parts) > 1:
            parts.insert(1, Text(""))
        self.query_one("#browse-query", Static).update(Group(*parts))


def filters_text(mode: str, f: dict) -> str:
    """The active filters in the title: "misses · text 'red' · rank > 5", "all · 5 < rank < 20" (the mode alone when
    nothing else)."""
    parts = [mode]
    if f.get("grep"):
        parts.append(f"text {f['grep']!r}")
    above, below = f.get("rank_above"), f.get("rank_below")
    if above is not None and below is not None:
        parts.append(f"{above} < rank < {below}")
    elif above is not None:
        parts.append(f"rank > {above}")
    elif below is not None:
        parts.append(f"rank < {below}")
    return " · ".join(parts)


def describe(q, who: str) -> Group:
    """One query as text: reference, modification, target(s), top-K with scores, hits marked (a long caption
    wraps under itself, not under the rank and score)."""
    ref = escape(q.ref_display or q.ref_id)
    targets = ", ".join(escape(d or t) for t, d in zip(q.target_ids, q.target_displays, strict=False))
    rank = q.target_rank if q.target_rank is not None else "not in the stored top-K"
    lines = [
        f"[b]{who}[/b]  query {q.eval_set}:{q.qidx}   target rank [b]{rank}[/b]",
        f"[b]reference[/b] {ref}",
        f"[b]modification[/b] {escape(q.text)}",
        f"[b]target[/b] {targets}",
        "[b]top-K[/b]",
    ]
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(justify="right", no_wrap=True)
    grid.add_column(ratio=1)
    for item in q.topk:
        mark = Text(" HIT ", style="reverse") if item.get("hit") else Text("     ")
        label = Text(str(item.get("display") or item.get("id")))
        grid.add_row(mark, f"{item['rank']:>3}. {float(item['score']):.3f}", label)
    return Group(Text.from_markup("\n".join(lines)), grid)
