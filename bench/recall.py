"""Recall@K ranking at Fashion200k size: ours vs the bare ``mm + topk`` floor vs a TIRG-style per-query loop.

Random unit vectors (float32): 33,480 queries × 29,789 gallery items × 1,024 dimensions by default. Every query
has a reference image at a random gallery position (masked from its own ranking, as the Fashion200k protocol
does) and a label; the gallery has about 5 items per label and a hit is a gallery item with the query's label.
Three variants run on the same data in one process:

* ``ours``: :func:`dwc_core.engine.evaluate.score_set` (which calls ``rank()``: chunked ``mm`` + ``topk`` with
  reference masking and the stable tie re-sort, then first-hit ranks and Recall@{1,10,50}) at the default chunk
  size;
* ``floor``: plain chunked ``q @ g.T`` + ``topk(50)`` with the same chunks: no masking, no re-sort, no hits;
* ``loop``: the per-query numpy loop of TIRG's ``test_retrieval`` (one dot product with the gallery, reference
  score set to -1e10, full ``argsort``, top 110, hit check), timed on a subset of the queries and extrapolated
  linearly to all of them.

``floor`` and ``ours`` alternate ``--repeat`` times; the best wall and CPU time of each is reported (the machine
may be shared: CPU time, summed over threads, is less disturbed by other processes than wall time). Peak memory
is the growth of the process's resident set (``VmHWM`` after resetting it through ``/proc/self/clear_refs``)
during one variant, and on CUDA also ``torch.cuda.max_memory_allocated``; a variant's output (its top-k) is part
of its peak.

Run by hand: ``.venv/bin/python bench/recall.py [--queries N --gallery N --dim D --chunk N --device cpu|cuda]``.
Targets (2-core CPU): ours ≤ 1.3× floor, ≥ 4× faster than the loop, peak memory bounded by the chunk (no
queries × gallery matrix). Not a test.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import time
from dataclasses import dataclass

import numpy as np
import torch

from dwc_core.config.schema.datasets import DEFAULT_KS
from dwc_core.data.types import EvalSet, Query
from dwc_core.engine.evaluate import score_set

KS = list(DEFAULT_KS["fashion200k"])  # [1, 10, 50]
KEEP = 50  # store_topk default: rank() keeps max(max(ks), keep) = 50
LOOP_TOP = 110  # TIRG keeps the top 110 per query


# --------------------------------------------------------------------------------------------- memory probes
def _status_kb(name: str) -> int:
    with open("/proc/self/status") as fh:
        match = re.search(rf"^{name}:\s+(\d+) kB", fh.read(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass
class Timing:
    wall: float  # seconds
    cpu: float  # process CPU seconds, all threads (less sensitive to other processes on a shared machine)
    rss: int | None  # peak resident-set growth, bytes
    gpu: int | None  # peak CUDA allocation growth, bytes


class Probe:
    """Wall time, CPU time and peak memory growth of one block (RSS; on CUDA also the allocator's peak)."""

    def __init__(self, device: torch.device):
        self.device = device

    def run(self, fn):
        gc.collect()
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            gpu_base = torch.cuda.memory_allocated()
        exact = _reset_peak()
        base = _status_kb("VmRSS")
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rss = (_status_kb("VmHWM") - base) * 1024 if exact else None
        gpu = torch.cuda.max_memory_allocated() - gpu_base if cuda else None
        return out, Timing(wall, cpu, rss, gpu)


def load() -> str:
    """The 1-minute load average and the core count: above the cores, other processes share the CPU."""
    with open("/proc/loadavg") as fh:
        one = fh.read().split()[0]
    return f"{one} on {os.cpu_count()} cores"


def mb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


# ------------------------------------------------------------------------------------------------------- data
def make_data(n_q: int, n_g: int, dim: int, per_label: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(n_q, dim, generator=gen), dim=1)
    g = torch.nn.functional.normalize(torch.randn(n_g, dim, generator=gen), dim=1)
    g_labels = torch.randint(0, max(1, n_g // per_label), (n_g,), generator=gen)
    targets = torch.randint(0, n_g, (n_q,), generator=gen)
    q_labels = g_labels[targets]  # every query has at least one hit (its target)
    refs = torch.randint(0, n_g, (n_q,), generator=gen)
    return q, g, g_labels, q_labels, refs, targets


def make_eval_set(g_labels, q_labels, refs, targets) -> EvalSet:
    n_g = g_labels.numel()
    queries = [Query(ref=int(r), text="", target=int(t)) for r, t in zip(refs, targets, strict=True)]
    return EvalSet(
        name="bench", queries=queries, gallery=list(range(n_g)), ks=KS, mask_reference=True,
        match={"main": (g_labels.tolist(), q_labels.tolist())},
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------- variants
def floor(q: torch.Tensor, g: torch.Tensor, k: int, chunk: int):
    out_s, out_i = [], []
    for start in range(0, q.size(0), chunk):
        s, i = (q[start : start + chunk] @ g.T).topk(k, dim=1)
        out_s.append(s)
        out_i.append(i)
    return torch.cat(out_s), torch.cat(out_i)


def tirg_loop(q: np.ndarray, g: np.ndarray, refs: np.ndarray, g_labels: np.ndarray, q_labels: np.ndarray):
    """TIRG's test_retrieval: per query one dot product, mask the source image, full argsort, top 110."""
    first = np.empty(q.shape[0], dtype=np.int64)
    for i in range(q.shape[0]):
        sims = q[i : i + 1].dot(g.T)
        sims[0, refs[i]] = -10e10  # remove query image
        nns = np.argsort(-sims[0, :])[:LOOP_TOP]
        hits = g_labels[nns] == q_labels[i]
        first[i] = int(hits.argmax()) if hits.any() else LOOP_TOP
    return first


# ------------------------------------------------------------------------------------------------------- main
def describe(t: Timing) -> str:
    gpu = f", GPU +{mb(t.gpu)}" if t.gpu is not None else ""
    return f"{t.wall:7.2f}s wall, {t.cpu:7.2f}s CPU, peak RSS +{mb(t.rss)}{gpu}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=33480)
    ap.add_argument("--gallery", type=int, default=29789)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=2048, help="queries per matrix multiply (eval.chunk_size)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--per-label", type=int, default=5, help="gallery items per label (about)")
    ap.add_argument("--loop-queries", type=int, default=1000, help="queries the per-query loop is timed on")
    ap.add_argument("--repeat", type=int, default=3, help="alternating floor/ours repetitions (best is kept)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average at start: {load()}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")

    n_q, n_g, dim, chunk = args.queries, args.gallery, args.dim, args.chunk
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"ranking {n_q:,} queries × {n_g:,} gallery × {dim}-d float32 on {name} "
        f"({torch.get_num_threads()} torch threads), chunk {chunk}, top-{KEEP}, R@{KS}"
    )
    t0 = time.perf_counter()
    q_cpu, g_cpu, g_lab, q_lab, refs, targets = make_data(n_q, n_g, dim, args.per_label, args.seed)
    es = make_eval_set(g_lab, q_lab, refs, targets)
    q, g = q_cpu.to(device), g_cpu.to(device)
    print(f"data ready in {time.perf_counter() - t0:.1f}s (not timed)")
    full_bytes = n_q * n_g * 4
    chunk_bytes = min(chunk, n_q) * n_g * 4
    print(
        f"a full {n_q:,} × {n_g:,} float32 score matrix would be {mb(full_bytes)}; one chunk of scores is "
        f"{min(chunk, n_q):,} × {n_g:,} × 4 B = {mb(chunk_bytes)}"
    )
    probe = Probe(device)
    if not _reset_peak():
        print("note: /proc/self/clear_refs is not writable here; RSS peaks are not measured")

    # warm-up (thread pools, allocator, first-call costs) on a small slice
    w = min(n_q, 256)
    floor(q[:w], g, KEEP, chunk)
    score_set(make_eval_set(g_lab, q_lab[:w], refs[:w], targets[:w]), q[:w], g, KS, KEEP, chunk)

    floors: list[Timing] = []
    ours: list[Timing] = []
    for rep in range(args.repeat):
        (_, f_idx), t = probe.run(lambda: floor(q, g, KEEP, chunk))
        floors.append(t)
        print(f"  [{rep + 1}/{args.repeat}] floor {describe(t)}")
        res, t = probe.run(lambda: score_set(es, q, g, KS, KEEP, chunk))
        ours.append(t)
        print(f"  [{rep + 1}/{args.repeat}] ours  {describe(t)}")

    n_loop = min(args.loop_queries, n_q)
    qn, gn = q_cpu.numpy(), g_cpu.numpy()
    loop_first, lt = Probe(torch.device("cpu")).run(
        lambda: tirg_loop(qn[:n_loop], gn, refs.numpy(), g_lab.numpy(), q_lab.numpy())
    )
    loop_wall, loop_cpu = lt.wall * n_q / n_loop, lt.cpu * n_q / n_loop
    print(f"  loop on {n_loop:,} queries: {describe(lt)}")

    f_wall, o_wall = min(t.wall for t in floors), min(t.wall for t in ours)
    f_cpu, o_cpu = min(t.cpu for t in floors), min(t.cpu for t in ours)
    print()
    print("best of the runs            wall        CPU")
    print(f"floor (mm + topk)       {f_wall:8.2f}s  {f_cpu:8.2f}s")
    print(f"ours  (score_set)       {o_wall:8.2f}s  {o_cpu:8.2f}s")
    print(
        f"loop  (TIRG, numpy)     {loop_wall:8.2f}s  {loop_cpu:8.2f}s   EXTRAPOLATED linearly from {n_loop:,} "
        f"queries ({lt.wall / n_loop * 1e3:.2f} ms/query wall, always numpy on the CPU)"
    )
    print(f"ours / floor = {o_wall / f_wall:.2f} wall, {o_cpu / f_cpu:.2f} CPU   (target ≤ 1.30)")
    print(f"loop / ours  = {loop_wall / o_wall:.1f}× wall, {loop_cpu / o_cpu:.1f}× CPU   (CPU target ≥ 4×)")

    def peak(runs: list[Timing], attr: str):
        values = [getattr(t, attr) for t in runs if getattr(t, attr) is not None]
        return max(values) if values else None

    print(
        f"peak RSS growth: ours {mb(peak(ours, 'rss'))}, floor {mb(peak(floors, 'rss'))}, loop {mb(lt.rss)} "
        f"(one chunk of scores {mb(chunk_bytes)}; full matrix {mb(full_bytes)})"
    )
    if device.type == "cuda":
        print(f"peak GPU allocation growth: ours {mb(peak(ours, 'gpu'))}, floor {mb(peak(floors, 'gpu'))}")
    ours_peak = peak(ours, "gpu" if device.type == "cuda" else "rss")
    if ours_peak is not None:
        held = "no" if ours_peak < full_bytes / 2 else "POSSIBLY"
        print(
            f"ours held a {n_q:,} × {n_g:,} matrix at once: {held} "
            f"(peak {ours_peak / full_bytes:.0%} of its size, {ours_peak / chunk_bytes:.2f}× one chunk)"
        )

    # sanity: the variants rank alike (random float scores have no ties in practice)
    first = res.first_ranks.cpu().numpy()[:n_loop]
    agree = float((first == np.minimum(loop_first, KEEP)).mean()) * 100
    same_top = float((res.ranking.indices[:, 0].cpu() == f_idx[:, 0].cpu()).float().mean()) * 100
    print(
        f"check: first-hit rank ours = loop on {agree:.2f}% of the loop's queries; top-1 ours = floor on "
        f"{same_top:.2f}% of queries (may differ only where the floor's top-1 is the masked reference)"
    )
    print(f"load average at end: {load()}")
    print(
        f"metrics (random vectors: near chance): {', '.join(f'{k} {v:.3f}' for k, v in res.metrics.items())}"
    )


if __name__ == "__main__":
    main()
