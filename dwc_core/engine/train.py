"""The training process: ``python -m dwc_core.engine.train <run-id> --registry runs/registry.db``.

Reads its frozen config from the registry, trains, evaluates Recall@K after every epoch (and the untrained model
as epoch 0), writes metrics/progress/heartbeat to the registry, saves ``last.pt`` / ``best.pt`` atomically in the
run directory and finishes the run row as done / failed / cancelled. SIGTERM (or a cancellation request in the
registry) → checkpoint → exit as cancelled. Started again on a run whose directory holds ``last.pt``, it resumes
from there with the same metric history (rows after the checkpoint's step are dropped, so none is duplicated).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

from dwc_core.data import load_dataset
from dwc_core.data.loading import EpochBatches, ImageCache, TripletBatches, loader_kwargs
from dwc_core.data.types import EvalSet, Query, Triplet
from dwc_core.engine import checkpoint, runtime
from dwc_core.engine.distributed import Dist
from dwc_core.engine.evaluate import EvalResult, evaluate, query_rows
from dwc_core.engine.reporting import RUN_DIR_ENV, SINK_ENV, SINKS, Reporter, open_sink
from dwc_core.errors import ConfigError, DwcError, TrainingError
from dwc_core.models import BuildContext, build_method
from dwc_core.models.base import Batch, NonFiniteLoss, StepContext

EXIT_CANCELLED = 3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Stop(Exception):
    """Raised inside the loop when a stop (SIGTERM / cancellation) was requested."""


def make_val_split(train: list[Triplet], fraction: float, seed: int) -> tuple[list[Triplet], EvalSet]:
    """Hold out a slice of the training triplets as a validation set (the honest model-selection split)."""
    order = list(range(len(train)))
    random.Random(seed + 1013).shuffle(order)
    n_val = max(1, int(len(train) * fraction))
    held = sorted(order[:n_val])
    held_set = set(held)
    kept = [t for i, t in enumerate(train) if i not in held_set]
    queries = [Query(ref=train[i].ref, text=train[i].text, target=train[i].target) for i in held]
    gallery = sorted({x for q in queries for x in (q.ref, q.target)})
    return kept, EvalSet(name="val", queries=queries, gallery=gallery, ks=[], mask_reference=True)


def lr_lambda(trainer: dict, steps_per_epoch: int):
    total = max(1, trainer["epochs"] * steps_per_epoch)
    warm = trainer["warmup_steps"]
    decay_steps = [e * steps_per_epoch for e in trainer["lr_decay_epochs"]]

    def fn(step: int) -> float:
        f = 1.0
        if trainer["schedule"] == "step":
            f = trainer["gamma"] ** sum(1 for s in decay_steps if step >= s)
        elif trainer["schedule"] == "cosine":
            f = 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        if warm and step < warm:
            f *= (step + 1) / warm
        return f

    return fn


class EMA:
    """Exponential moving average of the trainable parameters, swapped in for evaluation."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params]
        self._backup: list[torch.Tensor] | None = None

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach(), 1 - self.decay)

    def swap_in(self) -> None:
        self._backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for s, p in zip(self.shadow, self.params, strict=True):
                p.copy_(s)

    def keep(self) -> None:
        """After ``swap_in``: keep the averaged weights as the live ones (the average restarts from them)."""
        self._backup = None

    def swap_out(self) -> None:
        assert self._backup is not None
        with torch.no_grad():
            for b, p in zip(self._backup, self.params, strict=True):
                p.copy_(b)
        self._backup = None


class Trainer:
    def __init__(self, run_id: int, registry_path: Path, dist: Dist | None = None):
        self.dist = dist or Dist()
        self.run_id = run_id
        self.registry_path = registry_path
        self.registry = open_sink(registry_path, run_id)  # the registry, or the run dir's report files
        self.row = self.registry.get(run_id)
        self.config = self.row["config"]
        self.tcfg = self.config["trainer"]
        self.ecfg = self.config["eval"]
        self.run_dir = Path(self.row["run_dir"])
        self.project = registry_path.resolve().parent.parent
        self.stop_requested = threading.Event()
        self.reporter = Reporter(
            registry_path, run_id, self.run_dir, float(self.tcfg["heartbeat_s"]), enabled=self.dist.is_main
        )
        self.step = 0
        self.epoch = 0  # epochs completed
        self.batch_in_epoch = 0
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.best_eval_id: int | None = None
        self.nan_skipped = 0
        self.train_seconds = 0.0  # cumulative time in training loops (evaluation excluded), for time budgets
        self.budget_reached = False

    # ----------------------------------------------------------------------------------------------- set-up
    def setup(self) -> None:
        t = self.tcfg
        runtime.seed_everything(int(t["seed"]))
        if t.get("cpu_threads"):  # a worker passes its share as OMP_NUM_THREADS; the config can override it
            torch.set_num_threads(int(t["cpu_threads"]))
        self.device = runtime.pick_device(t["device"])
        self.precision = runtime.effective_precision(t["precision"], self.device)
        self.autocast = runtime.autocast_factory(self.precision, self.device)
        commit, dirty = runtime.git_state(self.project)
        self._main(
            self.registry.set_status, self.run_id, "running", f"running on {runtime.hostname()} pid {os.getpid()}",
            pid=os.getpid(), pgid=os.getpgid(0), host=runtime.hostname(), started=self.row["started"] or time.time(),
            device=runtime.device_name(self.device), versions={**runtime.versions(), "precision": self.precision},
            git_commit=commit, git_dirty=dirty, gpus=os.environ.get("CUDA_VISIBLE_DEVICES"),
        )  # fmt: skip
        self.reporter.start()
        self.reporter.progress(phase="data")
        cache_dir = self.config["dataset"].get("cache_dir") or str(self.project / "runs" / ".cache")
        log(f"loading dataset {self.config['dataset']['name']} (cache {cache_dir})")
        if self.dist.is_main:  # rank 0 generates/decodes once; the other ranks wait, then read the result
            self.ds = load_dataset(self.config["dataset"], cache_dir)
            self.cache = ImageCache(self.ds, int(self.config["dataset"]["image_size"]), cache_dir)
            if not self.cache.is_built():
                log(f"building the decoded-image cache: {self.cache.count} images at {self.cache.size}px")
                self.reporter.progress(phase="cache")
                self.cache.ensure(
                    progress=lambda d, n: self.reporter.progress(phase="cache", cache_done=d, cache_total=n)
                )
        self.dist.barrier()
        if not self.dist.is_main:
            self.ds = load_dataset(self.config["dataset"], cache_dir)
            self.cache = ImageCache(self.ds, int(self.config["dataset"]["image_size"]), cache_dir)
        self.eval_sets = dict(self.ds.eval_sets)
        self.base_train: list[Triplet] | None = None
        if t["select_on"] == "val_split":
            if self.ds.sampler is not None:
                raise ConfigError(
                    f"trainer.select_on = val_split is not available for {self.ds.name}, whose training pairs are "
                    "sampled on the fly; use select_on: test or last."
                )
            self.base_train, val = make_val_split(self.ds.train, float(t["val_fraction"]), int(t["seed"]))
            val.ks = list(next(iter(self.ds.eval_sets.values())).ks)
            self.val_set = {"val": val}
        skipped = sum(es.skipped_queries for es in self.eval_sets.values())
        self._main(self.registry.update, self.run_id, skipped_queries=skipped)
        if skipped:
            self._main(
                self.registry.event,
                self.run_id,
                "warning",
                f"{skipped} test queries skipped by the loader (missing images, or pairs outside the eval list); "
                "details: dwc data check",
            )
        ctx = BuildContext(
            train_texts=[x.text for x in (self.base_train or self.ds.train_triplets(0, int(t["seed"])))],
            num_labels=self.ds.num_labels,
            image_size=int(self.config["dataset"]["image_size"]),
            device=self.device,
            precision=self.precision,
        )
        self.method = build_method(self.config["model"], ctx).to(self.device)
        self.dist.broadcast_module(self.method)
        if self.device.type == "cuda" and t["channels_last"]:
            self.method = self.method.to(memory_format=torch.channels_last)
        self.optimizers = self.method.make_optimizers(t)
        self.scalers = {}
        if self.precision == "fp16":  # one scaler per optimizer (DWC steps two per iteration)
            self.scalers = {name: torch.amp.GradScaler(self.device.type) for name in self.optimizers}
        self.steps_per_epoch = self._steps_per_epoch()
        fn = lr_lambda(t, self.steps_per_epoch)
        self.schedulers = {n: torch.optim.lr_scheduler.LambdaLR(o, fn) for n, o in self.optimizers.items()}
        self.ema = EMA(self.method, float(t["ema"])) if t["ema"] > 0 else None
        if t["compile"]:
            for child in self.method.children():
                child.compile()
        counts = self.method.parameter_counts()
        log(f"method {self.config['model']['name']}: {counts}")
        self._main(
            self.registry.event, self.run_id, "info",
            f"parameters {counts}; precision {self.precision}; device {self.device}; world size {self.dist.world}",
        )  # fmt: skip

    def _main(self, fn, *args, **kwargs):
        """Call ``fn`` on rank 0 only (registry writes, checkpoints)."""
        if self.dist.is_main:
            return fn(*args, **kwargs)
        return None

    def _steps_per_epoch(self) -> int:
        n = len(self.base_train or self.ds.train_triplets(0, int(self.tcfg["seed"])))
        steps = n // (int(self.tcfg["batch_size"]) * self.dist.world)
        if self.tcfg["max_steps_per_epoch"]:
            steps = min(steps, int(self.tcfg["max_steps_per_epoch"]))
        if steps < 1:
            raise ConfigError(
                f"trainer.batch_size = {self.tcfg['batch_size']} is larger than the {n} training samples."
            )
        return steps

    # ----------------------------------------------------------------------------------------- checkpoints
    def _state(self) -> dict:
        return {
            "model": self.method.checkpoint_state(),
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "scalers": {n: s.state_dict() for n, s in self.scalers.items()},
            "ema": [s.cpu() for s in self.ema.shadow] if self.ema else None,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "best": {"value": self.best_value, "epoch": self.best_epoch, "eval_id": self.best_eval_id},
            "rng": checkpoint.rng_state(),
            "nan_skipped": self.nan_skipped,
            "train_seconds": self.train_seconds,
        }

    def save_last(self) -> None:
        if self.dist.is_main:
            checkpoint.save_atomic(self._state(), self.run_dir / "last.pt")
        self.dist.barrier()

    def resume_if_possible(self) -> bool:
        path = self.run_dir / "last.pt"
        if not path.is_file():
            return False
        state = checkpoint.load(path, map_location=self.device)
        self.method.load_checkpoint_state(state["model"])
        for n, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][n])
        for n, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][n])
        for n, s in self.scalers.items():
            if n in state["scalers"]:
                s.load_state_dict(state["scalers"][n])
        if self.ema and state.get("ema"):
            self.ema.shadow = [s.to(self.device) for s in state["ema"]]
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
        best = state["best"]
        self.best_value, self.best_epoch, self.best_eval_id = best["value"], best["epoch"], best["eval_id"]
        self.nan_skipped = state.get("nan_skipped", 0)
        self.train_seconds = float(state.get("train_seconds", 0.0))
        checkpoint.set_rng_state(state["rng"])
        dropped = self._main(self.registry.delete_metrics_after, self.run_id, self.step)
        self._main(self.registry.delete_evaluations_after, self.run_id, self.epoch)
        msg = f"resumed from last.pt at epoch {self.epoch} step {self.step} (dropped {dropped} later metric rows)"
        log(msg)
        self._main(self.registry.event, self.run_id, "resume", msg)
        return True

    # ------------------------------------------------------------------------------------------ evaluation
    def run_eval(self, epoch: int) -> None:
        self.reporter.progress(phase="eval", epoch=epoch)
        t0 = time.time()
        if self.ema:
            self.ema.swap_in()
        try:
            args = (self.method, self.ds, self.cache, self.device, self.ecfg, self.autocast)
            results = {"test": evaluate(*args, dist=self.dist)}
            if self.tcfg["select_on"] == "val_split":
                results["val"] = evaluate(*args, eval_sets=self.val_set, dist=self.dist)
        finally:
            if self.ema and self.tcfg["ema_mode"] == "restart":
                self.ema.keep()  # AMC as coded: the live weights become the EMA, which restarts from them
            elif self.ema:
                self.ema.swap_out()
        if not self.dist.is_main:
            return
        seconds = time.time() - t0
        test: EvalResult = results["test"]
        select_split = {"test": "test", "val_split": "val", "last": "test"}[self.tcfg["select_on"]]
        eval_ids = {}
        for split, res in results.items():
            for name, value in res.metrics.items():
                self.reporter.metric(self.step, epoch, split, name, value)
            eval_ids[split] = self.registry.add_evaluation(
                self.run_id, epoch=epoch, step=self.step, kind="epoch", split=split, checkpoint=f"epoch {epoch}",
                protocol=self._protocol(), metrics=res.metrics, num_queries=res.num_queries,
                gallery_size=res.gallery_size, skipped_queries=res.skipped_queries,
            )  # fmt: skip
        self.reporter.metric(self.step, epoch, "test", "eval_seconds", seconds)
        value = results[select_split].metrics["mean"]
        improved = self.tcfg["select_on"] == "last" or self.best_value is None or value > self.best_value
        if improved and epoch > 0:
            self.best_value, self.best_epoch, self.best_eval_id = value, epoch, eval_ids["test"]
            self.registry.mark_best(self.run_id, eval_ids["test"])
            checkpoint.save_atomic(
                {
                    "model": self._evaluated_weights(),
                    "epoch": epoch,
                    "step": self.step,
                    "metrics": test.metrics,
                },
                self.run_dir / "best.pt",
            )
        self.registry.update(
            self.run_id, last_metrics={**test.metrics, "epoch": epoch},
            **({"best_value": self.best_value, "best_epoch": self.best_epoch, "best_metric": f"{select_split}/mean",
                "best_metrics": {**test.metrics, "epoch": epoch}} if improved and epoch > 0 else {}),
        )  # fmt: skip
        if self.ecfg["query_results"]:
            rows = []
            for es_name, sres in test.sets.items():
                rows += query_rows(self.ds, self.ds.eval_sets[es_name], sres, int(self.ecfg["store_topk"]))
            self.registry.add_query_results(self.run_id, eval_ids["test"], rows)
            keep = [eval_ids["test"]] + ([self.best_eval_id] if self.best_eval_id else [])
            self.registry.prune_query_results(self.run_id, keep)
        shown = ", ".join(
            f"{k} {v:.2f}" for k, v in test.metrics.items() if "/" not in k or k.startswith("avg/")
        )
        log(f"eval epoch {epoch} ({seconds:.1f}s): {shown}")

    def _evaluated_weights(self) -> dict:
        """The weights that were just evaluated: the EMA weights when an EMA is kept, else the live ones."""
        if not self.ema:
            return self.method.checkpoint_state()
        self.ema.swap_in()
        try:
            state = self.method.checkpoint_state()  # tensors, plus extra state such as the vocabulary
            return {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in state.items()}
        finally:
            self.ema.swap_out()

    def _protocol(self) -> dict:
        d = self.config["dataset"]
        return {k: d.get(k) for k in ("name", "gallery", "mask_reference", "text", "category") if k in d}

    # -------------------------------------------------------------------------------------------- training
    def epoch_batches(self, epoch: int, skip_batches: int = 0) -> list[list[tuple[Triplet, int]]]:
        """This rank's batches of epoch ``epoch``: (triplet, flip seed) items, deterministic from the seed."""
        seed = int(self.tcfg["seed"])
        triplets = self.base_train or self.ds.train_triplets(epoch, seed)
        bs = int(self.tcfg["batch_size"])
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(triplets), generator=gen).tolist()
        world, rank = self.dist.world, self.dist.rank
        flip_base = (seed * 1_000_003 + epoch) * 10_000_019
        global_batches = [
            [(triplets[i], flip_base + i) for i in order[b * bs : (b + 1) * bs]]
            for b in range(self.steps_per_epoch * world)
        ]
        return global_batches[rank::world][skip_batches:]  # each rank its share of every global step

    def _loader(self, epoch: int, skip_batches: int):
        """The run's one DataLoader (workers persist across epochs), set to this epoch's batches."""
        if getattr(self, "_data_loader", None) is None:
            self._sampler = EpochBatches()
            workers = self.tcfg["num_workers"]
            if workers is None and os.environ.get("DWC_DATA_WORKERS"):  # the share a worker gave this run
                workers = int(os.environ["DWC_DATA_WORKERS"])
            if workers is None:
                workers = 0 if self.device.type == "cpu" else min(4, (os.cpu_count() or 2) // 2)
            self._data_loader = torch.utils.data.DataLoader(
                TripletBatches(self.cache, self.config["dataset"]["augment"]), sampler=self._sampler,
                batch_size=None, **loader_kwargs(workers, self.device.type == "cuda", persistent=True),
                # its own generator: creating an iterator must not draw from the global RNG (dropout etc.)
                generator=torch.Generator().manual_seed(int(self.tcfg["seed"])),
            )  # fmt: skip
        self._sampler.set(self.epoch_batches(epoch, skip_batches))
        return self._data_loader

    def train_epoch(self, epoch: int) -> None:
        self.method.train()
        bs = int(self.tcfg["batch_size"])
        start_batch = self.batch_in_epoch
        loader = self._loader(epoch, start_batch)
        ctx = StepContext(
            self.optimizers, self.autocast, self.scalers, float(self.tcfg["grad_clip"]), self.step, epoch,
            sync_gradients=self.dist.average_gradients if self.dist.enabled else None,
            any_rank=(lambda flag: self.dist.any(flag, self.device)) if self.dist.enabled else None,
        )  # fmt: skip
        t_epoch = time.time()
        t_log, steps_since = time.time(), 0
        sums: dict[str, torch.Tensor] = {}
        log_every = int(self.tcfg["log_every"])
        budget = self.tcfg["time_budget_min"]
        for ref, tgt, texts, labels in loader:
            stop = self.stop_requested.is_set() or self.reporter.cancel_requested.is_set()
            if self.dist.any(stop, self.device):  # every rank stops at the same step
                raise Stop()
            if budget is not None:
                over = self.train_seconds + time.time() - t_epoch >= budget * 60
                if self.dist.any(over, self.device):
                    self.budget_reached = True
                    break
            nb = self.device.type == "cuda"
            batch = Batch(
                ref.to(self.device, non_blocking=nb), tgt.to(self.device, non_blocking=nb), texts,
                labels.to(self.device, non_blocking=nb),
            )  # fmt: skip
            ctx.step = self.step
            try:
                terms = self.method.train_step(batch, ctx)
            except NonFiniteLoss as exc:
                self.nan_skipped += 1
                if self.nan_skipped > int(self.tcfg["nan_skip"]):
                    raise TrainingError(
                        f"non-finite loss ({exc.value}) at epoch {epoch} step {self.step + 1} (optimizer "
                        f"'{exc.optimizer}'); {self.nan_skipped - 1} bad batches were skipped before "
                        f"(trainer.nan_skip = {self.tcfg['nan_skip']}). Lower trainer.lr, set trainer.grad_clip, or "
                        f"use precision fp32/bf16."
                    ) from None
                self._main(
                    self.registry.event, self.run_id, "warning",
                    f"skipped a batch with a non-finite loss at step {self.step + 1}",
                )  # fmt: skip
                for o in self.optimizers.values():
                    o.zero_grad(set_to_none=True)
                continue
            for s in self.schedulers.values():
                s.step()
            if self.ema:
                self.ema.update()
            self.step += 1
            self.batch_in_epoch += 1
            steps_since += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            if self.step % log_every == 0 or self.batch_in_epoch == self.steps_per_epoch:
                now = time.time()
                values = {k: float(v.item()) / steps_since for k, v in sums.items()}
                rate = steps_since / max(now - t_log, 1e-9)
                lr = next(iter(self.optimizers.values())).param_groups[0]["lr"]
                for k, v in values.items():
                    self.reporter.metric(
                        self.step, epoch - 1 + self.batch_in_epoch / self.steps_per_epoch, "train", k, v
                    )
                self.reporter.metric(self.step, epoch, "train", "lr", lr)
                self.reporter.metric(self.step, epoch, "train", "samples_per_s", rate * bs)
                remaining = (
                    (self.tcfg["epochs"] - epoch) * self.steps_per_epoch
                    + self.steps_per_epoch
                    - self.batch_in_epoch
                )
                self.reporter.progress(
                    phase="train", epoch=epoch, step=self.step, total_steps=self.tcfg["epochs"] * self.steps_per_epoch,
                    epoch_step=self.batch_in_epoch, epoch_steps=self.steps_per_epoch, loss=values.get("loss"),
                    it_s=rate, eta_s=remaining / max(rate, 1e-9), lr=lr,
                )  # fmt: skip
                sums, t_log, steps_since = {}, now, 0
        seconds = time.time() - t_epoch
        self.train_seconds += seconds
        self.reporter.metric(self.step, epoch, "train", "epoch_seconds", seconds)
        if self.device.type == "cuda":
            self.reporter.metric(
                self.step, epoch, "train", "gpu_mem_peak_gb", torch.cuda.max_memory_allocated() / 2**30
            )
        log(f"epoch {epoch} done: {self.batch_in_epoch - start_batch} steps in {seconds:.1f}s")

    def run(self) -> int:
        self.setup()
        resumed = self.resume_if_possible()
        if not resumed and self.tcfg["eval_at_start"]:
            self.run_eval(0)
        epochs = int(self.tcfg["epochs"])
        while self.epoch < epochs:
            epoch = self.epoch + 1
            self.train_epoch(epoch)
            self.epoch, self.batch_in_epoch = epoch, 0
            last = epoch == epochs or self.budget_reached
            if epoch % int(self.tcfg["eval_every"]) == 0 or last:
                self.run_eval(epoch)
            self.save_last()
            self.reporter.flush_now()
            if self.budget_reached:
                msg = (
                    f"time budget of {self.tcfg['time_budget_min']} min reached during epoch {epoch} at step "
                    f"{self.step}; evaluated and stopped"
                )
                log(msg)
                self._main(self.registry.event, self.run_id, "budget", msg)
                break
        return 0


def _oom_message(exc: BaseException, trainer: Trainer | None) -> str:
    bs = trainer.tcfg["batch_size"] if trainer else "?"
    mem = ""
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        peak = torch.cuda.max_memory_allocated() / 2**30
        mem = f" Peak allocated {peak:.2f} GiB of {total:.2f} GiB."
    return (
        f"CUDA out of memory at batch size {bs}.{mem} Lower trainer.batch_size, use precision bf16/fp16, or a "
        f"smaller image_size. ({str(exc).splitlines()[0]})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dwc_core.engine.train", description=__doc__.splitlines()[0]
    )
    parser.add_argument("run_id", type=int)
    parser.add_argument("--registry", default=os.environ.get("DWC_REGISTRY", "runs/registry.db"))
    parser.add_argument("--sink", choices=SINKS, help="report to the registry (default) or to files in --run-dir")
    parser.add_argument("--run-dir", help="the run directory (with --sink files: never opens the registry)")
    args = parser.parse_args(argv)
    registry_path = Path(args.registry).resolve()
    trainer: Trainer | None = None
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()
        if trainer is not None:
            trainer.stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.sink:
        os.environ[SINK_ENV] = args.sink
    if args.run_dir:
        os.environ[RUN_DIR_ENV] = str(Path(args.run_dir).resolve())
    registry = open_sink(registry_path, args.run_id)
    dist = Dist.from_env()
    if not dist.is_main:  # only rank 0 records the run's outcome
        registry.set_status = lambda *a, **k: None  # type: ignore[method-assign]
    try:
        trainer = Trainer(args.run_id, registry_path, dist)
        trainer.stop_requested = stop
        code = trainer.run()
        trainer.reporter.close()
        registry.set_status(
            args.run_id,
            "done",
            f"finished: best {trainer.best_value} at epoch {trainer.best_epoch}",
            exit_code=0,
        )
        log("done")
        return code
    except Stop:
        assert trainer is not None
        trainer.save_last()
        trainer.reporter.close()
        registry.set_status(args.run_id, "cancelled", f"cancelled at epoch {trainer.epoch + 1} step {trainer.step}; last.pt saved",
                            exit_code=EXIT_CANCELLED)  # fmt: skip
        log("cancelled; checkpoint saved")
        return EXIT_CANCELLED
    except BaseException as exc:  # noqa: BLE001 — everything ends as a recorded failure
        if isinstance(exc, torch.OutOfMemoryError):
            message = _oom_message(exc, trainer)
        elif isinstance(exc, DwcError):
            message = exc.message
        elif isinstance(exc, KeyboardInterrupt):
            message = "interrupted"
        else:
            message = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        log(f"failed: {message}")
        if trainer is not None:
            with contextlib.suppress(Exception):
                trainer.reporter.close()
        registry.set_status(args.run_id, "failed", message, error=message, exit_code=1)
        return 1
    finally:
        dist.close()


if __name__ == "__main__":
    sys.exit(main())
