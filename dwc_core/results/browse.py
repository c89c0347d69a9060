"""Per-query results of an evaluation (what the model retrieved, where it fails) and run-vs-run diffs. Torch-free.

The registry keeps, per evaluation with stored rankings (the best and the last epoch of a run, and every
re-evaluation), each query's reference, text, target(s), top-K gallery ids with scores and the rank of the first
correct item (``None`` when it is not in the stored top-K). Ranks here are 1-based.

Filters: ``misses`` / ``hits`` = the first correct item is not / is within the top ``k`` (default 10);
``rank_above=N`` = the first correct item ranks worse than N (or is not in the stored top-K); ``rank_below=M`` =
it ranks better than M; both together = a rank range, N < rank < M; ``grep`` = a case-insensitive substring of the
modification text. Ranks are known only within the stored top-K (``eval.store_topk``, 50 by default), so ``k``,
``rank_above`` and the ``--against`` K above it, and a ``rank_below`` more than one above it, are refused rather
than counting the unknown ranks as misses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dwc_core.errors import UsageError
from dwc_core.results.compare import run_metrics

SORTS = ("index", "rank")
SAME_SET_KEYS = ("name", "category", "gallery", "mask_reference", "text")


@dataclass
class QueryView:
    eval_set: str
    qidx: int
    ref_id: str
    ref_display: str | None
    text: str
    target_ids: list[str]
    target_displays: list[str | None]
    target_rank: int | None
    topk: list[dict]  # {"rank", "id", "score", "hit", "display"}

    def within(self, k: int) -> bool:
        return self.target_rank is not None and self.target_rank <= k

    def to_dict(self) -> dict:
        return {
            "eval_set": self.eval_set, "qidx": self.qidx, "ref_id": self.ref_id, "ref": self.ref_display,
            "text": self.text, "target_ids": self.target_ids, "targets": self.target_displays,
            "target_rank": self.target_rank, "topk": self.topk,
        }  # fmt: skip


@dataclass
class BrowseView:
    run: dict
    evaluation: dict
    total: int  # queries stored for the evaluation
    matched: int  # after the filters, before the limit
    queries: list[QueryView]
    k: int = 10


@dataclass
class AgainstView:
    run_a: dict
    run_b: dict
    eval_a: dict
    eval_b: dict
    k: int
    counts: dict[str, int]  # both, a_only, b_only, neither
    a_only: list[tuple[QueryView, QueryView]] = field(default_factory=list)
    b_only: list[tuple[QueryView, QueryView]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- evaluations
def pick_evaluation(registry, run_id: int, eval_id: int | None = None, last: bool = False) -> dict:
    """The run's best test evaluation (default), its last one (``last``), or evaluation ``eval_id``; it must
    have stored per-query results."""
    run = registry.get(run_id)
    evals = registry.evaluations(run_id)
    stored = registry.evaluations_with_query_results(run_id)
    avail = ", ".join(f"{e['id']} ({_eval_text(e)})" for e in evals if e["id"] in stored)
    if eval_id is not None:
        chosen = next((e for e in evals if e["id"] == eval_id), None)
        if chosen is None:
            raise UsageError(
                f"run {run_id} has no evaluation {eval_id}. Evaluations with per-query results: {avail or 'none'}."
            )
    else:
        epochs = [e for e in evals if e["kind"] == "epoch" and e["split"] == "test" and e["id"] in stored]
        if last:
            chosen = max(epochs, key=lambda e: (e["epoch"], e["id"]), default=None)
        else:
            chosen = next((e for e in epochs if e["is_best"]), None)
        if chosen is None:
            status = run["status"]
            raise UsageError(
                f"run {run_id} ({run['experiment']}, {status}) has no {'last' if last else 'best'}-epoch evaluation "
                f"with per-query results yet. Evaluations with per-query results: {avail or 'none'}"
                + (" (the run is still in progress)." if status in ("queued", "starting", "running") else ".")
            )
    if chosen["id"] not in stored:
        raise UsageError(
            f"evaluation {chosen['id']} of run {run_id} kept no per-query results (they are kept for the best "
            f"and last epochs and for re-evaluations). Evaluations with per-query results: {avail or 'none'}."
        )
    return chosen


def _eval_text(ev: dict) -> str:
    """``epoch 3, best`` for a per-epoch evaluation, ``reeval, epoch 3`` for a re-evaluation; ``, val split``
    after either when it was not on the test split (the default choice takes test evaluations only)."""
    split = f", {ev['split']} split" if ev.get("split", "test") != "test" else ""
    if ev["kind"] == "epoch":
        return f"epoch {ev['epoch']}{', best' if ev['is_best'] else ''}{split}"
    return f"{ev['kind']}, epoch {ev['epoch']}{split}"


DEFAULT_K = 10  # hits/misses "within K" when no K is given (at most the stored depth)


def stored_depth(evaluation: dict, rows: list[dict]) -> int | None:
    """How deep the evaluation's per-query rankings were stored (``eval.store_topk``): the rank of the first
    correct item is known only up to this rank (``target_rank`` is None beyond it). None when the whole gallery
    was stored, so every rank is known."""
    depth = max((len(r["topk_ids"]) for r in rows), default=0)
    gallery = evaluation.get("gallery_size")
    if gallery and depth >= gallery:
        return None
    return depth


def _check_depth(option: str, value: int, depth: int | None, run_id: int, ev: dict) -> None:
    """Refuse a cut-off deeper than the stored rankings: queries ranked beyond them would count as misses."""
    if depth is not None and value > depth:
        raise UsageError(
            f"{option} {value}: evaluation {ev['id']} of run {run_id} stored each query's top {depth} only "
            f"(eval.store_topk), so whether the first correct item ranks within {value} is not known. Allowed: "
            f"{option} 1 to {depth}; `dwc eval {run_id} --set eval.store_topk=N` re-scores the run with longer "
            "lists."
        )


def _displays(run: dict) -> dict[str, str]:
    """Image id → caption/description, where the dataset has one and loads here; else empty."""
    config = run.get("config") or {}
    dataset = config.get("dataset") or {}
    if dataset.get("name") not in ("synthetic", "fashion200k", "css3d", "mitstates"):
        return {}
    try:
        from dwc_core.data import load_dataset

        run_dir = Path(run.get("run_dir") or ".")
        cache = dataset.get("cache_dir") or str(run_dir.parent / ".cache")
        ds = load_dataset(dataset, cache)
    except Exception:  # the data is not on this machine: show ids
        return {}
    return {img.id: img.display for img in ds.images if getattr(img, "display", None)}


def _views(rows: list[dict], displays: dict[str, str]) -> list[QueryView]:
    out = []
    for r in rows:
        targets = [str(t) for t in r["target_ids"]]
        rank = r["target_rank"]
        topk = [
            {
                "rank": i + 1,
                "id": str(gid),
                "score": float(score),
                "hit": str(gid) in targets or (rank is not None and i + 1 == rank),
                "display": displays.get(str(gid)),
            }
            for i, (gid, score) in enumerate(zip(r["topk_ids"], r["topk_scores"], strict=False))
        ]
        out.append(
            QueryView(
                eval_set=r["eval_set"],
                qidx=int(r["qidx"]),
                ref_id=str(r["ref_id"]),
                ref_display=displays.get(str(r["ref_id"])),
                text=r["text"],
                target_ids=targets,
                target_displays=[displays.get(t) for t in targets],
                target_rank=rank,
                topk=topk,
            )  # fmt: skip
        )
    return out


# --------------------------------------------------------------------------------------------------- browse
def queries(
    registry,
    run_id: int,
    eval_id: int | None = None,
    last: bool = False,
    misses: bool = False,
    hits: bool = False,
    rank_above: int | None = None,
    rank_below: int | None = None,
    grep: str | None = None,
    limit: int | None = None,
    sort: str = "index",
    k: int | None = None,
    describe: bool = True,
) -> BrowseView:
    """The per-query results of one evaluation of ``run_id``, filtered and sorted. ``k`` (hits/misses): by default
    10, or the stored depth where fewer were stored; a ``k`` asked for beyond the stored depth is refused."""
    if misses and hits:
        raise UsageError("--misses and --hits exclude each other: give one of them.")
    if sort not in SORTS:
        raise UsageError(f"--sort {sort!r} is not allowed. Allowed: {' | '.join(SORTS)}.")
    for name, value in (("--limit", limit), ("--rank-above", rank_above), ("--k", k)):
        if value is not None and value < (0 if name == "--rank-above" else 1):
            raise UsageError(f"{name} {value}: must be a positive number.")
    if rank_below is not None and rank_below < 2:
        raise UsageError(f"--rank-below {rank_below}: no rank is better than {rank_below}; give 2 or more.")
    if rank_above is not None and rank_below is not None and rank_below - rank_above < 2:
        raise UsageError(
            f"--rank-above {rank_above} --rank-below {rank_below}: no rank is both worse than {rank_above} and "
            f"better than {rank_below} (the range is N < rank < M: give M at least N + 2)."
        )
    run = registry.get(run_id)
    ev = pick_evaluation(registry, run_id, eval_id, last)
    rows = registry.query_results(ev["id"])
    depth = stored_depth(ev, rows)
    if k is None:
        k = DEFAULT_K if depth is None else min(DEFAULT_K, depth)
    if misses or hits:
        _check_depth("--k", k, depth, run_id, ev)
    if rank_above is not None:
        _check_depth("--rank-above", rank_above, depth, run_id, ev)
    if rank_below is not None and depth is not None and rank_below > depth + 1:
        raise UsageError(
            f"--rank-below {rank_below}: evaluation {ev['id']} of run {run_id} stored each query's top {depth} "
            f"only (eval.store_topk), so whether the first correct item ranks better than {rank_below} is not "
            f"known. Allowed: --rank-below 2 to {depth + 1}; `dwc eval {run_id} --set eval.store_topk=N` re-scores "
            "the run with longer lists."
        )
    total = len(rows)
    views = _views(rows, _displays(run) if describe else {})
    if misses:
        views = [v for v in views if not v.within(k)]
    if hits:
        views = [v for v in views if v.within(k)]
    if rank_above is not None:
        views = [v for v in views if not v.within(rank_above)]
    if rank_below is not None:
        views = [v for v in views if v.within(rank_below - 1)]
    if grep:
        needle = grep.lower()
        views = [v for v in views if needle in v.text.lower()]
    if sort == "rank":  # worst first: not found, then the largest rank
        views.sort(key=lambda v: (v.target_rank is not None, -(v.target_rank or 0), v.eval_set, v.qidx))
    matched = len(views)
    if limit is not None:
        views = views[:limit]
    return BrowseView(run=run, evaluation=ev, total=total, matched=matched, queries=views, k=k)


def _same_set_problems(ea: dict, eb: dict, ra: dict, rb: dict) -> list[str]:
    problems = []
    pa, pb = ea.get("protocol") or {}, eb.get("protocol") or {}
    for key in SAME_SET_KEYS:
        if pa.get(key) != pb.get(key):
            problems.append(f"{'dataset' if key == 'name' else key}: {pa.get(key)} vs {pb.get(key)}")
    if ea["split"] != eb["split"]:
        problems.append(f"split: {ea['split']} vs {eb['split']}")
    for key in ("num_queries", "gallery_size"):
        if ea.get(key) != eb.get(key):
            problems.append(f"{key.replace('_', ' ')}: {ea.get(key)} vs {eb.get(key)}")
    da, db = (ra.get("config") or {}).get("dataset") or {}, (rb.get("config") or {}).get("dataset") or {}
    overridden = {
        o.partition("=")[0].strip().removeprefix("dataset.")
        for e in (ea, eb)
        for o in (e.get("protocol") or {}).get("overrides") or []
    }
    skip = {"root", "cache_dir", "image_size", "augment", "protocol", "missing_images", *SAME_SET_KEYS}
    for key in sorted(set(da) | set(db)):
        if key not in skip and key not in overridden and da.get(key) != db.get(key):
            problems.append(f"dataset.{key}: {da.get(key)} vs {db.get(key)}")
    return problems


def against(
    registry,
    run_a: int,
    run_b: int,
    k: int | None = None,
    eval_a: int | None = None,
    eval_b: int | None = None,
    last: bool = False,
    describe: bool = True,
) -> AgainstView:
    """Queries that run A gets within ``k`` and run B does not, and the reverse, with both rankings (``k``: by
    default 10, or the shallower stored depth of the two)."""
    if k is not None and k < 1:
        raise UsageError(f"--k {k}: must be a positive number.")
    ra, rb = registry.get(run_a), registry.get(run_b)
    ea = pick_evaluation(registry, run_a, eval_a, last)
    eb = pick_evaluation(registry, run_b, eval_b, last)
    problems = _same_set_problems(ea, eb, ra, rb)
    rows_a, rows_b = registry.query_results(ea["id"]), registry.query_results(eb["id"])
    if k is None:
        depths = [d for d in (stored_depth(ea, rows_a), stored_depth(eb, rows_b)) if d is not None]
        k = min([DEFAULT_K, *depths])
    if not problems:
        _check_depth("--k", k, stored_depth(ea, rows_a), run_a, ea)
        _check_depth("--k", k, stored_depth(eb, rows_b), run_b, eb)
        keys_a = {(r["eval_set"], r["qidx"]): (r["ref_id"], r["text"], r["target_ids"]) for r in rows_a}
        keys_b = {(r["eval_set"], r["qidx"]): (r["ref_id"], r["text"], r["target_ids"]) for r in rows_b}
        if keys_a != keys_b:
            problems.append("the stored queries differ (reference, text or target of the same query index)")
    if problems:
        raise UsageError(
            f"runs {run_a} (evaluation {ea['id']}) and {run_b} (evaluation {eb['id']}) were not evaluated on the "
            f"same evaluation set, so their queries cannot be paired: {'; '.join(problems)}. Compare runs "
            "evaluated on the same dataset, split, gallery and protocol (`dwc eval ID --set ...` re-scores a "
            "run under another protocol)."
        )
    displays = _displays(ra) if describe else {}
    va = {(v.eval_set, v.qidx): v for v in _views(rows_a, displays)}
    vb = {(v.eval_set, v.qidx): v for v in _views(rows_b, displays)}
    counts = {"both": 0, "a_only": 0, "b_only": 0, "neither": 0}
    a_only, b_only = [], []
    for key in sorted(va):
        x, y = va[key], vb[key]
        if x.within(k) and y.within(k):
            counts["both"] += 1
        elif x.within(k):
            counts["a_only"] += 1
            a_only.append((x, y))
        elif y.within(k):
            counts["b_only"] += 1
            b_only.append((x, y))
        else:
            counts["neither"] += 1
    return AgainstView(ra, rb, ea, eb, k, counts, a_only, b_only)


def evaluation_metrics(run: dict, which: str = "best") -> dict[str, float]:
    """The run's stored headline metrics (for view headers)."""
    return run_metrics(run, which)


def jsonl(views: list[QueryView]) -> str:
    return "".join(json.dumps(v.to_dict()) + "\n" for v in views)
