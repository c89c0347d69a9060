"""dwc_core.results.browse: per-query filters and the --against diff, on registries the tests seed."""

from __future__ import annotations

import json

import pytest
from test_results_registry import add_eval, config, qrow, seed_run

from dwc_core.errors import UsageError
from dwc_core.results import browse
from dwc_core.runs.registry import Registry

GALLERY = [f"g{i}" for i in range(70)]


@pytest.fixture
def reg(tmp_path):
    r = Registry(tmp_path / "runs" / "registry.db")
    yield r
    r.close()


def _ranking(target: str, rank: int | None, n: int = 60) -> list[str]:
    """A top-n list with ``target`` at 1-based ``rank`` (absent when None)."""
    others = [g for g in GALLERY if g != target][: n - (1 if rank else 0)]
    if rank:
        others.insert(rank - 1, target)
    return others


def _run(reg, tmp_path, ranks: list[int | None], texts=None, **eval_fields) -> int:
    rid = seed_run(reg, tmp_path, "demo", config(), {"R@1": 1.0})
    rows = [
        qrow(i, (texts or {}).get(i, f"make object {i} red"), f"g{i}", _ranking(f"g{i}", r))
        for i, r in enumerate(ranks)
    ]
    add_eval(reg, rid, rows, **eval_fields)
    return rid


def test_filters_sort_and_limit(reg, tmp_path):
    ranks = [1, 12, None, 3, None, 10, 11]
    rid = _run(reg, tmp_path, ranks, texts={3: "Remove the BLUE cube"})
    v = browse.queries(reg, rid, describe=False)
    assert v.total == 7 and [q.qidx for q in v.queries] == list(range(7))
    q1 = v.queries[1]
    assert q1.target_rank == 12 and [t["hit"] for t in q1.topk].index(True) == 11
    misses = browse.queries(reg, rid, misses=True, describe=False)
    assert [q.qidx for q in misses.queries] == [i for i, r in enumerate(ranks) if r is None or r > 10]
    hits = browse.queries(reg, rid, hits=True, k=5, describe=False)
    assert [q.qidx for q in hits.queries] == [0, 3]
    above = browse.queries(reg, rid, rank_above=10, describe=False)
    assert [q.qidx for q in above.queries] == [1, 2, 4, 6]
    assert [q.qidx for q in browse.queries(reg, rid, grep="blue", describe=False).queries] == [3]
    worst = browse.queries(reg, rid, sort="rank", describe=False)
    assert [q.target_rank for q in worst.queries] == [None, None, 12, 11, 10, 3, 1]
    lim = browse.queries(reg, rid, misses=True, limit=2, describe=False)
    assert len(lim.queries) == 2 and lim.matched == 4


def test_bad_filters_and_missing_results(reg, tmp_path):
    rid = _run(reg, tmp_path, [1])
    with pytest.raises(UsageError, match="exclude each other"):
        browse.queries(reg, rid, misses=True, hits=True)
    with pytest.raises(UsageError, match="Allowed: index | rank"):
        browse.queries(reg, rid, sort="score")
    with pytest.raises(UsageError, match="no evaluation 999"):
        browse.queries(reg, rid, eval_id=999)
    empty = seed_run(reg, tmp_path, "demo", config(), {"R@1": 1.0})
    with pytest.raises(UsageError, match="no best-epoch evaluation with per-query results"):
        browse.queries(reg, empty)


def test_last_and_explicit_evaluation(reg, tmp_path):
    rid = seed_run(reg, tmp_path, "demo", config(), {"R@1": 1.0})
    best = add_eval(reg, rid, [qrow(0, "t", "g0", _ranking("g0", 1))], epoch=2, best=True)
    last = add_eval(reg, rid, [qrow(0, "t", "g0", _ranking("g0", 7))], epoch=3, best=False)
    assert browse.queries(reg, rid, describe=False).evaluation["id"] == best
    assert browse.queries(reg, rid, last=True, describe=False).queries[0].target_rank == 7
    assert browse.queries(reg, rid, eval_id=last, describe=False).evaluation["epoch"] == 3


def test_against_lists_exactly_the_queries_one_run_gets_within_k(reg, tmp_path):
    ranks_a = [1, 5, 10, 11, None, 3, 50, None]
    ranks_b = [2, 11, None, 4, 9, 30, None, None]
    a = _run(reg, tmp_path, ranks_a)
    b = _run(reg, tmp_path, ranks_b)
    k = 10
    v = browse.against(reg, a, b, k=k, describe=False)
    within = lambda r: r is not None and r < k + 1  # noqa: E731
    want_a = [i for i, (x, y) in enumerate(zip(ranks_a, ranks_b, strict=True)) if within(x) and not within(y)]
    want_b = [i for i, (x, y) in enumerate(zip(ranks_a, ranks_b, strict=True)) if within(y) and not within(x)]
    assert want_a == [1, 2, 5] and want_b == [3, 4]
    assert [qa.qidx for qa, _ in v.a_only] == want_a
    assert [qb.qidx for _, qb in v.b_only] == want_b
    assert v.counts == {"both": 1, "a_only": 3, "b_only": 2, "neither": 2}
    assert [(qa.target_rank, qb.target_rank) for qa, qb in v.a_only] == [(5, 11), (10, None), (3, 30)]
    rev = browse.against(reg, b, a, k=k, describe=False)
    assert [q.qidx for q, _ in rev.a_only] == want_b


def test_against_refuses_different_evaluation_sets(reg, tmp_path):
    a = _run(reg, tmp_path, [1, 2])
    other = _run(reg, tmp_path, [1, 2], protocol={"name": "synthetic", "gallery": "split_all"})
    with pytest.raises(
        UsageError, match="not evaluated on the same evaluation set.*gallery: None vs split_all"
    ):
        browse.against(reg, a, other)
    bigger = _run(reg, tmp_path, [1, 2], gallery_size=99)
    with pytest.raises(UsageError, match="gallery size: 20 vs 99"):
        browse.against(reg, a, bigger)
    texts = _run(reg, tmp_path, [1, 2], texts={1: "something else"})
    with pytest.raises(UsageError, match="stored queries differ"):
        browse.against(reg, a, texts)


def test_jsonl_one_object_per_query(reg, tmp_path):
    import json

    rid = _run(reg, tmp_path, [1, None])
    lines = browse.jsonl(browse.queries(reg, rid, describe=False).queries).splitlines()
    docs = [json.loads(x) for x in lines]
    assert [d["qidx"] for d in docs] == [0, 1] and docs[1]["target_rank"] is None
    assert docs[0]["topk"][0] == {"rank": 1, "id": "g0", "score": 1.0, "hit": True, "display": None}


def test_k_beyond_the_stored_top_k_is_refused(reg, tmp_path):
    # 60 items stored per query out of a 500-image gallery: a target ranked beyond 60 has no known rank, so
    # --k 100 would count it as a miss whatever its real rank
    rid = _run(reg, tmp_path, [1, 59, None], gallery_size=500)
    assert [q.qidx for q in browse.queries(reg, rid, misses=True, k=60, describe=False).queries] == [2]
    for kwargs in ({"misses": True, "k": 61}, {"hits": True, "k": 100}, {"rank_above": 61}):
        with pytest.raises(UsageError, match="stored each query's top 60 only.*Allowed: --[a-z-]+ 1 to 60"):
            browse.queries(reg, rid, describe=False, **kwargs)
    browse.queries(reg, rid, k=100, describe=False)  # no hit/miss filter: K is not used
    other = _run(reg, tmp_path, [2, None, 3], gallery_size=500)
    with pytest.raises(UsageError, match="--k 61: evaluation .* stored each query's top 60 only"):
        browse.against(reg, rid, other, k=61, describe=False)
    assert browse.against(reg, rid, other, k=60, describe=False).counts["both"] == 1
    # the whole gallery stored (a gallery of 60): every rank is known, any K is exact
    small = _run(reg, tmp_path, [1, None], gallery_size=60)
    assert len(browse.queries(reg, small, misses=True, k=1000, describe=False).queries) == 1


def test_default_k_is_10_or_the_stored_depth_where_fewer_were_stored(reg, tmp_path):
    """Without --k, hits/misses are "within 10" — or within the stored depth when eval.store_topk kept fewer (the
    TUI's browse screen asks without a K): never a refusal the user did not provoke."""
    rid = seed_run(reg, tmp_path, "demo", config(), {"R@1": 1.0})
    rows = [
        qrow(i, f"make object {i} red", f"g{i}", _ranking(f"g{i}", r, n=5))
        for i, r in enumerate([1, 5, None])
    ]
    add_eval(reg, rid, rows, gallery_size=500)
    view = browse.queries(reg, rid, misses=True, describe=False)
    assert view.k == 5 and [q.qidx for q in view.queries] == [2]
    with pytest.raises(UsageError, match="top 5 only"):
        browse.queries(reg, rid, misses=True, k=10, describe=False)  # asked for: refused
    deep = _run(reg, tmp_path, [1, 12, None], gallery_size=500)
    assert browse.queries(reg, deep, misses=True, describe=False).k == 10
    assert browse.against(reg, rid, deep, describe=False).k == 5


def test_available_evaluations_are_named_once(reg, tmp_path):
    rid = seed_run(reg, tmp_path, "demo", config(), {"R@1": 1.0})
    eid = add_eval(reg, rid, [qrow(0, "t", "g0", _ranking("g0", 1))], epoch=3, best=True)
    with pytest.raises(UsageError) as exc:
        browse.queries(reg, rid, eval_id=999)
    assert f"{eid} (epoch 3, best)" in str(exc.value) and "epoch epoch" not in str(exc.value)


def test_rank_range_keeps_ranks_strictly_between_the_bounds(reg, tmp_path):
    """--rank-above N and --rank-below M: N < rank < M, each alone an open end (--rank-above also keeps the
    queries whose target is not in the stored top-K; --rank-below never does)."""
    ranks = [1, 12, None, 3, None, 10, 11, 2]
    rid = _run(reg, tmp_path, ranks, gallery_size=500)  # 60 stored of 500: ranks beyond 60 are unknown
    below = browse.queries(reg, rid, rank_below=10, describe=False)
    assert [q.target_rank for q in below.queries] == [1, 3, 2]
    between = browse.queries(reg, rid, rank_above=2, rank_below=12, describe=False)
    assert [q.target_rank for q in between.queries] == [3, 10, 11]
    assert between.matched == 3 and between.total == 8
    tight = browse.queries(reg, rid, rank_above=10, rank_below=12, describe=False)
    assert [q.target_rank for q in tight.queries] == [11]
    # with the other filters: misses within 5 that still rank better than 12
    missed = browse.queries(reg, rid, misses=True, k=5, rank_below=12, describe=False)
    assert [q.qidx for q in missed.queries] == [5, 6]
    # one more than the stored depth is exact (a target beyond the top 60 ranks 61 or worse)
    assert len(browse.queries(reg, rid, rank_below=61, describe=False).queries) == 6


def test_rank_below_refuses_empty_ranges_and_depths_it_cannot_know(reg, tmp_path):
    rid = _run(reg, tmp_path, [1, 3, None], gallery_size=500)
    with pytest.raises(UsageError, match="--rank-below 1: no rank is better than 1; give 2 or more"):
        browse.queries(reg, rid, rank_below=1, describe=False)
    for above, below in ((3, 4), (3, 3), (9, 2)):
        with pytest.raises(UsageError, match=f"--rank-above {above} --rank-below {below}: no rank is both"):
            browse.queries(reg, rid, rank_above=above, rank_below=below, describe=False)
    with pytest.raises(UsageError, match="stored each query's top 60 only.*Allowed: --rank-below 2 to 61"):
        browse.queries(reg, rid, rank_below=62, describe=False)
    # the whole gallery stored: every rank is known, any bound is exact
    whole = _run(reg, tmp_path, [1, 30], gallery_size=60)
    assert [q.target_rank for q in browse.queries(reg, whole, rank_below=1000, describe=False).queries] == [
        1,
        30,
    ]


def test_cli_rank_range(tmp_path):
    from helpers import invoke

    (tmp_path / "experiments.yaml").write_text("experiments: {}\n")
    reg = Registry(tmp_path / "runs" / "registry.db")
    rid = _run(reg, tmp_path, [1, 12, None, 3, 10], gallery_size=500)
    reg.close()
    res = invoke(tmp_path, "browse", str(rid), "--rank-above", "2", "--rank-below", "11")
    assert res.exit_code == 0, res.output
    assert "5 queries · 2 match rank>2 rank<11" in res.output
    assert [line.split()[0] for line in res.output.splitlines() if line.startswith("#")] == ["#3", "#4"]
    res = invoke(tmp_path, "browse", str(rid), "--rank-below", "4", "-f", "jsonl")
    assert [json.loads(x)["target_rank"] for x in res.output.splitlines()] == [1, 3]
    res = invoke(tmp_path, "browse", str(rid), "--rank-above", "5", "--rank-below", "6")
    assert res.exit_code == 2 and "no rank is both worse than 5 and better than 6" in res.output
    assert "Traceback" not in res.output
