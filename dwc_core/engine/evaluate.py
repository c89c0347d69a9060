"""Embeddings → Recall@K per dataset protocol, and per-query top-K rankings for the browser.

Ranking is a chunked matrix multiply + ``topk`` on the device: at most ``chunk × gallery`` scores exist at once,
never the full query × gallery matrix. The reference image is masked (score −inf) when the protocol says so.
Hits follow the evaluation set's match rules (exact image, same label, same caption, ...).

Metric names: one evaluation set → ``R@K`` (main rule), ``<rule>/R@K`` (extra rules) and ``mean`` (mean of the
main R@K); several sets (FashionIQ ``all``) → ``<set>/R@K``, ``avg/R@K`` (arithmetic mean over sets) and
``mean`` (mean of the ``avg/R@K``), as the papers report them. ``mean`` is the model-selection metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from dwc_core.data.loading import ImageCache, IndexedImages, loader_kwargs
from dwc_core.data.types import CIRDataset, EvalSet


@dataclass
class Ranking:
    indices: torch.Tensor  # (Q, k) gallery positions, best first
    scores: torch.Tensor  # (Q, k)


def rank(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    ref_positions: torch.Tensor | None = None,
    chunk_size: int = 2048,
) -> Ranking:
    """Top-k gallery positions per query by dot product, masking each query's reference position (−1 = none).

    Equal scores are ordered by gallery position (lower first): ``topk`` returns an unspecified order among ties,
    so its k results are re-sorted stably by (score desc, position asc) — only the rows that hold a tie, the
    others being strictly decreasing already. Exact for every K below k unless more than k − K gallery items tie
    with the K-th.
    """
    k = min(k, gallery.size(0))
    out_idx, out_scores = [], []
    for start in range(0, queries.size(0), chunk_size):
        q = queries[start : start + chunk_size]
        scores = q @ gallery.T  # a transposed view: BLAS reads it as is, no copy of the gallery
        if ref_positions is not None:
            refs = ref_positions[start : start + chunk_size].to(scores.device)
            rows = torch.nonzero(refs >= 0).squeeze(1)
            if rows.numel():
                scores[rows, refs[rows]] = float("-inf")
        s, i = scores.topk(k, dim=1)  # sorted by score desc; order among equal scores unspecified
        del scores  # free this chunk before the next one is allocated
        tied = torch.nonzero((s[:, 1:] == s[:, :-1]).any(dim=1)).squeeze(1)
        if tied.numel():
            ts, ti = s[tied], i[tied]
            by_pos = ti.argsort(dim=1)
            ti, ts = ti.gather(1, by_pos), ts.gather(1, by_pos)
            ts, by_score = ts.sort(dim=1, descending=True, stable=True)
            s[tied], i[tied] = ts, ti.gather(1, by_score)
        out_idx.append(i)
        out_scores.append(s)
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
    method, cache: ImageCache, indices: list[int], device, batch_size: int, autocast, workers: int = 0
):
    loader = torch.utils.data.DataLoader(
        IndexedImages(indices, cache), batch_size=batch_size, shuffle=False,
        **loader_kwargs(workers, device.type == "cuda"),
    )  # fmt: skip
    out = []
    for images in loader:
        with autocast():
            out.append(method.encode_gallery(images.to(device, non_blocking=True)).float())
    return torch.cat(out) if out else torch.zeros(0, 1, device=device)


@torch.inference_mode()
def encode_queries(method, cache: ImageCache, queries: list, device, batch_size: int, autocast):
    out = []
    for start in range(0, len(queries), batch_size):
        chunk = queries[start : start + batch_size]
        images = torch.from_numpy(cache.get([q.ref for q in chunk])).permute(0, 3, 1, 2).to(device)
        with autocast():
            out.append(method.encode_queries(images, [q.text for q in chunk]).float())
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


def evaluate(
    method,
    ds: CIRDataset,
    cache: ImageCache,
    device: torch.device,
    eval_cfg: dict,
    autocast,
    eval_sets: dict[str, EvalSet] | None = None,
    workers: int = 0,
    dist=None,
) -> EvalResult | None:
    """Encode and score every evaluation set of ``ds`` with ``method`` (switched to eval mode and back).

    With a data-parallel ``dist``, every rank encodes a slice; rank 0 scores and gets the result, the other
    ranks get ``None``.
    """
    was_training = method.training
    method.eval()
    sets_in = eval_sets or ds.eval_sets
    try:
        sets = {}
        bs = int(eval_cfg.get("batch_size", 128))
        for name, es in sets_in.items():
            ks = list(eval_cfg.get("ks") or es.ks)
            g = _encode_sharded(
                lambda idx: encode_images(method, cache, idx, device, bs, autocast, workers),
                es.gallery,
                dist,
                device,
            )
            q = _encode_sharded(
                lambda qs: encode_queries(method, cache, qs, device, bs, autocast), es.queries, dist, device
            )
            if dist is not None and not dist.is_main:
                continue
            keep, chunk = int(eval_cfg.get("store_topk", 50)), int(eval_cfg.get("chunk_size", 2048))
            sets[name] = score_set(es, q, g, ks, keep, chunk)
        if dist is not None and not dist.is_main:
            return None
        ks_all = list(eval_cfg.get("ks") or next(iter(sets_in.values())).ks)
        return EvalResult(combine(sets, ks_all), sets)
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
