"""`dwc browse`: what a run retrieved for each query (text view, filters, run-vs-run diff, jsonl export).

Plain text, one block per query, pager-friendly when piped (colour only on a terminal). The data comes from
:mod:`dwc_core.results.browse`; this module only lays it out.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from dwc_core.errors import UsageError
from dwc_tui.cli.app import _registry, app, handle_errors
from dwc_tui.cli.output import err
from dwc_tui.cli.output import out as _out

BROWSE_FORMATS = ("text", "jsonl")
IMAGE_GAP = 2  # columns between two image tiles


class _Plain:
    """Lines are printed whole (no wrapping at the terminal width): pager- and grep-friendly when piped."""

    @staticmethod
    def print(*objects) -> None:
        _out.print(*objects, soft_wrap=True)


out = _Plain()


@app.command(rich_help_panel="Results")
@handle_errors
def browse(
    run_id: Annotated[int, typer.Argument(help="run id")],
    eval_id: Annotated[
        int | None, typer.Option("--eval", help="this evaluation id (default: best epoch)")
    ] = None,
    last: Annotated[bool, typer.Option("--last", help="the last epoch's evaluation")] = False,
    misses: Annotated[
        bool, typer.Option("--misses", help="only queries whose target is not in the top K")
    ] = False,
    hits: Annotated[bool, typer.Option("--hits", help="only queries whose target is in the top K")] = False,
    k: Annotated[
        int | None,
        typer.Option(
            "--k",
            help="K of hits/misses and of --against (default 10, or the stored top-K where fewer were stored; at "
            "most the stored top-K, eval.store_topk)",
        ),
    ] = None,
    rank_above: Annotated[
        int | None,
        typer.Option("--rank-above", help="only queries whose first correct item ranks worse than N"),
    ] = None,
    rank_below: Annotated[
        int | None,
        typer.Option(
            "--rank-below",
            help="only queries whose first correct item ranks better than N (with --rank-above A: A < rank < N)",
        ),
    ] = None,
    grep: Annotated[str | None, typer.Option("--grep", help="only queries whose text contains this")] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="show at most N queries")] = None,
    sort: Annotated[str, typer.Option("--sort", help="index | rank (worst first)")] = "index",
    top: Annotated[int, typer.Option("--top", help="ranked items shown per query")] = 5,
    against: Annotated[
        int | None,
        typer.Option("--against", help="another run: queries one gets within K and the other misses"),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text | jsonl")] = "text",
    images: Annotated[
        bool,
        typer.Option(
            "--images", help="draw reference, target and top images (colour terminal, images on disk)"
        ),
    ] = False,
    image_width: Annotated[int, typer.Option("--image-width", help="width of each image in columns")] = 12,
) -> None:
    """Per-query results of a run's best evaluation: reference, text, target, rank of the first hit, top-K."""
    from dwc_core.results import browse as data

    if fmt not in BROWSE_FORMATS:
        raise UsageError(f"--format {fmt!r} is not supported here. Allowed: {' | '.join(BROWSE_FORMATS)}.")
    if top < 1:
        raise UsageError(f"--top {top}: must be a positive number.")
    if images and (fmt != "text" or against is not None):
        raise UsageError(
            "--images draws into the text view of one run: not with --format jsonl or --against."
        )
    if not 2 <= image_width <= 80:
        raise UsageError(f"--image-width {image_width}: allowed 2 to 80 columns.")
    registry = _registry(create=False)
    if against is not None:
        view = data.against(registry, run_id, against, k=k, eval_a=eval_id, last=last)
        _print_against(view, fmt, top, limit)
        return
    view = data.queries(
        registry, run_id, eval_id=eval_id, last=last, misses=misses, hits=hits, rank_above=rank_above,
        rank_below=rank_below, grep=grep, limit=limit, sort=sort, k=k,
    )  # fmt: skip
    if fmt == "jsonl":
        print(data.jsonl(view.queries), end="")
        return
    ev = view.evaluation
    filters = [
        f for f, on in ((f"misses@{k}", misses), (f"hits@{k}", hits), (f"rank>{rank_above}", rank_above is not None),
                        (f"rank<{rank_below}", rank_below is not None), (f"text~{grep!r}", bool(grep))) if on
    ]  # fmt: skip
    out.print(
        Text(
            f"run {view.run['id']} {view.run['experiment']} · evaluation {ev['id']} ({_eval_name(ev)}) · "
            f"{view.total} queries · {view.matched} match{' ' + ' '.join(filters) if filters else ''}"
            f"{f' · showing {len(view.queries)}' if len(view.queries) < view.matched else ''}",
            style="bold",
        )
    )
    pictures = _run_images(view.run) if images else None
    for q in view.queries:
        out.print()
        for line in _query_lines(q, top):
            out.print(line)
        if pictures is not None:
            for line in image_lines(pictures, q, top, image_width, _out.width):
                out.print(line)


def _run_images(run: dict):
    """The run's images, or None with a note saying why they cannot be drawn (the text view goes on)."""
    from rich.markup import escape

    from dwc_core.results.images import ImagesUnavailable, RunImages

    if _out.color_system is None:
        err.print(
            "[yellow]note:[/] --images draws with colours and this output is not a colour terminal: text only "
            "(set FORCE_COLOR=1 to draw them anyway, e.g. for `less -R`).",
            soft_wrap=True,
        )
        return None
    try:
        return RunImages(run)
    except ImagesUnavailable as exc:
        err.print(f"[yellow]note:[/] --images: {escape(exc.message)}; text only.", soft_wrap=True)
        return None


def image_tile(label: str, pixels, width: int, style: str = "bold") -> list[Text]:
    """A label line and the image in half-block cells (upper pixel = foreground, lower = background), each line
    exactly ``width`` columns; "no image" when the pixels are missing."""
    from rich.color import Color
    from rich.style import Style

    from dwc_core.results.images import HALF_BLOCK, half_blocks

    lines = [Text(label[:width].ljust(width), style=style)]
    if pixels is None:
        lines.append(Text("no image"[:width].ljust(width), style="dim"))
        return lines
    for row in half_blocks(pixels, width):
        line = Text()
        run = 0
        for x, cell in enumerate(row):  # one span per run of equal cells: fewer escape codes
            run += 1
            if x + 1 == len(row) or row[x + 1] != cell:
                top, bottom = cell
                line.append(
                    HALF_BLOCK * run, Style(color=Color.from_rgb(*top), bgcolor=Color.from_rgb(*bottom))
                )
                run = 0
        lines.append(line)
    return lines


def image_lines(pictures, q, top: int, width: int, max_columns: int) -> list[Text]:
    """The query's reference, first target and top-``top`` images as tiles side by side, as many per line as
    ``max_columns`` allows (indented by two)."""
    tiles = [image_tile("ref", pictures.pixels(q.ref_id), width)]
    tiles += [image_tile("target", pictures.pixels(t), width, "bold green") for t in q.target_ids[:1]]
    for item in q.topk[:top]:
        label = f"{item['rank']}{' ✓' if item['hit'] else ''}"
        tiles.append(
            image_tile(label, pictures.pixels(item["id"]), width, "bold green" if item["hit"] else "bold")
        )
    per_line = max(1, (max_columns - 2 + IMAGE_GAP) // (width + IMAGE_GAP))
    lines = []
    for start in range(0, len(tiles), per_line):
        group = tiles[start : start + per_line]
        for i in range(max(len(t) for t in group)):
            line = Text("  ")
            for j, tile in enumerate(group):
                if j:
                    line.append(" " * IMAGE_GAP)
                line.append_text(tile[i] if i < len(tile) else Text(" " * width))
            lines.append(line)
    return lines


def _eval_name(ev: dict) -> str:
    if ev["kind"] == "epoch":
        return f"epoch {ev['epoch']}{', best' if ev['is_best'] else ''}, {ev['split']}"
    return f"{ev['kind']} of {ev['checkpoint']}"


def _name(ident: str, display: str | None) -> str:
    return f"{ident}: {display}" if display else ident


def _rank_text(rank: int | None) -> str:
    return f"rank {rank}" if rank is not None else "not in the stored top-K"


def _query_lines(q, top: int) -> list[Text]:
    lines = [Text(f"#{q.qidx} [{q.eval_set}]  {_rank_text(q.target_rank)}", style="bold")]
    return lines + _query_head(q) + _topk_lines(q, top)


def _query_head(q) -> list[Text]:
    """The query's reference, text and target lines."""
    lines = [Text(f"  ref     {_name(q.ref_id, q.ref_display)}"), Text(f"  text    {q.text}", style="cyan")]
    lines += [Text(f"  target  {_name(t, d)}") for t, d in zip(q.target_ids, q.target_displays, strict=False)]
    return lines


def _topk_lines(q, top: int) -> list[Text]:
    out_lines = []
    for item in q.topk[:top]:
        mark = "✓" if item["hit"] else " "
        line = Text(f"  {item['rank']:>3} {mark} {item['score']:8.4f}  {_name(item['id'], item['display'])}")
        if item["hit"]:
            line.stylize("green")
        out_lines.append(line)
    return out_lines


def _print_against(view, fmt: str, top: int, limit: int | None) -> None:
    import json

    a, b = view.run_a, view.run_b
    pairs = [("a_only", p) for p in view.a_only[:limit]] + [("b_only", p) for p in view.b_only[:limit]]
    if fmt == "jsonl":
        for side, (qa, qb) in pairs:
            print(json.dumps({"side": side, "k": view.k, "a": qa.to_dict(), "b": qb.to_dict()}))
        return
    c = view.counts
    out.print(
        Text(
            f"run {a['id']} {a['experiment']} (A) vs run {b['id']} {b['experiment']} (B), within top-{view.k}: "
            f"both {c['both']} · only A {c['a_only']} · only B {c['b_only']} · neither {c['neither']}",
            style="bold",
        )
    )
    for side, title in (
        ("a_only", "A gets within top-{k}, B misses"),
        ("b_only", "B gets within top-{k}, A misses"),
    ):
        chosen = [p for s, p in pairs if s == side]
        total = c[side]
        shown = f" (showing {len(chosen)})" if len(chosen) < total else ""
        out.print()
        out.print(Text(f"{title.format(k=view.k)}: {total}{shown}", style="bold underline"))
        for qa, qb in chosen:
            out.print()
            out.print(Text(f"#{qa.qidx} [{qa.eval_set}]  A {_rank_text(qa.target_rank)} · B {_rank_text(qb.target_rank)}",
                           style="bold"))  # fmt: skip
            for line in _query_head(qa):
                out.print(line)
            la, lb = _topk_lines(qa, top), _topk_lines(qb, top)
            width = max([len("  A"), *(len(x.plain) for x in la)]) + 2
            out.print(Text(f"{'  A':<{width}}  B", style="dim"))
            for i in range(max(len(la), len(lb))):
                left = la[i] if i < len(la) else Text("")
                row = Text()
                row.append_text(left)
                row.append(" " * (width - len(left.plain)) + "│ ")
                if i < len(lb):
                    row.append_text(lb[i])
                out.print(row)
