"""`?`: the keys of every screen."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
[b]dwc tui[/b] — every run of this project, live. Runs train in their own
sessions: quitting or losing the connection never stops them. The foot
of each screen shows the keys that fit its width; all of them are here.

[b]Dashboard[/b]
  ↑ ↓ pgup pgdn  move             [b]enter[/b]  open the selected run
  [b]space[/b]  mark / unmark          [b]q[/b]  queue an experiment
  [b]c[/b]  cancel marked / selected   [b]r[/b]  resume (re-queue from last.pt)
  [b]d[/b]  delete (asks first)        [b]l[/b]  log of the selected run
  [b]b[/b]  browse per-query results (with a marked run: --against)
  [b]C[/b]  compare the marked runs    [b]/[/b]  filter: words, status:failed,lost
  [b]s[/b]  sort by the next column    [b]S[/b]  reverse        [b]esc[/b]  clear filter
  Recall@K curves: [b]o[/b] R@1  [b]+[/b] R@5  [b]x[/b] R@10  [b]*[/b] R@50 (marks also without colour)

[b]Everywhere[/b]
  [b]?[/b]  this help   [b]ctrl+p[/b]  command palette (every action, sort by any column)
  [b]esc[/b]  back      [b]ctrl+q[/b]  quit

[b]Queue[/b]   pick an experiment, type overrides (key=value …), enter queues;
        ctrl+w starts a detached worker when none is alive.
[b]Run[/b]     o overview · e evals · v events · l log · f follow · k checkpoints
[b]Browse[/b]  m all / misses / hits · / text · > rank worse than N
        < rank better than M (with > a range: N < rank < M)"""


class HelpScreen(ModalScreen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("question_mark", "app.pop_screen", "Back", show=False),
        Binding("q", "app.pop_screen", "Back", show=False),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(HELP, id="help-text")
