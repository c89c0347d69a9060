"""Training steps/s: our trainer (``Trainer.train_epoch``) vs a minimal hand-written PyTorch loop.

Sets up a throw-away project in a temporary folder (an ``experiments.yaml`` with the synthetic dataset and a tiny
config of ``--method``), queues one run in its registry, builds ``Trainer(run_id, registry)`` in this process and
calls ``setup()`` (dataset, decoded-image cache, model, optimizers, reporter thread). Then it times

* ``trainer``: ``trainer.train_epoch(e)`` — the real loop: its DataLoader over the cached images, stop checks,
  ``method.train_step`` through a ``StepContext``, LR schedulers, loss accumulation, metric/progress reporting;
* ``hand``: the same number of steps over the same batches (the index lists of the trainer's own loader for that
  epoch, the same decoded-image cache and triplets) with nothing else: a ``torch.utils.data.DataLoader`` whose
  items are whole batches gathered from the cache array, then ``method.train_step(batch, StepContext(...))`` on a
  deep copy of the trainer's model taken right after ``setup()`` (same weights, its own optimizers).

Both are warmed up first; then ``--repeat`` rounds alternate which goes first, for each ``--workers`` setting, and
the median steps/s of each is reported with the trainer's overhead ``(hand / trainer − 1)``. Target: ≤ 10 %.
Timing covers the whole epoch, DataLoader (and worker start-up) included, for both.

Run by hand: ``.venv/bin/python bench/train_step.py [--method dwc] [--steps 60] [--workers 0 2] [--device cpu]``.
Not a test.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from dwc_core.config.experiments import ExperimentsFile
from dwc_core.engine.train import Trainer
from dwc_core.models.base import Batch, StepContext
from dwc_core.runs.registry import Registry

# tiny CPU configs per method (architectures small enough for a 2-core CPU)
TINY_MODELS: dict[str, dict] = {
    "dwc": {
        "embed_dim": 64,
        "clip": {"arch": "tiny", "pretrained": "none"},
        "cnn": {"arch": "tiny", "pretrained": "none"},
        "text": {"word_dim": 32},
    },
    "tirg": {"embed_dim": 64, "cnn": {"arch": "tiny"}, "text": {"word_dim": 32, "hidden": 64}},
    "amc": {
        "embed_dim": 64,
        "hid_router": 32,
        "heads": 4,
        "cnn": {"arch": "tiny", "pretrained": "none"},
        "text": {"word_dim": 32},
    },
    "composeae": {
        "embed_dim": 64,
        "cnn": {"arch": "tiny", "pretrained": "none"},
        "text_encoder": {"arch": "tiny", "pretrained": "none"},
    },
    "clip4cir": {"clip": {"arch": "tiny", "pretrained": "none"}},
}


class BatchGather(torch.utils.data.Dataset):
    """Item i = batch i, gathered in one fancy index from the cache array (what a hand-written loop would do)."""

    def __init__(self, batches: list[list], cache):
        self.batches = [[t for t, _seed in batch] for batch in batches]
        self.cache = cache

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int):
        batch = self.batches[b]
        images = self.cache.array  # (N, H, W, 3) uint8, memory-mapped
        ref = torch.from_numpy(images[np.array([t.ref for t in batch])]).permute(0, 3, 1, 2).contiguous()
        tgt = torch.from_numpy(images[np.array([t.target for t in batch])]).permute(0, 3, 1, 2).contiguous()
        labels = torch.tensor([t.label for t in batch], dtype=torch.long)
        return ref, tgt, [t.text for t in batch], labels


class HandLoop:
    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.method = copy.deepcopy(trainer.method)
        self.optimizers = self.method.make_optimizers(trainer.tcfg)
        self.scalers = {name: torch.amp.GradScaler("cuda") for name in trainer.scalers}  # fp16 on CUDA only
        self.step = 0

    def epoch(self, epoch: int, workers: int) -> int:
        t = self.trainer
        batches = t.epoch_batches(epoch)  # the trainer's exact batches for this epoch
        loader = torch.utils.data.DataLoader(
            BatchGather(batches, t.cache), batch_size=None, shuffle=False, num_workers=workers
        )
        self.method.train()
        ctx = StepContext(self.optimizers, t.autocast, self.scalers, step=self.step, epoch=epoch)
        steps = 0
        for ref, tgt, texts, labels in loader:
            batch = Batch(ref.to(t.device), tgt.to(t.device), texts, labels.to(t.device))
            ctx.step = self.step
            self.method.train_step(batch, ctx)
            self.step += 1
            steps += 1
        return steps


def make_project(root: Path, method: str, steps: int, batch_size: int, device: str) -> tuple[Path, int]:
    experiment = {
        "dataset": {"name": "synthetic", "num_train": max(1000, steps * batch_size), "num_test": 50},
        "model": {"name": method, **TINY_MODELS[method]},
        "trainer": {
            "epochs": 100, "batch_size": batch_size, "max_steps_per_epoch": steps, "num_workers": 0,
            "device": device, "eval_at_start": False,
        },
    }  # fmt: skip
    text = yaml.safe_dump({"experiments": {"bench": experiment}}, sort_keys=False)
    (root / "experiments.yaml").write_text(text)
    (spec,) = ExperimentsFile(text, str(root / "experiments.yaml")).resolve("bench")
    registry_path = root / "runs" / "registry.db"
    row = Registry(registry_path).create_run(spec.experiment, spec.config, root / "runs")
    return registry_path, int(row["id"])


def load() -> str:
    """The 1-minute load average and the core count: above the cores, other processes share the CPU."""
    with open("/proc/loadavg") as fh:
        one = fh.read().split()[0]
    return f"{one} on {os.cpu_count()} cores"


def timed(fn, device: torch.device) -> tuple[int, float]:
    """Steps done by ``fn`` and its wall time, queued GPU work included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    steps = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="dwc", choices=sorted(TINY_MODELS))
    ap.add_argument(
        "--steps", type=int, default=60, help="steps per timed epoch (trainer.max_steps_per_epoch)"
    )
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers settings")
    ap.add_argument("--repeat", type=int, default=3, help="alternating rounds per setting (median reported)")
    ap.add_argument("--warmup", type=int, default=10, help="warm-up steps of each loop")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average at start: {load()}")

    with tempfile.TemporaryDirectory(prefix="dwc-bench-") as tmp:
        root = Path(tmp)
        registry_path, run_id = make_project(root, args.method, args.steps, args.batch_size, args.device)
        trainer = Trainer(run_id, registry_path)
        t0 = time.perf_counter()
        trainer.setup()
        print(
            f"setup {time.perf_counter() - t0:.1f}s: {args.method} {json.dumps(TINY_MODELS[args.method])}, "
            f"batch {args.batch_size}, {trainer.steps_per_epoch} steps/epoch, device {trainer.device}, "
            f"precision {trainer.precision}, {torch.get_num_threads()} torch threads"
        )
        hand = HandLoop(trainer)  # a copy of the model before any step
        epoch = 0

        def run_trainer(workers: int) -> int:
            nonlocal epoch
            epoch += 1
            trainer.tcfg["num_workers"] = workers
            trainer.batch_in_epoch = 0
            before = trainer.step
            trainer.train_epoch(epoch)
            return trainer.step - before

        def run_hand(workers: int) -> int:
            nonlocal epoch
            epoch += 1
            return hand.epoch(epoch, workers)

        full = trainer.steps_per_epoch
        trainer.steps_per_epoch = min(args.warmup, full)  # short warm-up epochs (the loader reads this)
        for w in sorted(set(args.workers)):
            run_trainer(w)
            run_hand(w)
        trainer.steps_per_epoch = full

        results = {}
        for w in args.workers:
            rates: dict[str, list[float]] = {"trainer": [], "hand": []}
            for rep in range(args.repeat):
                order = [("trainer", run_trainer), ("hand", run_hand)]
                for name, fn in order if rep % 2 == 0 else order[::-1]:
                    steps, seconds = timed(lambda fn=fn, w=w: fn(w), trainer.device)
                    rates[name].append(steps / seconds)
                    where = f"workers {w} round {rep + 1}"
                    print(
                        f"  {where}: {name:7s} {steps} steps in {seconds:6.2f}s = {steps / seconds:6.2f} steps/s"
                    )
            paired = [h / t - 1 for h, t in zip(rates["hand"], rates["trainer"], strict=True)]
            results[w] = {name: statistics.median(values) for name, values in rates.items()}
            results[w]["paired"] = statistics.median(paired)
        trainer.reporter.close()

    print()
    print(
        f"{args.method} on {args.device} ({torch.get_num_threads()} torch threads), median of {args.repeat} "
        f"rounds, {args.steps} steps per epoch; load average at end: {load()}"
    )
    print("workers   trainer steps/s   hand steps/s   overhead (of medians)   overhead (median of rounds)")
    for w, r in results.items():
        overhead = r["hand"] / r["trainer"] - 1
        print(f"{w:7d}   {r['trainer']:15.2f}   {r['hand']:12.2f}   {overhead:+21.1%}   {r['paired']:+27.1%}")
    print("overhead = hand / trainer − 1 (target ≤ +10%); negative = the trainer was faster")


if __name__ == "__main__":
    main()
