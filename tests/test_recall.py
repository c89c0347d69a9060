"""Recall@K against a brute-force reference: ties, duplicate-label galleries, masked references, chunking."""

from __future__ import annotations

import random

import torch

from dwc_core.data.types import EvalSet, Query
from dwc_core.engine.evaluate import rank, score_set


def brute_force_first_ranks(q, g, gallery_keys, query_keys, ref_pos):
    """Python loops: score every pair, drop the masked reference, order by (score desc, position asc)."""
    ranks = []
    for i in range(q.shape[0]):
        scored = []
        for j in range(g.shape[0]):
            if ref_pos[i] == j:
                continue
            scored.append((-float(q[i] @ g[j]), j))
        scored.sort()
        first = next((r for r, (_, j) in enumerate(scored) if gallery_keys[j] == query_keys[i]), None)
        ranks.append(first)
    return ranks


def make_case(seed: int, n_q=60, n_g=90, dim=6, levels=3):
    gen = torch.Generator().manual_seed(seed)
    rnd = random.Random(seed)
    # few distinct values → many exactly tied scores
    q = torch.randint(0, levels, (n_q, dim), generator=gen).float()
    g = torch.randint(0, levels, (n_g, dim), generator=gen).float()
    g[10] = g[11]  # identical gallery items
    labels = [rnd.randrange(25) for _ in range(n_g)]  # duplicate labels: several hits per query
    gallery = list(range(100, 100 + n_g))  # image indices differ from positions
    queries = []
    for i in range(n_q):
        ref = rnd.choice(gallery + [999])  # sometimes the reference is not in the gallery
        queries.append(Query(ref=ref, text=f"q{i}", target=rnd.choice(gallery)))
    return q, g, gallery, labels, queries


def test_recall_matches_brute_force_with_ties_duplicates_and_masking():
    for seed in range(4):
        q, g, gallery, labels, queries = make_case(seed)
        label_of = dict(zip(gallery, labels, strict=True))
        ks = [1, 5, 10]
        for mask in (True, False):
            es = EvalSet(
                "t", queries, gallery, ks, mask_reference=mask,
                match={"main": (labels, [label_of[x.target] for x in queries]), "exact": (gallery, [x.target for x in queries])},
            )  # fmt: skip
            res = score_set(es, q, g, ks, keep=50, chunk_size=7)
            pos = {img: p for p, img in enumerate(gallery)}
            ref_pos = [pos.get(x.ref, -1) if mask else -1 for x in queries]
            for rule, prefix in (("main", ""), ("exact", "exact/")):
                gk, qk = es.match[rule]
                ranks = brute_force_first_ranks(q, g, gk, qk, ref_pos)
                for k in ks:
                    expected = 100.0 * sum(r is not None and r < k for r in ranks) / len(ranks)
                    assert abs(res.metrics[f"{prefix}R@{k}"] - expected) < 1e-9, (seed, mask, rule, k)
            if mask:  # the reference never appears in its own ranking
                for i, x in enumerate(queries):
                    if x.ref in pos:
                        assert pos[x.ref] not in res.ranking.indices[i].tolist()


def test_chunking_does_not_change_the_ranking():
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(257, 16, generator=gen), dim=1)
    g = torch.nn.functional.normalize(torch.randn(300, 16, generator=gen), dim=1)
    refs = torch.randint(-1, 300, (257,), generator=gen)
    a = rank(q, g, 20, refs, chunk_size=1000)
    b = rank(q, g, 20, refs, chunk_size=13)
    assert torch.equal(a.indices, b.indices) and torch.allclose(a.scores, b.scores)
    full = (q @ g.t()).index_put_(
        (torch.nonzero(refs >= 0).squeeze(1), refs[refs >= 0]), torch.tensor(float("-inf"))
    )
    assert torch.equal(a.indices[:, 0], full.argmax(dim=1))
