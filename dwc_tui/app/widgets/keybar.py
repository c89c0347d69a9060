"""The footer line: a screen's keys, as many as the terminal's width holds, the most important ones always.

Textual's own Footer lays out every shown binding and cuts the line at the right edge, so at 80 columns the
dashboard lost quit and help. Here each screen lists its keys with a priority; the widest set that fits is shown in
the listed order, and `?` (always shown, as is `^q`) opens the help screen with all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widget import Widget
from textual.widgets import Input

Key = tuple[
    str, str, int
]  # what to press, what it does, priority: 0 always shown, higher numbers dropped first
SEPARATOR = "  "
ESSENTIAL = (("?", "help", 0), ("^q", "quit", 0))


def line_width(keys: Sequence[Key]) -> int:
    """Columns the keys take on the bar (one space of padding at each end)."""
    if not keys:
        return 0
    return sum(len(k) + 1 + len(label) for k, label, _ in keys) + len(SEPARATOR) * (len(keys) - 1) + 2


def fit(keys: Sequence[Key], width: int) -> list[Key]:
    """The keys that fit in ``width`` columns: the highest priority number goes first (the last listed of them
    first), priority 0 never; the order of the rest is kept."""
    shown = list(keys)
    while line_width(shown) > width:
        worst = max(p for *_, p in shown)
        if worst == 0:
            break
        del shown[max(i for i, k in enumerate(shown) if k[2] == worst)]
    return shown


class KeyBar(Widget):
    """One line at the foot of a screen. The screen gives its keys as ``KEYS`` and, while a text box has the
    focus, ``INPUT_KEYS`` (what enter and esc do there); both end with :data:`ESSENTIAL`."""

    COMPONENT_CLASSES = {"keybar--key"}
    DEFAULT_CSS = """
    KeyBar {
        dock: bottom;
        height: 1;
        background: $footer-background;
        color: $footer-description-foreground;
    }
    KeyBar > .keybar--key {
        color: $footer-key-foreground;
        text-style: bold;
    }
    """

    def on_mount(self) -> None:
        self.watch(self.screen, "focused", lambda _focused: self.refresh(), init=False)

    def keys(self) -> list[Key]:
        screen = self.screen
        typing = isinstance(screen.focused, Input)
        own = getattr(screen, "INPUT_KEYS", None) if typing else None
        if own is None:
            own = getattr(screen, "KEYS", ())
        return [*own, *ESSENTIAL]

    def shown(self) -> list[Key]:
        return fit(self.keys(), self.size.width)

    def render(self) -> Text:
        key_style = self.get_component_rich_style("keybar--key", partial=True)
        text = Text(" ", no_wrap=True, overflow="crop")
        for i, (key, label, _) in enumerate(self.shown()):
            if i:
                text.append(SEPARATOR)
            text.append(key, style=key_style)
            text.append(f" {label}")
        return text
