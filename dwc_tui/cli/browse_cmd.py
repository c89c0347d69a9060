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
from dwc_tui.cli.output import out as _out

BROWSE_FORMATS = ("text", "jsonl")


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
    k: Annotated[int, typer.Option("--k", help="K of hits/misses and of --against")] = 10,
    rank_above: Annotated[
        int | None,
        typer.Option("--rank-above", help="only queries whose first correct item ranks worse than N"),
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
) -> None:
    """Per-query results of a run's best evaluation: reference, text, target, rank of the first hit, top-K."""
    from dwc_core.results import browse as data

    if fmt not in BROWSE_FORMATS:
        raise UsageError(f"--format {fmt!r} is not supported here. Allowed: {' | '.join(BROWSE_FORMATS)}.")
    if top < 1:
        raise UsageError(f"--top {top}: must be a positive number.")
    registry = _registry(create=False)
    if against is not None:
        view = data.against(registry, run_id, against, k=k, eval_a=eval_id, last=last)
        _print_against(view, fmt, top, limit)
        return
    view = data.queries(
        registry, run_id, eval_id=eval_id, last=last, misses=misses, hits=hits, rank_above=rank_above,
        grep=grep, limit=limit, sort=sort, k=k,
    )  # fmt: skip
    if fmt == "jsonl":
        print(data.jsonl(view.queries), end="")
        return
    ev = view.evaluation
    filters = [
        f for f, on in ((f"misses@{k}", misses), (f"hits@{k}", hits), (f"rank>{rank_above}", rank_above is not None),
                        (f"text~{grep!r}", bool(grep))) if on
    ]  # fmt: skip
    out.print(
        Text(
            f"run {view.run['id']} {view.run['experiment']} · evaluation {ev['id']} ({_eval_name(ev)}) · "
            f"{view.total} queries · {view.matched} match{' ' + ' '.join(filters) if filters else ''}"
            f"{f' · showing {len(view.queries)}' if len(view.queries) < view.matched else ''}",
            style="bold",
        )
    )
    for q in view.queries:
        out.print()
        for line in _query_lines(q, top):
            out.print(line)


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
    lines.append(Text(f"  ref     {_name(q.ref_id, q.ref_display)}"))
    lines.append(Text(f"  text    {q.text}", style="cyan"))
    for t, d in zip(q.target_ids, q.target_displays, strict=False):
        lines.append(Text(f"  target  {_name(t, d)}"))
    lines += _topk_lines(q, top)
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
            out.print(Text(f"  ref     {_name(qa.ref_id, qa.ref_display)}"))
            out.print(Text(f"  text    {qa.text}", style="cyan"))
            for t, d in zip(qa.target_ids, qa.target_displays, strict=False):
                out.print(Text(f"  target  {_name(t, d)}"))
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
