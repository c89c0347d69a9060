"""Curves for the detail pane: textual-plot's PlotWidget fed with downsampled series."""

from __future__ import annotations

from rich.text import Text
from textual_plot import HiResMode, PlotWidget

MAX_POINTS = 240  # a terminal plot is at most a few hundred braille columns wide
COLOURS = (
    "bright_cyan",
    "bright_yellow",
    "bright_green",
    "bright_magenta",
    "bright_red",
    "bright_blue",
    "white",
)


def downsample(
    xs: list[float], ys: list[float], max_points: int = MAX_POINTS
) -> tuple[list[float], list[float]]:
    """Bucket means down to at most ``max_points`` points (the last point is kept exactly)."""
    n = len(xs)
    if n <= max_points:
        return list(xs), list(ys)
    size = n / max_points
    out_x, out_y = [], []
    for b in range(max_points):
        lo, hi = int(b * size), max(int((b + 1) * size), int(b * size) + 1)
        out_x.append(sum(xs[lo:hi]) / (hi - lo))
        out_y.append(sum(ys[lo:hi]) / (hi - lo))
    out_x[-1], out_y[-1] = xs[-1], ys[-1]
    return out_x, out_y


class Curves(PlotWidget):
    """A small plot of named series; ``show`` replaces them all."""

    DEFAULT_CSS = "Curves { height: 1fr; }"

    def __init__(self, title: str, short: str | None = None, **kwargs):
        super().__init__(allow_pan_and_zoom=False, **kwargs)
        self.title = title
        self.short = short or title  # after the series' names, when there are several
        self.series_names: list[str] = []

    def on_mount(self) -> None:
        super().on_mount()
        self.margin_left = 6
        self.margin_bottom = 2
        self.margin_top = 0
        self.border_title = self.title

    def show(self, series: dict[str, tuple[list[float], list[float]]]) -> None:
        self.clear()
        self.series_names = []
        for i, (name, (xs, ys)) in enumerate(series.items()):
            if not xs:
                continue
            dx, dy = downsample(xs, ys)
            if len(dx) == 1:  # a single point: draw a flat segment so it is visible
                dx, dy = [dx[0] - 0.01, dx[0]], [dy[0], dy[0]]
            self.plot(dx, dy, line_style=COLOURS[i % len(COLOURS)], hires_mode=HiResMode.BRAILLE, label=name)
            self.series_names.append(name)
        ys_all = [y for name in self.series_names for y in series[name][1]]
        if ys_all and max(ys_all) - min(ys_all) < 1e-9:  # a flat series: give the axis some room
            pad = max(abs(ys_all[0]) * 0.1, 0.1)
            self.set_ylimits(ys_all[0] - pad, ys_all[0] + pad)
        else:
            self.set_ylimits(None, None)
        xs_all = [x for name in self.series_names for x in series[name][0]]
        if xs_all:
            lo, hi = min(xs_all), max(xs_all)
            self.set_xticks(sorted({round(lo, 1), round((lo + hi) / 2, 1), round(hi, 1)}))
        # an overlaid legend covers the curves of a terminal-sized plot: the names go in the title line instead
        self.show_legend(is_visible=False)

    def title_text(self) -> Text:
        """The title; with several series, each name in its line's colour instead ("R@1 R@5 R@10 R@50 · test")."""
        if len(self.series_names) < 2:
            return Text(self.title, style="bold")
        text = Text()
        for i, name in enumerate(self.series_names):
            text.append(name, style=f"bold {COLOURS[i % len(COLOURS)]}")
            text.append(" ")
        text.append(f"· {self.short}", style="dim")
        return text
