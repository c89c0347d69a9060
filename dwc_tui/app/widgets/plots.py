"""Curves for the detail pane: textual-plot's PlotWidget fed with downsampled series.

Several series (R@1/5/10/50) are told apart by colour and, for NO_COLOR and 16-colour terminals, by a mark of
their own ("o", "+", "x", "*") drawn over their line at up to MAX_MARKS points; the title says which mark is which
("R@K o1 +5 x10 *50 · test")."""

from __future__ import annotations

import math

from rich.text import Text
from textual_plot import HiResMode, PlotWidget
from textual_plot.axis_formatter import NumericAxisFormatter

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
MARKS = ("o", "+", "x", "*", "#", "%", "@")  # ASCII: one column wide in every terminal and font
MAX_MARKS = 12  # marks per series: enough to follow a line, few enough not to hide it
EDGE_ROOM = 0.02  # of the span, added above and right of the data when marks are drawn


def mark_points(xs: list[float], ys: list[float], most: int = MAX_MARKS) -> tuple[list[float], list[float]]:
    """Up to ``most`` of the points, spread evenly, the first and the last among them."""
    n = len(xs)
    if n <= most:
        return list(xs), list(ys)
    idx = sorted({round(j * (n - 1) / (most - 1)) for j in range(most)})
    return [xs[i] for i in idx], [ys[i] for i in idx]


def epoch_axis(lo: float, hi: float, most: int = 4) -> tuple[float, float, list[float]]:
    """The x range and ticks of an epoch axis: ticks on whole epochs only (at most ``most``, every 1, 2, 5, 10, 20…
    epochs), so each label is its position ("0 1 2 3", never a middle 1.5 labelled "2", never "-0"). A range with
    fewer than two whole epochs inside is widened to the whole epochs around it (a lone point stays as it is)."""
    first, last = math.ceil(lo - 1e-9), math.floor(hi + 1e-9)
    if (
        first >= last and hi - lo > 0.05
    ):  # under two whole epochs inside (a loss from 0.5 to 1): the epochs around
        lo, hi = math.floor(lo + 1e-9), math.ceil(hi - 1e-9)
        first, last = lo, hi
    for step in (m * 10**e for e in range(16) for m in (1, 2, 5)):
        start = -(-first // step) * step  # on a multiple of the step: 0 5 10, not 1 6 11
        if (last - start) // step + 1 <= most:
            break
    ticks = [float(t) + 0.0 for t in range(start, last + 1, step)]  # + 0.0: never -0.0
    return lo, hi, ticks


class EpochFormatter(NumericAxisFormatter):
    """Whole-epoch labels: "3", not "3.0" nor "-0"."""

    def get_labels_for_ticks(self, ticks):
        return [str(round(t) + 0) for t in ticks]


def legend(names: list[str]) -> tuple[str, list[str]]:
    """("R@K", ["1", "5", "10", "50"]) for names that differ only in K; else ("", the names)."""
    heads = {n.rpartition("@")[0] for n in names}
    if len(heads) == 1 and all("@" in n for n in names):
        return f"{heads.pop()}@K", [n.rpartition("@")[2] for n in names]
    return "", list(names)


def downsample(
    xs: list[float], ys: list[float], max_points: int = MAX_POINTS
) -> tuple[list[float], list[float]]:
    """At most ``max_points`` points: bucket means, with the first and the last point and the lowest and the highest
    value kept exactly (a loss spike, or the best value, is not averaged away; the curve spans the data)."""
    n = len(xs)
    if n <= max_points:
        return list(xs), list(ys)
    finite = [i for i in range(n) if math.isfinite(ys[i])]
    extremes = {min(finite, key=ys.__getitem__), max(finite, key=ys.__getitem__)} if finite else set()
    keep = sorted(extremes - {0, n - 1})  # the ends are kept anyway
    buckets = max_points - len(keep)
    size = n / buckets
    points = []
    for b in range(buckets):
        lo, hi = int(b * size), max(int((b + 1) * size), int(b * size) + 1)
        sx, sy, count = sum(xs[lo:hi]), sum(ys[lo:hi]), hi - lo
        # the kept extremes stand alone: they do not also lift (or sink) their bucket's mean
        inside = [i for i in extremes if lo <= i < hi]
        if inside and count > len(inside):
            sx -= sum(xs[i] for i in inside)
            sy -= sum(ys[i] for i in inside)
            count -= len(inside)
        points.append((sx / count, sy / count))
    points[0], points[-1] = (xs[0], ys[0]), (xs[-1], ys[-1])
    points += [(xs[i], ys[i]) for i in keep]
    points.sort(key=lambda pt: pt[0])  # an extreme between the means of its bucket's neighbours
    return [x for x, _ in points], [y for _, y in points]


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
        self.set_x_formatter(EpochFormatter())
        self.border_title = self.title

    def show(self, series: dict[str, tuple[list[float], list[float]]]) -> None:
        self.clear()
        self.series_names = []
        drawn = []
        for name, (xs, ys) in series.items():
            if not xs:
                continue
            dx, dy = downsample(xs, ys)
            if len(dx) == 1:  # a single point: draw a flat segment so it is visible
                dx, dy = [dx[0] - 0.01, dx[0]], [dy[0], dy[0]]
            i = len(self.series_names)
            self.plot(dx, dy, line_style=COLOURS[i % len(COLOURS)], hires_mode=HiResMode.BRAILLE, label=name)
            self.series_names.append(name)
            drawn.append((dx, dy))
        if len(drawn) > 1:  # the marks after every line, so no line is drawn over them
            for i, (dx, dy) in enumerate(drawn):
                mx, my = mark_points(dx, dy)
                self.scatter(mx, my, marker=self.mark(i), marker_style=f"bold {COLOURS[i % len(COLOURS)]}")
        ys_all = [y for name in self.series_names for y in series[name][1]]
        marked = len(drawn) > 1
        if ys_all and max(ys_all) - min(ys_all) < 1e-9:  # a flat series: give the axis some room
            pad = max(abs(ys_all[0]) * 0.1, 0.1)
            self.set_ylimits(ys_all[0] - pad, ys_all[0] + pad)
        elif ys_all and marked:
            # textual-plot puts a mark exactly at the top (or right) limit one cell outside the plot: a little room
            lo, hi = min(ys_all), max(ys_all)
            self.set_ylimits(lo, hi + (hi - lo) * EDGE_ROOM)
        else:
            self.set_ylimits(None, None)
        xs_all = [x for dx, _ in drawn for x in dx]
        if xs_all:
            lo, hi, ticks = epoch_axis(min(xs_all), max(xs_all))
            self.set_xlimits(lo, hi + (hi - lo) * EDGE_ROOM if marked else hi)
            self.set_xticks(ticks)
        # an overlaid legend covers the curves of a terminal-sized plot: the names go in the title line instead
        self.show_legend(is_visible=False)

    @staticmethod
    def mark(i: int) -> str:
        return MARKS[i % len(MARKS)]

    def title_text(self) -> Text:
        """The title; with several series, each one's mark and name in its line's colour instead
        ("R@K o1 +5 x10 *50 · test")."""
        if len(self.series_names) < 2:
            return Text(self.title, style="bold")
        head, names = legend(self.series_names)
        text = Text(f"{head} " if head else "", style="bold", no_wrap=True, overflow="ellipsis")
        for i, name in enumerate(names):
            text.append(f"{self.mark(i)}{name}", style=f"bold {COLOURS[i % len(COLOURS)]}")
            text.append(" ")
        text.append(f"· {self.short}", style="dim")
        return text
