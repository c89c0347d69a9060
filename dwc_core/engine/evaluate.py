"""Embeddings → Recall@K per dataset protocol, and per-query top-K rankings for the browser.

Ranking is a chunked matrix multiply + ``topk`` on the device: at most ``chunk × gallery`` scores exist at once,
never the full query × gallery matrix. The reference image is masked (score −inf) when the protocol says so.
Hits follow the evaluation set's match rules (exact image, same label, same caption, ...).

Ranking rule (exact, whatever ``eval.chunk_size``): gallery items are ordered by score, descending; equal scores by
gallery position, ascending — also when a group of equal scores crosses the cut-off ``max(K)``, where the
lowest-positioned members of the group are the ones kept. Scores are computed in blocks of exactly
:data:`SCORE_BLOCK` queries (the last one zero-padded), so a query's scores never depend on how many queries
share its matrix multiply: ``eval.chunk_size`` changes memory use only, never a score or a rank.

Encoding reads whole batches from the image cache (one fancy index each), moves uint8 to the device, then
permutes and normalises there. Each phase's wall time (encode gallery, encode queries, rank) is returned in
:attr:`EvalResult.timings` and reported by the trainer as metrics.

Metric names: one evaluation set → ``R@K`` (main rule), ``<rule>/R@K`` (extra rules) and ``mean`` (mean of the
main R@K); several sets (FashionIQ ``all``) → ``<set>/R@K``, ``avg/R@K`` (arithmetic mean over sets) and
``mean`` (mean of the ``avg/R@K``), as the papers report them. ``mean`` is the model-selection metric.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from dwc_core.data.loading import ImageCache, image_batches
from dwc_core.data.types import CIRDataset, EvalSet

#: queries per score matrix multiply; chunks are whole numbers of blocks, so scores are chunk-size independent.
#: Each block reads the whole gallery once: 64 made ranking a Fashion200k-sized set 2x the bare mm + topk on a
#: CPU (bench/recall.py); at 512 the extra reads are a few percent.
SCORE_BLOCK = 512


@dataclass
class Ranking:
    indices: torch.Tensor  # (Q, k) gallery positions, best first
    scores: torch.Tensor  # (Q, k)


def _scores(q: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """(len(q), G) dot products, computed SCORE_BLOCK queries at a time (the last block zero-padded)."""
    out = q.new_empty(q.size(0), gallery.size(0))
    g_t = gallery.T  # a transposed view: BLAS reads it as is, no copy of the gallery
    for a in range(0, q.size(0), SCORE_BLOCK):
        block = q[a : a + SCORE_BLOCK]
        n = block.size(0)
        if n < SCORE_BLOCK:
            block = torch.cat([block, block.new_zeros(SCORE_BLOCK - n, block.size(1))])
            out[a : a + n] = (block @ g_t)[:n]
        else:
            torch.mm(block, g_t, out=out[a : a + n])
    return out


def _order_ties(
    s: torch.Tensor, i: torch.Tensor, scores: torch.Tensor, k: int, next_best: torch.Tensor | None
) -> None:
    """In place: make the top-k (``s``, ``i``) follow (score desc, position asc) exactly, ties included.

    ``topk`` orders equal scores arbitrarily and, when a group of equal scores crosses rank k, keeps an arbitrary
    subset of it. Rows whose k-th score is shared with items left out get that group's lowest positions instead;
    rows holding any tie are then re-sorted stably by position, then by score. ``next_best``: each row's (k+1)-th
    score (None when k is the whole gallery): an item left out can tie with the k-th only where it equals the k-th,
    so only those rows are scanned in full.
    """
    kth = s[:, k - 1 : k]
    outside = torch.zeros(s.size(0), dtype=torch.bool, device=s.device)
    if next_best is not None:
        maybe = torch.nonzero(next_best == kth.squeeze(1)).squeeze(1)
        if maybe.numel():
            outside[maybe] = (scores[maybe] == kth[maybe]).sum(dim=1) > (s[maybe] == kth[maybe]).sum(dim=1)
    for r in torch.nonzero(outside).squeeze(1).tolist():
        above = s[r] > kth[r]
        n_above = int(above.sum())
        tied_pos = torch.nonzero(scores[r] == kth[r]).squeeze(1)[: k - n_above]  # ascending positions
        i[r] = torch.cat([i[r][above], tied_pos])
        s[r] = torch.cat([s[r][above], scores[r][tied_pos]])
    tied = torch.nonzero((s[:, 1:] == s[:, :-1]).any(dim=1)).squeeze(1)
    if tied.numel():
        ts, ti = s[tied], i[tied]
        by_pos = ti.argsort(dim=1)
        ti, ts = ti.gather(1, by_pos), ts.gather(1, by_pos)
        ts, by_score = ts.sort(dim=1, descending=True, stable=True)
        s[tied], i[tied] = ts, ti.gather(1, by_score)


def rank(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    ref_positions: torch.Tensor | None = None,
    chunk_size: int = 2048,
) -> Ranking:
    """Top-k gallery positions per query by dot product, masking each query's reference position (−1 = none).

    Order: score descending, then gallery position ascending, exactly (see the module summary); the result does
    not depend on ``chunk_size`` (rounded up to a whole number of :data:`SCORE_BLOCK` queries).
    """
    k = min(k, gallery.size(0))
    chunk_size = max(SCORE_BLOCK, -(-chunk_size // SCORE_BLOCK) * SCORE_BLOCK)
    out_idx, out_scores = [], []
    for start in range(0, queries.size(0), chunk_size):
        scores = _scores(queries[start : start + chunk_size], gallery)
        if ref_positions is not None:
            refs = ref_positions[start : start + chunk_size].to(scores.device)
            rows = torch.nonzero(refs >= 0).squeeze(1)
            if rows.numel():
                scores[rows, refs[rows]] = float("-inf")
        # sorted by score desc; order among equal scores unspecified. One more than k where the gallery has it:
        # the (k+1)-th score tells which rows may have a tie crossing the cut-off
        wider = k < scores.size(1)
        s, i = scores.topk(k + 1 if wider else k, dim=1)
        next_best = s[:, k].clone() if wider and k else None
        s, i = s[:, :k].contiguous(), i[:, :k].contiguous()
        if k:
            _order_ties(s, i, scores, k, next_best)
        del scores  # free this chunk before the next one is allocated
        out_idx.append(i)
        out_scores.append(s)
    if not out_idx:
        dev = queries.device
        return Ranking(torch.zeros(0, k, dtype=torch.long, device=dev), torch.zeros(0, k, device=dev))
    return Ranking(torch.cat(out_idx), torch.cat(out_scores))


def first_hit_ranks(
    ranking_idx: torch.Tensor, gallery_keys: torch.Tensor, query_keys: torch.Tensor
) -> torch.Tensor:
    """0-based rank of the first hit within the top-k per query; k when there is none."""
    hits = gallery_keys[ranking_idx] == query_keys.view(-1, 1)
    k = ranking_idx.size(1)
    any_hit = hits.any(dim=1)
    first = hits.to(torch.int8).argmax(dim=1)
    return torch.where(any_hit, first, torch.full_like(first, k))


def recall_at(first_ranks: torch.Tensor, ks: list[int]) -> dict[int, float]:
    n = max(1, first_ranks.numel())
    return {k: float((first_ranks < k).sum().item()) * 100.0 / n for k in ks}


@dataclass
class SetResult:
    name: str
    metrics: dict[str, float]
    ranking: Ranking
    first_ranks: torch.Tensor  # main rule
    num_queries: int
    gallery_size: int
    skipped_queries: int


@dataclass
class EvalResult:
    metrics: dict[str, float]
    sets: dict[str, SetResult] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase (encode_gallery_s, ...)

    @property
    def num_queries(self) -> int:
        return sum(s.num_queries for s in self.sets.values())

    @property
    def gallery_size(self) -> int:
        return sum(s.gallery_size for s in self.sets.values())

    @property
    def skipped_queries(self) -> int:
        return sum(s.skipped_queries for s in self.sets.values())


def score_set(
    eval_set: EvalSet,
    query_emb: torch.Tensor,
    gallery_emb: torch.Tensor,
    ks: list[int],
    keep: int = 50,
    chunk_size: int = 2048,
) -> SetResult:
    """Rank and score one evaluation set from its embeddings (rows in query / gallery order)."""
    device = query_emb.device
    position = {img: pos for pos, img in enumerate(eval_set.gallery)}
    refs = None
    if eval_set.mask_reference:
        refs = torch.tensor(
            [position.get(q.ref, -1) for q in eval_set.queries], dtype=torch.long, device=device
        )
    k = max(max(ks), keep)
    ranking = rank(query_emb, gallery_emb, k, refs, chunk_size)
    metrics: dict[str, float] = {}
    main_first = None
    for rule, (g_keys, q_keys) in eval_set.match.items():
        g = torch.tensor(g_keys, dtype=torch.long, device=device)
        q = torch.tensor(q_keys, dtype=torch.long, device=device)
        first = first_hit_ranks(ranking.indices, g, q)
        prefix = "" if rule == "main" else f"{rule}/"
        for kk, value in recall_at(first, ks).items():
            metrics[f"{prefix}R@{kk}"] = value
        if rule == "main":
            main_first = first
    metrics["mean"] = float(np.mean([metrics[f"R@{kk}"] for kk in ks]))
    return SetResult(
        eval_set.name, metrics, ranking, main_first, len(eval_set.queries), len(eval_set.gallery),
        eval_set.skipped_queries,
    )  # fmt: skip


def combine(sets: dict[str, SetResult], ks: list[int]) -> dict[str, float]:
    if len(sets) == 1:
        return dict(next(iter(sets.values())).metrics)
    out: dict[str, float] = {}
    for name, res in sets.items():
        for key, value in res.metrics.items():
            out[f"{name}/{key}"] = value
    for kk in ks:
        out[f"avg/R@{kk}"] = float(np.mean([res.metrics[f"R@{kk}"] for res in sets.values()]))
    out["mean"] = float(np.mean([out[f"avg/R@{kk}"] for kk in ks]))
    return out


# ----------------------------------------------------------------------------------------------------- encoding
@torch.inference_mode()
def encode_images(
    method, cache: ImageCache, indices: list[int], device, batch_size: int, autocast, check=None
) -> torch.Tensor:
    """Gallery embeddings of cached images, in ``indices`` order. ``check()`` runs between batches (it may raise
    to cancel)."""
    out = []
    for images in image_batches(cache, indices, batch_size, device):
        if check is not None:
            check()
        with autocast():
            out.append(method.encode_gallery(images).float())
    return torch.cat(out) if out else torch.zeros(0, 1, device=device)


@torch.inference_mode()
def encode_queries(
    method, cache: ImageCache, queries: list, device, batch_size: int, autocast, check=None
) -> torch.Tensor:
    """Query embeddings (reference image + modification text), in ``queries`` order."""
    out = []
    refs = [q.ref for q in queries]
    for start, images in zip(
        range(0, len(queries), batch_size), image_batches(cache, refs, batch_size, device), strict=True
    ):
        if check is not None:
            check()
        texts = [q.text for q in queries[start : start + batch_size]]
        with autocast():
            out.append(method.encode_queries(images, texts).float())
    return torch.cat(out) if out else torch.zeros(0, 1, device=device)


def _encode_sharded(encode, items: list, dist, device) -> torch.Tensor:
    """Encode this rank's slice of ``items`` and gather every slice (all rows, in order) on every rank."""
    if dist is None or not dist.enabled:
        return encode(items)
    start, stop, per = dist.shard(len(items))
    local = encode(items[start:stop])
    dim = dist.gather_dim(local.size(1) if local.size(0) else 0, device)
    if local.size(0) == 0:
        local = torch.zeros(0, dim, device=device)
    return dist.gather_rows(local, len(items), per)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(
    method,
    ds: CIRDataset,
    cache: ImageCache,
    device: torch.device,
    eval_cfg: dict,
    autocast,
    eval_sets: dict[str, EvalSet] | None = None,
    dist=None,
    check: Callable[[], None] | None = None,
) -> EvalResult | None:
    """Encode and score every evaluation set of ``ds`` with ``method`` (switched to eval mode and back).

    With a data-parallel ``dist``, every rank encodes a slice; rank 0 scores and gets the result, the other
    ranks get ``None``. ``check()`` is called between encoding batches in a single process (it may raise to
    cancel); with several ranks, whose batch counts differ, only between phases, where every rank calls it.
    """
    was_training = method.training
    method.eval()
    sets_in = eval_sets or ds.eval_sets
    per_batch = check if dist is None or not dist.enabled else None
    timings = {"encode_gallery_s": 0.0, "encode_queries_s": 0.0, "rank_s": 0.0}
    try:
        sets = {}
        bs = int(eval_cfg.get("batch_size", 128))
        for name, es in sets_in.items():
            ks = list(eval_cfg.get("ks") or es.ks)
            t0 = time.perf_counter()
            g = _encode_sharded(
                lambda idx: encode_images(method, cache, idx, device, bs, autocast, per_batch),
                es.gallery,
                dist,
                device,
            )
            _sync(device)
            t1 = time.perf_counter()
            if check is not None:
                check()
            q = _encode_sharded(
                lambda qs: encode_queries(method, cache, qs, device, bs, autocast, per_batch),
                es.queries,
                dist,
                device,
            )
            _sync(device)
            t2 = time.perf_counter()
            timings["encode_gallery_s"] += t1 - t0
            timings["encode_queries_s"] += t2 - t1
            if check is not None:
                check()
            if dist is not None and not dist.is_main:
                continue
            keep, chunk = int(eval_cfg.get("store_topk", 50)), int(eval_cfg.get("chunk_size", 2048))
            sets[name] = score_set(es, q, g, ks, keep, chunk)
            _sync(device)
            timings["rank_s"] += time.perf_counter() - t2
        if dist is not None and not dist.is_main:
            return None
        ks_all = list(eval_cfg.get("ks") or next(iter(sets_in.values())).ks)
        return EvalResult(combine(sets, ks_all), sets, timings)
    finally:
        method.train(was_training)


def query_rows(ds: CIRDataset, eval_set: EvalSet, result: SetResult, keep: int = 50) -> list[dict]:
    """Per-query rows for the registry: top-``keep`` gallery ids and scores, rank of the first hit (or None)."""
    idx = result.ranking.indices[:, :keep].cpu().numpy()
    scores = result.ranking.scores[:, :keep].float().cpu().numpy()
    first = result.first_ranks.cpu().numpy()
    gallery = np.asarray(eval_set.gallery)
    rows = []
    for qi, q in enumerate(eval_set.queries):
        rank_ = int(first[qi])
        rows.append(
            {
                "eval_set": eval_set.name,
                "qidx": qi,
                "ref_id": ds.images[q.ref].id,
                "text": q.text,
                "target_ids": [ds.images[q.target].id],
                "topk_ids": [ds.images[int(i)].id for i in gallery[idx[qi]]],
                "topk_scores": scores[qi].tolist(),
                "target_rank": rank_ + 1 if rank_ < keep else None,
            }
        )
    return rows
