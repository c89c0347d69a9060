"""Result commands: compare, eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from dwc_core.results.grouping import fmt_value
from dwc_tui.cli.app import (
    FormatOpt,
    _check_format,
    _project,
    _registry,
    _require_project,
    app,
    handle_errors,
)
from dwc_tui.cli.output import COMPARE_FORMATS, emit, err, is_headline, metric_order, out, print_wide


# ------------------------------------------------------------------------------------------------------ compare
@app.command(rich_help_panel="Results")
@handle_errors
def compare(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="experiments to compare, globs allowed (default: all with results)"),
    ] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="only runs on this dataset")] = None,
    method: Annotated[str | None, typer.Option("--method", help="only runs of this method")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="only runs of experiments with this tag")] = None,
    metric: Annotated[
        list[str] | None, typer.Option("--metric", help="only these metrics (R@10 also picks dress/R@10, …)")
    ] = None,
    group_by: Annotated[
        str, typer.Option("--group-by", help="experiment | method | dataset | a config key (model.embed_dim)")
    ] = "experiment",
    last: Annotated[
        bool, typer.Option("--last/--best", help="last-epoch results instead of the best epoch's")
    ] = False,
    only_changed: Annotated[
        bool,
        typer.Option(
            "--only-changed",
            help="the config keys that differ between rows, as columns; the title sums up the shared ones "
            "(those off their defaults as key=value), --format json gives them all",
        ),
    ] = False,
    reference: Annotated[
        bool, typer.Option("--reference", help="add the published rows (source, protocol, our delta)")
    ] = False,
    per_run: Annotated[
        bool, typer.Option("--runs", help="one row per run (with its variant/overrides and seed)")
    ] = False,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table | md | csv | latex | json")] = "table",
) -> None:
    """Results table as papers print them: one row per distinct config, mean ± std over seeds (n), best marked."""
    from dwc_core.results import compare as cmp
    from dwc_core.results import formats

    _check_format(fmt, COMPARE_FORMATS)
    which = "last" if last else "best"
    registry_file = _project() / "runs" / "registry.db"
    if reference and dataset and not registry_file.exists():
        table = cmp.compare_rows(None, dataset=dataset, reference=True, which=which, runs=[])
    elif not registry_file.exists() and (_require_project() / "experiments.yaml").is_file():
        err.print("no results yet — train one with `dwc run demo`, then `dwc compare`.")
        return
    else:
        registry = _registry(create=False)
        runs = None  # with filters, compare_rows selects (and says what matched nothing)
        if not (names or dataset or method or tag):
            runs = cmp.select_runs(registry, which=which)  # read once, handed on to compare_rows
            if not runs:
                err.print("no results yet — train one with `dwc run demo`, then `dwc compare`.")
                return
        table = cmp.compare_rows(
            registry, names=names or None, dataset=dataset, method=method, tag=tag, metrics=metric or None,
            group_by=group_by, which=which, only_changed=only_changed, reference=reference, per_run=per_run,
            runs=runs,
        )  # fmt: skip
    if fmt != "table":
        print(formats.render(table, fmt), end="")
        return
    _print_compare(table)


def _print_compare(table) -> None:
    from dwc_core.results.formats import cell_text, header

    info = table.info_columns(compact=True)
    t = Table(title=escape(table.title), show_edge=False, header_style="bold", pad_edge=False)
    for i, c in enumerate(info):
        width = max([len(c), *(len(_info(table, r, c)) for r in table.rows)]) if i == 0 else None
        t.add_column(escape(c), justify="right" if c == "n" else "left", min_width=width, no_wrap=i == 0)
    for m in table.metrics:
        t.add_column(escape(header(m)), justify="right")
    if table.reference:
        t.add_column(escape("protocol [source]"))
    sources = _source_numbers(table)
    # piped / no terminal: no bold or colour, so the best gets a text mark (the others a space: columns align)
    marked = out.color_system is None and any(c.best for r in table.rows for c in r.cells.values())
    for r in table.rows:
        cells = [Text(_info(table, r, c)) for c in info]
        for m in table.metrics:
            c = r.cells.get(m)
            best = c is not None and c.best
            text = (cell_text(c) or "–") + (("*" if best else " ") if marked else "")
            cells.append(Text(text, style="bold green" if best else ""))
        if table.reference:
            flag = _protocol_flag(r)
            cells.append(Text(f"{flag} [{sources[r.source]}]" if r.kind == "published" else flag))
        t.add_row(*cells, style="dim" if r.kind == "published" else None)
    print_wide(t)
    if marked:
        out.print("* best in its column (per dataset)", highlight=False)
    _print_footnotes(table, sources)
    for note in table.notes:
        err.print(escape(note), highlight=False)


def _source_numbers(table) -> dict[str, int]:
    """Each distinct source of the published rows → its footnote number, in table order."""
    numbers: dict[str, int] = {}
    for r in table.rows:
        if r.kind == "published" and r.source not in numbers:
            numbers[r.source] = len(numbers) + 1
    return numbers


def _print_footnotes(table, sources: dict[str, int]) -> None:
    """Under the table: every published row's source (numbered as in the protocol column), then the protocol of
    each row that is not "same" as ours (the difference, ours first; or its own protocol when no run compares)."""
    if not sources:
        return
    out.print("sources:", highlight=False)
    for source, n in sources.items():
        out.print(f"  [{n}] {escape(source)}", highlight=False, soft_wrap=True)
    details = [r for r in table.rows if r.kind == "published" and r.protocol_text != "same"]
    if details:
        ours = all(r.compared for r in details)
        out.print("protocol (ours vs published):" if ours else "protocol:", highlight=False)
    for r in details:
        out.print(f"  {escape(r.key)}: {escape(r.protocol_text)}", highlight=False, soft_wrap=True)


def _info(table, row, col: str) -> str:
    from dwc_core.results.formats import info_value

    return info_value(table, row, col, value=fmt_value)


def _protocol_flag(row) -> str:
    if row.kind != "published":
        return ""
    if not row.compared:
        return "see below"  # no run of ours on the dataset: its own protocol is listed under the table
    if row.protocol_diff:
        return "differs"
    return "not stated" if row.not_stated else "same"


@app.command(name="eval", rich_help_panel="Results")
@handle_errors
def eval_cmd(
    run_id: Annotated[int, typer.Argument(help="run id")],
    checkpoint: Annotated[str, typer.Option("--checkpoint", "-c", help="best | last | PATH")] = "best",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="change the protocol: dataset.* or eval.* key=value"),
    ] = None,
    fmt: FormatOpt = "table",
) -> None:
    """Re-evaluate a run's checkpoint (optionally under another protocol); recorded as a separate evaluation."""
    _check_format(fmt, ("table", "json"))
    from dwc_core.engine.reeval import reevaluate

    registry = _registry(create=False)
    registry.get(run_id)
    ev = reevaluate(registry.path, run_id, checkpoint, list(set_ or []))
    other = (ev.get("protocol") or {}).get("checkpoint_run_uid")
    if other:
        err.print(f"note: {escape(checkpoint)} is a checkpoint of another run (uid {other}); recorded as such in evaluation "
            f"{ev['id']} of run {run_id}")  # fmt: skip
    if fmt == "json":
        import json

        print(json.dumps(ev, indent=2, default=str))
        return
    keys = sorted((k for k in ev["metrics"] if is_headline(k)), key=metric_order)
    emit([{"evaluation": ev["id"], "checkpoint": Path(ev["checkpoint"]).name, **ev["metrics"]}],
         ["evaluation", "checkpoint", *keys], "table", title=f"run {run_id} re-evaluated")  # fmt: skip
