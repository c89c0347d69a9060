"""Dispatched PyTorch ops per training step: full-size DWC vs its floor, per optimizer implementation.

A full-size DWC step at batch 32 on an H100 is bound by the host, not the GPU (profile: 2.18 s of CPU vs 0.48 s of
GPU time per 10 steps): its time follows the number of operators the host dispatches (each a kernel launch or
more on a GPU). This counts them, device-independently, on the CPU: the trainer's real ``train_epoch`` and the
floor of ``bench/train_step.py`` (the same network passes alone) over the same batches, each op seen by a
``TorchDispatchMode``. Prints ops/step for ``trainer.optimizer_impl`` loop, foreach (PyTorch's default on a GPU)
and fused (``auto`` on a GPU), and the ratio to the floor. Small batch (the count does not depend on it).

Run by hand: ``.venv/bin/python bench/step_ops.py [--batch-size 2] [--steps 2]``. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

from torch.utils._python_dispatch import TorchDispatchMode

from dwc_core.engine.train import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from train_step import FloorLoop, make_project  # noqa: E402


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count(fn) -> Counter:
    with OpCounter() as c:
        fn()
    return c.ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dwc-bench-ops-") as tmp:
        registry_path, run_id = make_project(
            Path(tmp), "dwc", args.steps + 2, args.batch_size, "cpu", full=True
        )
        trainer = Trainer(run_id, registry_path)
        trainer.setup()
        floor = FloorLoop(trainer)
        epoch = 0
        results = {}
        for impl in ("loop", "foreach", "fused"):
            trainer.optimizers = trainer.method.make_optimizers({**trainer.tcfg, "optimizer_impl": impl})
            trainer.schedulers = {}
            trainer.steps_per_epoch = 1  # warm-up: optimizer state allocated outside the count
            trainer.batch_in_epoch = 0
            epoch += 1
            trainer.train_epoch(epoch)
            trainer.steps_per_epoch = args.steps
            trainer.batch_in_epoch = 0
            epoch += 1
            before = trainer.step
            ops = count(lambda e=epoch: trainer.train_epoch(e))
            results[impl] = sum(ops.values()) / (trainer.step - before)
        epoch += 1
        batches = len(trainer.epoch_batches(epoch))
        floor_ops = sum(count(lambda: floor.epoch(epoch)).values()) / batches
        trainer.reporter.close()
    print(f"full-size DWC (CLIP RN50 + ResNet-50), batch {args.batch_size}: dispatched ops per training step")
    print(f"  floor (same network passes alone): {floor_ops:8.0f}")
    for impl, n in results.items():
        print(f"  DWC, optimizer_impl {impl:8s}:     {n:8.0f}   {n / floor_ops:.2f}× the floor")


if __name__ == "__main__":
    main()
