"""`?`: the keys of every screen."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
[b]dwc tui[/b] — every run in this project, live. Runs train in their own sessions: quitting never stops them.

[b]Dashboard[/b]
  ↑/↓ pgup/pgdn  move            [b]enter[/b]  open the run (config, env, events, log, evaluations)
  [b]space[/b]  mark / unmark        [b]q[/b]  queue an experiment      [b]c[/b]  cancel marked / selected
  [b]r[/b]  resume (re-queue)        [b]d[/b]  delete (asks first)      [b]l[/b]  log of the selected run
  [b]b[/b]  browse per-query results (a marked second run: the --against view)
  [b]C[/b]  compare the marked runs  [b]/[/b]  filter: words, status:running,failed   [b]esc[/b]  clear
  [b]s[/b]  sort by the next column  [b]S[/b]  reverse the order

[b]Everywhere[/b]
  [b]?[/b]  this help    [b]ctrl+p[/b]  command palette (every action, sort by any column)
  [b]esc[/b]  back        [b]ctrl+q[/b]  quit

[b]Queue[/b]  pick an experiment, type overrides (key=value …), enter queues; [b]w[/b] starts a worker.
[b]Run[/b]  tabs: overview, evaluations, events, log (follows the tail), checkpoints.
[b]Browse[/b]  filters: all / hits / misses, rank range, text.
"""


class HelpScreen(ModalScreen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("question_mark", "app.pop_screen", "Back", show=False),
        Binding("q", "app.pop_screen", "Back", show=False),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(HELP, id="help-text")
