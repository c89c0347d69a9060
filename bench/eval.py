"""Evaluation throughput: our ``evaluate()`` vs a bare loop over the same model and batches, idle and under load.

Sets up a throw-away project (synthetic set, the demo's DWC by default), builds the trainer's dataset, decoded-image
cache and model (``Trainer.setup()``), then times, alternating which goes first, ``--repeat`` rounds of

* ``ours``: :func:`dwc_core.engine.evaluate.evaluate` — batch gathers from the cache, uint8 to the device, encode
  gallery and queries, exact tie-ordered ranking, Recall@K, per-phase timings;
* ``bare``: the floor — the same batches (one fancy index each, permute, ``.to(device)``), the same
  ``encode_gallery`` / ``encode_queries`` calls under the same autocast, one ``q @ gᵀ`` + ``topk`` per chunk.

Images/s counts gallery images + query references. Reported: the medians and ``bare / ours`` (target ≤ 1.1×).
Then the same while a second process keeps every core busy (``--load`` processes of a numpy spin loop, default
one per core): ``loaded / idle`` time of ours (target: slows ≤ 2×), beside the bare loop's.

Run by hand: ``.venv/bin/python bench/eval.py [--num-test 1000] [--image-size 64] [--device cpu] [--repeat 3]``;
``--size full`` evaluates full-size DWC (CLIP RN50 + ResNet-50, random weights) at 224 px instead.
Not a test.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dwc_core.engine.evaluate import evaluate
from dwc_core.engine.train import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from train_step import FULL_DWC, TINY_MODELS, load, queue_experiment  # noqa: E402


def make_project(root: Path, args) -> tuple[Path, int]:
    experiment = {
        "dataset": {
            "name": "synthetic",
            "num_train": 200,
            "num_test": args.num_test,
            "image_size": 224 if args.size == "full" else args.image_size,
        },
        "model": {"name": "dwc", **FULL_DWC}
        if args.size == "full"
        else {"name": args.method, **TINY_MODELS[args.method]},
        "trainer": {"epochs": 1, "batch_size": 32, "num_workers": 0, "device": args.device},
        "eval": {"batch_size": args.batch_size, "query_results": False},
    }
    return queue_experiment(root, experiment)


@torch.inference_mode()
def bare_eval(method, ds, cache, device, bs: int, autocast, k: int = 50) -> int:
    """The floor: same batches, same encoder calls, one matmul + topk per chunk; returns images encoded."""
    method.eval()
    n = 0
    for es in ds.eval_sets.values():
        g, q = [], []
        for a in range(0, len(es.gallery), bs):
            idx = np.asarray(es.gallery[a : a + bs])
            x = torch.from_numpy(cache.array[idx]).permute(0, 3, 1, 2).to(device)
            with autocast():
                g.append(method.encode_gallery(x).float())
        for a in range(0, len(es.queries), bs):
            chunk = es.queries[a : a + bs]
            x = (
                torch.from_numpy(cache.array[np.asarray([qq.ref for qq in chunk])])
                .permute(0, 3, 1, 2)
                .to(device)
            )
            with autocast():
                q.append(method.encode_queries(x, [qq.text for qq in chunk]).float())
        gal, qs = torch.cat(g), torch.cat(q)
        for a in range(0, qs.size(0), 2048):
            (qs[a : a + 2048] @ gal.T).topk(min(k, gal.size(0)), dim=1)
        n += len(es.gallery) + len(es.queries)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n


def spin(_: int) -> None:
    """One busy core (a pure-Python loop: no BLAS threads of its own)."""
    x = 0
    while True:
        x = (x * 1103515245 + 12345) % 2147483648


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="dwc", choices=sorted(TINY_MODELS))
    ap.add_argument("--num-test", type=int, default=1000)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--size",
        default="tiny",
        choices=("tiny", "full"),
        help="full: DWC with CLIP RN50 + ResNet-50 at 224 px",
    )
    ap.add_argument(
        "--load", type=int, default=os.cpu_count() or 2, help="busy processes for the loaded rounds"
    )
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    print(f"load average at start: {load()}")
    with tempfile.TemporaryDirectory(prefix="dwc-bench-eval-") as tmp:
        registry_path, run_id = make_project(Path(tmp), args)
        trainer = Trainer(run_id, registry_path)
        trainer.setup()
        dev, m = trainer.device, trainer.method
        images = sum(len(es.gallery) + len(es.queries) for es in trainer.ds.eval_sets.values())
        print(
            f"{'full-size dwc' if args.size == 'full' else args.method}, {images} images per evaluation "
            f"({args.num_test} test queries, {224 if args.size == 'full' else args.image_size}px), "
            f"batch {args.batch_size}, device {dev}, {torch.get_num_threads()} torch threads"
        )

        def ours() -> float:
            t0 = time.perf_counter()
            res = evaluate(m, trainer.ds, trainer.cache, dev, trainer.ecfg, trainer.autocast)
            ours.timings = res.timings
            return time.perf_counter() - t0

        def bare() -> float:
            t0 = time.perf_counter()
            bare_eval(m, trainer.ds, trainer.cache, dev, args.batch_size, trainer.autocast)
            return time.perf_counter() - t0

        ours(), bare()  # warm-up

        def rounds(label: str) -> dict[str, float]:
            times: dict[str, list[float]] = {"ours": [], "bare": []}
            for rep in range(args.repeat):
                order = [("ours", ours), ("bare", bare)]
                for name, fn in order if rep % 2 == 0 else order[::-1]:
                    times[name].append(fn())
                    print(
                        f"  {label} round {rep + 1}: {name} {times[name][-1]:.2f}s ({images / times[name][-1]:.0f} img/s)"
                    )
            return {k: statistics.median(v) for k, v in times.items()}

        idle = rounds("idle")
        phases = ", ".join(f"{k} {v:.2f}s" for k, v in ours.timings.items())
        ctx = mp.get_context("spawn")
        with ctx.Pool(args.load) as pool:
            pool.map_async(spin, range(args.load))
            time.sleep(2.0)
            loaded = rounds(f"loaded ({args.load} busy processes)")
            pool.terminate()
        trainer.reporter.close()
    print()
    print(f"phases of our last idle evaluation: {phases}")
    print("            ours img/s   bare img/s   ours time / bare time (target ≤ 1.1×)")
    for label, r in (("idle", idle), ("loaded", loaded)):
        print(
            f"{label:8s} {images / r['ours']:12.0f} {images / r['bare']:12.0f}   {r['ours'] / r['bare']:.2f}×"
        )
    print(
        f"under load ours slows {loaded['ours'] / idle['ours']:.2f}× (target ≤ 2×), the bare loop "
        f"{loaded['bare'] / idle['bare']:.2f}×; load average at end: {load()}"
    )


if __name__ == "__main__":
    main()
