"""Compare tables as papers print them: one row per distinct config (replicates over seeds averaged), mean ± std
and n per metric, the best value per column marked, and optionally the published rows with our delta to each.

Numbers are rounded to :data:`PRECISION` decimals here, once, so every format shows the same numbers. FashionIQ
columns follow the papers: dress / shirt / toptee R@10 R@50, then Avg R@10, Avg R@50, mean. A single-category
FashionIQ run's ``R@10`` is shown as ``<category>/R@10`` so that it lines up with the published per-category column.
"""

from __future__ import annotations

import fnmatch
import statistics
from dataclasses import dataclass, field

from dwc_core.errors import UsageError
from dwc_core.results import grouping, reference

PRECISION = 2
FIQ_CATEGORIES = ("dress", "shirt", "toptee")
GROUP_BY_BUILTIN = ("experiment", "method", "dataset")


# ------------------------------------------------------------------------------------------------------ metrics
def is_headline(metric: str) -> bool:
    """Metrics shown by default: R@K, the FashionIQ per-category and average recalls, and the means."""
    head, _, tail = metric.rpartition("/")
    if head not in ("", "avg", *FIQ_CATEGORIES):
        return False
    return tail.startswith("R@") or tail == "mean"


def metric_order(metric: str) -> tuple:
    """Paper order: plain R@K by K; FashionIQ categories (dress, shirt, toptee), other prefixes, avg; mean last."""
    head, _, tail = metric.rpartition("/")
    if head == "" and tail == "mean":
        group = (9, "")
    elif head == "":
        group = (0, "")
    elif head in FIQ_CATEGORIES:
        group = (1, str(FIQ_CATEGORIES.index(head)))
    elif head == "avg":
        group = (3, "")
    else:
        group = (2, head)
    k = int(tail[2:]) if tail.startswith("R@") and tail[2:].isdigit() else 10**6
    return (*group, k, tail)


def run_metrics(row: dict, which: str = "best") -> dict[str, float]:
    """The run's best (or last) evaluation metrics; single-category FashionIQ names get their category prefix."""
    metrics = dict(row.get("best_metrics" if which == "best" else "last_metrics") or {})
    metrics.pop("epoch", None)
    dataset = (row.get("config") or {}).get("dataset") or {}
    cat = dataset.get("category")
    if dataset.get("name") == "fashioniq" and cat in FIQ_CATEGORIES:
        metrics = {(f"{cat}/{k}" if "/" not in k else k): v for k, v in metrics.items()}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}


# --------------------------------------------------------------------------------------------------- the table
@dataclass
class Cell:
    mean: float | None
    std: float | None = None  # only with n >= 2
    n: int = 0
    best: bool = False
    delta: float | None = None  # published rows: ours − published


@dataclass
class CompareRow:
    kind: str  # "ours" | "published"
    key: str  # the group-by value (experiment name, method, ...) or the published method
    label: str  # what sets the row apart: variant / overridden keys, or "published"
    experiment: str
    method: str
    dataset: str
    n: int
    cells: dict[str, Cell]
    runs: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    changed: dict[str, object] = field(default_factory=dict)  # --only-changed: key → value
    protocol: dict[str, object] = field(default_factory=dict)
    source: str = ""
    protocol_diff: list[str] = field(default_factory=list)
    not_stated: list[str] = field(default_factory=list)
    identity: dict[str, object] = field(default_factory=dict, repr=False)
    compared: bool = True  # published rows: False when there is no run of ours on the dataset to compare with

    @property
    def protocol_text(self) -> str:
        """Published rows: how the protocol differs from our run's ("same" when it does not), or, with no run to
        compare with, the row's own protocol ("gallery=val_union, text=dwc, …"); the keys the source does not
        state follow."""
        if self.kind != "published":
            return ""
        if not self.compared:
            # missing_images=error is implied for every published row (the full query set): not repeated here
            keys = [k for k in reference.COMPARED_KEYS if k != "missing_images"]
            parts = [
                ", ".join(
                    f"{k}={reference.show_value(self.protocol[k])}"
                    for k in keys
                    if self.protocol.get(k) is not None
                )
            ]
        else:
            parts = list(self.protocol_diff)
        parts = [p for p in parts if p]
        if self.not_stated:
            parts.append("not stated: " + ", ".join(self.not_stated))
        return "; ".join(parts) if parts else "same"


@dataclass
class CompareTable:
    title: str
    key_column: str
    metrics: list[str]
    rows: list[CompareRow]
    which: str = "best"
    changed_keys: list[str] = field(default_factory=list)
    only_changed: bool = False
    reference: bool = False
    shared: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # --only-changed: every config key the rows share, with its value (the title summarises them)
    shared_settings: dict[str, object] = field(default_factory=dict)

    def info_columns(self, compact: bool = False) -> list[str]:
        """Non-metric columns. ``compact`` (the terminal table) drops what every row shares (said in the title)."""
        cols = [self.key_column]
        if self.only_changed:
            cols += self.changed_keys
        elif any(r.label for r in self.rows):
            cols.append("variant")
        if self.key_column != "experiment" and any(r.kind == "ours" for r in self.rows):
            cols.append("experiment")
        for c in ("method", "dataset"):
            if c != self.key_column and not (compact and c in self.shared):
                cols.append(c)
        cols.append("n")
        return cols

    def records(self) -> list[dict]:
        """Flat rows for machine formats: info columns, then per metric ``M``, ``M std`` (and ``M delta``)."""
        out = []
        for r in self.rows:
            d: dict[str, object] = {
                "experiment": r.experiment, "method": r.method, "dataset": r.dataset,
            }  # fmt: skip
            d[self.key_column] = r.key
            d.update({"variant": r.label, "kind": r.kind, "n": r.n, "runs": list(r.runs)})
            for k in self.changed_keys if self.only_changed else ():
                d[k] = r.changed.get(k)
            for m in self.metrics:
                c = r.cells.get(m) or Cell(None)
                d[m] = c.mean
                d[f"{m} std"] = c.std
                if self.reference:
                    d[f"{m} delta"] = c.delta
            d["best"] = [m for m in self.metrics if (r.cells.get(m) or Cell(None)).best]
            if self.reference:
                d["source"] = r.source
                d["protocol"] = r.protocol_text
            # json: every setting the title summarises (csv writes only record_columns, so not these)
            if self.only_changed:
                d["shared"] = dict(self.shared_settings) if r.kind == "ours" else {}
            out.append(d)
        return out

    def record_columns(self) -> list[str]:
        cols = [self.key_column, "variant", "kind", "experiment", "method", "dataset", "n", "runs"]
        cols = list(dict.fromkeys(cols))
        if self.only_changed:
            cols += self.changed_keys
        for m in self.metrics:
            cols += [m, f"{m} std"] + ([f"{m} delta"] if self.reference else [])
        cols.append("best")
        if self.reference:
            cols += ["source", "protocol"]
        return cols


# -------------------------------------------------------------------------------------------------- building
def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), PRECISION)


def _cell(values: list[float]) -> Cell:
    if not values:
        return Cell(None)
    std = statistics.stdev(values) if len(values) >= 2 else None
    return Cell(_round(statistics.fmean(values)), _round(std), len(values))


def _group_value(row: dict, group_by: str) -> str:
    config = row["config"]
    if group_by == "experiment":
        return row["experiment"]
    if group_by == "method":
        return str(config["model"]["name"])
    if group_by == "dataset":
        return str(config["dataset"]["name"])
    return grouping.fmt_value(grouping.flatten(config).get(group_by))


def run_tags(row: dict) -> list[str]:
    """The run's tags (its registry column, else its config's), as strings."""
    tags = row.get("tags")
    if not isinstance(tags, list):
        tags = (row.get("config") or {}).get("tags") or []
    return [str(t) for t in tags]


def select_runs(
    registry,
    names: list[str] | None = None,
    dataset: str | None = None,
    method: str | None = None,
    tag: str | None = None,
    which: str = "best",
) -> list[dict]:
    """Runs with results matching the filters (``names`` may be globs over experiment names)."""
    if which not in ("best", "last"):
        raise UsageError(f"which = {which!r} is not allowed. Allowed: best | last.")
    _check_choice("--dataset", dataset, _dataset_names())
    _check_choice("--method", method, _method_names())
    rows = []
    for r in registry.runs():
        if not run_metrics(r, which):
            continue
        cfg = r["config"]
        if names and not any(fnmatch.fnmatchcase(r["experiment"], n) for n in names):
            continue
        if dataset and cfg["dataset"]["name"] != dataset:
            continue
        if method and cfg["model"]["name"] != method:
            continue
        if tag and tag not in run_tags(r):
            continue
        rows.append(r)
    return rows


def _dataset_names() -> tuple[str, ...]:
    from dwc_core.config.schema.datasets import DATASET_NAMES

    return DATASET_NAMES


def _method_names() -> tuple[str, ...]:
    from dwc_core.config.schema.methods import METHOD_NAMES

    return METHOD_NAMES


def _check_choice(option: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise UsageError(f"{option} {value!r} is not a known name. Allowed: {' | '.join(allowed)}.")


def compare_rows(
    registry,
    names: list[str] | None = None,
    dataset: str | None = None,
    method: str | None = None,
    tag: str | None = None,
    metrics: list[str] | None = None,
    group_by: str = "experiment",
    which: str = "best",
    only_changed: bool = False,
    reference: bool = False,
    per_run: bool = False,
    runs: list[dict] | None = None,
) -> CompareTable:
    """The compare table over the registry's runs with results (or over ``runs`` when given, e.g. the TUI's
    marked runs). Raises :class:`UsageError` for filters that match nothing (with what exists)."""
    _check_choice("--dataset", dataset, _dataset_names())
    # given runs (the TUI's marked ones) count only with results, as select_runs picks them: a queued run in a
    # group would make its n say one seed more than its mean is over
    without = [r["id"] for r in runs or [] if not run_metrics(r, which)]
    if runs is not None:
        selected = [r for r in runs if run_metrics(r, which)]
    else:
        selected = select_runs(registry, names, dataset, method, tag, which)
    if runs is None and names:
        missing = [n for n in names if not any(fnmatch.fnmatchcase(r["experiment"], n) for r in selected)]
        if missing:
            raise UsageError(
                f"no {which}-epoch results for: {', '.join(missing)}. `dwc runs` lists the runs and their status."
            )
    if not selected and not (reference and dataset):
        what = " ".join(
            f"--{k} {v}" for k, v in (("dataset", dataset), ("method", method), ("tag", tag)) if v
        )
        raise UsageError(
            f"no runs with results{' match ' + what if what else ' yet'}."
            + (" With --reference --dataset D, the published rows are shown alone." if not reference else "")
        )
    if group_by not in GROUP_BY_BUILTIN and not any(
        group_by in grouping.flatten(r["config"]) for r in selected
    ):
        raise UsageError(
            f"--group-by {group_by!r}: no compared run has this config key. Allowed: experiment | method | "
            "dataset | a dotted config key such as model.embed_dim or trainer.lr."
        )
    rows = _our_rows(selected, group_by, which, per_run)
    changed = grouping.differing_keys([r.identity for r in rows], _variant_keys(selected))
    for r in rows:
        r.changed = {k: r.identity.get(k) for k in changed}
    if reference:
        datasets = list(dict.fromkeys([r.dataset for r in rows] + ([dataset] if dataset else [])))
        rows, notes = _with_reference(rows, datasets)
    else:
        notes = []
    keys = _metric_columns(rows, metrics)
    _mark_best(rows, keys)
    unfinished = sorted({rid for r in rows for rid, s in zip(r.runs, r.statuses, strict=True) if s != "done"})
    if unfinished:
        notes.append(f"includes runs that are not done: {', '.join(f'#{i}' for i in unfinished)}")
    if without:
        notes.append(f"left out, no {which}-epoch results yet: {', '.join(f'#{i}' for i in without)}")
    shared = {}
    for c in ("dataset", "method"):
        values = {getattr(r, c) for r in rows}
        if len(rows) > 1 and len(values) == 1:
            shared[c] = values.pop()
    title = f"{which} epoch per {'run' if per_run else group_by}"
    title += "".join(f" · {k} {v}" for k, v in shared.items())
    settings: dict[str, object] = {}
    if only_changed:
        ours = [r for r in rows if r.kind == "ours"]
        # keys not in `changed` have one value in every row of ours (a key missing from one row is in `changed`)
        settings = {k: v for k, v in (ours[0].identity if ours else {}).items() if k not in changed}
        title += " · " + shared_summary(settings, _defaults([(r.dataset, r.method) for r in ours]))
    return CompareTable(
        title=title, key_column=group_by, metrics=keys, rows=rows, which=which, changed_keys=changed,
        only_changed=only_changed, reference=reference, shared=shared, notes=notes, shared_settings=settings,
    )  # fmt: skip


SHARED_WIDTH = 60  # characters of "key=value" pairs the --only-changed title lists before "+N more"
NAME_KEYS = ("dataset.name", "model.name")  # said in the title already when shared


def _defaults(pairs: list[tuple[str, str]]) -> list[dict[str, object]]:
    """The flattened schema defaults of each distinct (dataset, method) of the rows."""
    from dwc_core.config.experiments import default_config

    return [grouping.flatten(default_config(ds, m)) for ds, m in dict.fromkeys(pairs)]


def shared_summary(settings: dict[str, object], defaults: list[dict[str, object]]) -> str:
    """The --only-changed title's account of the shared settings: the ones that differ from the schema defaults
    as ``key=value`` (the first ~:data:`SHARED_WIDTH` characters of them, then ``+N more``), then how many are at
    their defaults. ``--format json`` carries every shared setting (``shared``)."""
    missing = object()
    own, at_default = [], 0
    for key, value in settings.items():
        if key in NAME_KEYS:
            continue
        if defaults and all(d.get(key, missing) == value for d in defaults):
            at_default += 1
        else:
            own.append(f"{key}={grouping.fmt_value(value)}")
    shown: list[str] = []
    for item in own:
        if shown and len(", ".join([*shown, item])) > SHARED_WIDTH:
            break
        shown.append(item)
    parts = []
    if own:
        more = len(own) - len(shown)
        parts.append("shared: " + ", ".join(shown) + (f" +{more} more (all: --format json)" if more else ""))
    if at_default:
        parts.append(f"{at_default} {'more ' if own else ''}at their defaults")
    return "; ".join(parts) if parts else "no other settings shared"


def _variant_keys(runs: list[dict]) -> list[str]:
    keys: list[str] = []
    for r in runs:
        for k in r.get("variant") or {}:
            if k != "seed" and k not in keys:
                keys.append(k)
    return keys


def _our_rows(runs: list[dict], group_by: str, which: str, per_run: bool) -> list[CompareRow]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        gid = (_group_value(r, group_by), r["id"] if per_run else grouping.identity_key(r["config"]))
        groups.setdefault(gid, []).append(r)
    idents = {gid: grouping.identity(g[0]["config"]) for gid, g in groups.items()}
    by_value: dict[str, list[tuple]] = {}
    for gid in groups:
        by_value.setdefault(gid[0], []).append(gid)
    variant_keys = _variant_keys(runs)
    rows = []
    for value, gids in by_value.items():
        keys = grouping.differing_keys([idents[g] for g in gids], variant_keys)
        for gid in gids:
            members = groups[gid]
            first = members[0]
            per = [run_metrics(m, which) for m in members]
            names = sorted({k for p in per for k in p})
            # the --set overrides every member was made with (replicates may reach one config different ways)
            common = [
                o for o in first["config"].get("overrides") or []
                if all(o in (m["config"].get("overrides") or []) for m in members)
            ]  # fmt: skip
            label = grouping.with_overrides(
                grouping.label(idents[gid], keys), {**first["config"], "overrides": common}
            )
            if per_run:
                label = " ".join(x for x in (label, f"seed={first['seed']}") if x)
            rows.append(
                CompareRow(
                    kind="ours",
                    key=value,
                    label=label,
                    experiment=", ".join(dict.fromkeys(m["experiment"] for m in members)),
                    method=str(first["config"]["model"]["name"]),
                    dataset=str(first["config"]["dataset"]["name"]),
                    n=len(members),
                    cells={k: _cell([p[k] for p in per if k in p]) for k in names},
                    runs=[m["id"] for m in members],
                    seeds=[m["seed"] for m in members],
                    statuses=[m["status"] for m in members],
                    protocol=reference.run_protocol(first["config"]),
                    identity=idents[gid],
                )  # fmt: skip
            )
    if group_by != "experiment":
        rows.sort(key=lambda r: (r.key, r.label))
    return rows


def _with_reference(rows: list[CompareRow], datasets: list[str]) -> tuple[list[CompareRow], list[str]]:
    """Our rows, each dataset's published rows after them, with deltas and protocol flags; and the notes."""
    notes: list[str] = []
    out: list[CompareRow] = []
    for ds in datasets:
        ours = [r for r in rows if r.dataset == ds]
        out += ours
        published = reference.rows_for(ds)
        if not published:
            notes.append(f"{ds}: no published rows ({reference.NO_ROWS.get(ds, 'none shipped')}).")
            continue
        anchor = max(ours, key=lambda r: (r.cells.get("mean") or Cell(None)).mean or -1.0, default=None)
        if anchor is None:
            notes.append(f"{ds}: no runs yet; the published rows are what to beat.")
        else:
            notes.append(
                f"{ds}: delta = ours ({anchor.key}{' ' + anchor.label if anchor.label else ''}) − published; "
                "protocol differences read ours vs published."
            )
        for p in published:
            cells = {}
            for k, v in p.metrics.items():
                mine = anchor.cells.get(k) if anchor else None
                delta = _round(mine.mean - v) if mine is not None and mine.mean is not None else None
                cells[k] = Cell(_round(v), None, 1, delta=delta)
            diffs, unknown = reference.protocol_difference(anchor.protocol if anchor else {}, p.protocol)
            out.append(
                CompareRow(
                    kind="published",
                    key=p.label,
                    label="published",
                    experiment="",
                    method=p.method,
                    dataset=ds,
                    n=1,
                    cells=cells,
                    source=p.source,
                    protocol=dict(p.protocol),
                    protocol_diff=diffs if anchor else [],
                    not_stated=unknown,
                    compared=anchor is not None,
                )  # fmt: skip
            )
    out += [r for r in rows if r.dataset not in datasets]
    return out, notes


def _metric_columns(rows: list[CompareRow], wanted: list[str] | None) -> list[str]:
    present = sorted({k for r in rows for k in r.cells}, key=metric_order)
    if not wanted:
        return [k for k in present if is_headline(k)]
    keys = [k for k in present if any(k == w or k.endswith("/" + w) for w in wanted)]
    unknown = [w for w in wanted if not any(k == w or k.endswith("/" + w) for k in present)]
    if unknown:
        raise UsageError(
            f"--metric {', '.join(unknown)}: not among the compared results. Available: {', '.join(present)}."
        )
    return keys


def _mark_best(rows: list[CompareRow], keys: list[str]) -> None:
    """Mark the highest mean per column among the rows of the same dataset (ties all marked)."""
    for ds in {r.dataset for r in rows}:
        same = [r for r in rows if r.dataset == ds]
        for k in keys:
            vals = [r.cells[k].mean for r in same if k in r.cells and r.cells[k].mean is not None]
            if len(vals) < 2:
                continue
            top = max(vals)
            for r in same:
                if k in r.cells and r.cells[k].mean == top:
                    r.cells[k].best = True
