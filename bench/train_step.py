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

``--size full``: DWC at full size (CLIP RN50 + ResNet-50, random weights, 224 px, ``--batch-size`` 32 or 128)
instead, timed against its *floor*: the same network passes alone on the same batches — the frozen CLIP forwards
(reference, text, target), the CNN teacher's two backbone forwards without gradient, and the CNN backbone's
forward + backward on reference and target — so ``DWC step / floor`` (target on a GPU: ≤ 1.3×) is what the
method's heads, editors, LSTM, losses, optimizer steps and the trainer cost on top. (``--compile`` measured
``trainer.compile`` on an H100: 1.07x at batch 32, so the option was removed.) On a CPU use
a small batch and few steps (``--batch-size 4 --steps 3 --warmup 1``): the figures then say little about a GPU.
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


FULL_DWC = {"clip": {"arch": "RN50", "pretrained": "none"}, "cnn": {"arch": "resnet50", "pretrained": "none"}}


def make_project(
    root: Path,
    method: str,
    steps: int,
    batch_size: int,
    device: str,
    full: bool = False,
) -> tuple[Path, int]:
    experiment = {
        "dataset": {"name": "synthetic", "num_train": max(1000, steps * batch_size), "num_test": 50},
        "model": {"name": method, **(FULL_DWC if full else TINY_MODELS[method])},
        "trainer": {
            "epochs": 100, "batch_size": batch_size, "max_steps_per_epoch": steps, "num_workers": 0,
            "device": device, "eval_at_start": False,
        },
    }  # fmt: skip
    if full:
        experiment["dataset"].update(image_size=224, num_train=max(200, (steps + 2) * batch_size))
    return queue_experiment(root, experiment)


def queue_experiment(root: Path, experiment: dict) -> tuple[Path, int]:
    """Write ``experiment`` as "bench" in ``root``'s experiments.yaml and queue its one run: (registry, run id)."""
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


class FloorLoop:
    """The network passes of one DWC step alone (see the module summary), on the trainer's batches."""

    def __init__(self, trainer: Trainer):
        self.t = trainer
        self.m = trainer.method
        self.opt = torch.optim.SGD(self.m.cnn_stream.backbone.parameters(), lr=0.0)

    def epoch(self, epoch: int) -> int:
        t, m = self.t, self.m
        m.train()
        steps = 0
        for batch in t.epoch_batches(epoch):
            triplets = [tr for tr, _ in batch]
            ref_u8 = torch.from_numpy(t.cache.array[np.array([x.ref for x in triplets])]).permute(0, 3, 1, 2)
            tgt_u8 = torch.from_numpy(t.cache.array[np.array([x.target for x in triplets])]).permute(
                0, 3, 1, 2
            )
            ref = m.prepare_images(ref_u8.contiguous().to(t.device))
            tgt = m.prepare_images(tgt_u8.contiguous().to(t.device))
            texts = [x.text for x in triplets]
            with t.autocast():
                m._clip_image(ref), m._clip_text(texts, ref.device), m._clip_image(tgt)  # frozen CLIP
                with torch.no_grad():  # the CNN teacher's backbone passes (query image and teacher side)
                    m.cnn_stream.backbone(ref), m.cnn_stream.backbone(ref)
                loss = m.cnn_stream.backbone(ref).float().mean() + m.cnn_stream.backbone(tgt).float().mean()
            loss.backward()
            self.opt.zero_grad(set_to_none=True)
            steps += 1
        return steps


def main_full(args) -> None:
    with tempfile.TemporaryDirectory(prefix="dwc-bench-") as tmp:
        root = Path(tmp)
        registry_path, run_id = make_project(root, "dwc", args.steps, args.batch_size, args.device, full=True)
        trainer = Trainer(run_id, registry_path)
        t0 = time.perf_counter()
        trainer.setup()
        print(
            f"setup {time.perf_counter() - t0:.1f}s: full-size DWC (CLIP RN50 + ResNet-50, 224 px, random weights), "
            f"batch {args.batch_size}, {trainer.steps_per_epoch} steps/epoch, device {trainer.device}, precision "
            f"{trainer.precision}, {torch.get_num_threads()} torch threads"
        )
        floor = FloorLoop(trainer)
        epoch = 0

        def run_trainer() -> int:
            nonlocal epoch
            epoch += 1
            trainer.batch_in_epoch = 0
            before = trainer.step
            trainer.train_epoch(epoch)
            return trainer.step - before

        def run_floor() -> int:
            nonlocal epoch
            epoch += 1
            return floor.epoch(epoch)

        full = trainer.steps_per_epoch
        trainer.steps_per_epoch = min(args.warmup, full)
        t0 = time.perf_counter()
        run_trainer()
        run_floor()
        print(f"warm-up ({args.warmup} steps each): "
              f"{time.perf_counter() - t0:.1f}s")  # fmt: skip
        trainer.steps_per_epoch = full
        rates: dict[str, list[float]] = {"dwc": [], "floor": []}
        for rep in range(args.repeat):
            order = [("dwc", run_trainer), ("floor", run_floor)]
            for name, fn in order if rep % 2 == 0 else order[::-1]:
                steps, seconds = timed(fn, trainer.device)
                rates[name].append(steps / seconds)
                print(
                    f"  round {rep + 1}: {name:5s} {steps} steps in {seconds:6.2f}s = {steps / seconds:.3f} steps/s"
                )
        trainer.reporter.close()
    d, f = statistics.median(rates["dwc"]), statistics.median(rates["floor"])
    print()
    print(f"full-size DWC on {args.device}, batch {args.batch_size}, median of {args.repeat}")
    print(f"  DWC step:   {d:.3f} steps/s = {d * args.batch_size:.1f} images/s")
    print(f"  floor:      {f:.3f} steps/s = {f * args.batch_size:.1f} images/s")
    print(f"  DWC / floor step time: {f / d:.2f}× (target on a GPU ≤ 1.3×); load average at end: {load()}")


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
    ap.add_argument(
        "--size", default="tiny", choices=("tiny", "full"), help="full: DWC RN50 + ResNet-50 vs floor"
    )
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average at start: {load()}")
    if args.size == "full":
        main_full(args)
        return

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
