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
import json
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

from dwc_core.config.checks import check_eval_sizes, preflight
from dwc_core.data import load_dataset
from dwc_core.data.loading import EpochBatches, ImageCache, TripletBatches, loader_kwargs
from dwc_core.data.types import EvalSet, Query, Triplet
from dwc_core.engine import checkpoint, runtime
from dwc_core.engine.distributed import Dist
from dwc_core.engine.evaluate import EvalResult, evaluate, query_rows
from dwc_core.engine.reporting import (
    METRICS_FILE,
    RUN_DIR_ENV,
    SINK_ENV,
    SINKS,
    Reporter,
    open_sink,
    sink_kind,
)
from dwc_core.errors import ConfigError, DataError, DwcError, TrainingError
from dwc_core.fileio import atomic_write_text, remove_files, temp_files
from dwc_core.models import BuildContext, build_method
from dwc_core.models.base import Batch, NonFiniteLoss, StepContext
from dwc_core.runs.locks import LockHeld, describe_holder, run_lock

EXIT_CANCELLED = 3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Stop(Exception):
    """Raised inside the loop when a stop (SIGTERM / cancellation) was requested."""


PHASE_DELAY_ENV = "DWC_TEST_PHASE_DELAY"  # tests only: "cache=0.5,eval=0.5" sleeps at each check of a phase


def _phase_delay(phase: str) -> float:
    for item in os.environ.get(PHASE_DELAY_ENV, "").split(","):
        name, _, value = item.partition("=")
        if name.strip() == phase and value.strip():
            return float(value)
    return 0.0


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


def dwc_version() -> str:
    """The version of the code that runs: the source's own (recorded also when dwc runs from a checkout on
    PYTHONPATH, not installed — installed metadata could be stale under an editable install anyway)."""
    from dwc_core import __version__

    return __version__


def trim_metrics_file(path: Path, step: int) -> int:
    """Keep only the metrics.jsonl rows at or before ``step`` (resume: the registry drops the same rows); returns
    how many lines were dropped. Written to a temp file and renamed; torn lines are dropped too."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                keep = int(json.loads(line)["step"]) <= step
            except (ValueError, KeyError, TypeError):
                keep = False
            if keep:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        atomic_write_text(path, "".join(kept))
    return dropped


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
        # the epoch whose evaluation is due but not recorded yet: kept in last.pt, so that a stop arriving during an
        # evaluation never loses it (the resumed run evaluates that epoch first)
        self.pending_eval: int | None = None
        # cancellation: ``interruptible`` = a SIGTERM may raise Stop at once (cache build, evaluation);
        # ``consistent`` = the weights/optimizers/counters agree, so a checkpoint may be written
        self.interruptible = False
        self.consistent = False

    def stop_check(self, phase: str, collective: bool = True):
        """A callable for long phases, called between chunks/batches: raises :class:`Stop` once a stop was
        requested (SIGTERM or a cancellation in the registry) — on every rank together when ``collective``, else
        on this rank alone (the cache build, which rank 0 does while the others wait)."""
        delay = _phase_delay(phase)

        def check() -> None:
            if delay:
                time.sleep(delay)
            flag = self.stop_requested.is_set() or self.reporter.cancel_requested.is_set()
            if self.dist.any(flag, self.device) if collective else flag:
                raise Stop()

        return check

    @contextlib.contextmanager
    def _interruptible(self):
        self.interruptible = True
        try:
            yield
        finally:
            self.interruptible = False

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
            device=runtime.device_name(self.device), versions={**runtime.versions(), "dwc": dwc_version(), "precision": self.precision},
            git_commit=commit, git_dirty=dirty, gpus=os.environ.get("CUDA_VISIBLE_DEVICES"),
        )  # fmt: skip
        self.reporter.start()
        self.reporter.progress(phase="data")
        cache_dir = self.config["dataset"].get("cache_dir") or str(self.project / "runs" / ".cache")
        preflight(
            self.config, self.project
        )  # dataset.root / cache_dir: the message `dwc run` gives before queueing
        log(f"loading dataset {self.config['dataset']['name']} (cache {cache_dir})")
        if self.dist.is_main:  # rank 0 generates/decodes once; the other ranks wait, then read the result
            try:
                self.ds = load_dataset(self.config["dataset"], cache_dir)
            except OSError as exc:  # a folder the loader writes to (the cache) or reads from
                raise DataError(
                    f"loading dataset {self.config['dataset']['name']} failed at {exc.filename or cache_dir}: "
                    f"{exc.strerror or exc}. Check dataset.root and dataset.cache_dir."
                ) from None
            self.cache = ImageCache(self.ds, int(self.config["dataset"]["image_size"]), cache_dir)
            if not self.cache.is_built():
                log(f"building the decoded-image cache: {self.cache.count} images at {self.cache.size}px")
                self.reporter.progress(phase="cache")
                with self._interruptible():
                    self.cache.ensure(
                        progress=lambda d, n: self.reporter.progress(
                            phase="cache", cache_done=d, cache_total=n
                        ),
                        check=self.stop_check("cache", collective=False),
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
        val_set = getattr(self, "val_set", {}) if t["select_on"] == "val_split" else {}
        # the val split's size first: a too small split's gallery is below K too, but val_fraction is the cause
        if val_set:
            check_eval_sizes(self.config, {}, len(val_set["val"].queries))
        check_eval_sizes(
            self.config,
            {**self.eval_sets, **val_set},
            len(val_set["val"].queries) if val_set else None,
        )
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
            "pending_eval": self.pending_eval,
            **self._identity(),
        }

    def _identity(self) -> dict:
        """What every checkpoint of this run records, so that no other run (or config) ever loads it."""
        return {"run_uid": self.row.get("uid"), "config_hash": checkpoint.config_hash(self.config)}

    def save_last(self) -> None:
        if self.dist.is_main:
            checkpoint.save_atomic(self._state(), self.run_dir / "last.pt")
        self.dist.barrier()

    def resume_if_possible(self) -> bool:
        """Continue from ``last.pt`` when there is one (it must be this run's: same uid and config hash). Without
        one, or when the run was re-queued ``--from-scratch``, start at epoch 0 — after clearing what an earlier
        attempt recorded, so that no epoch is recorded twice. A corrupt ``last.pt`` fails the run naming the file and
        the way out, unless from scratch was asked for."""
        path = self.run_dir / "last.pt"
        if self.row.get("from_scratch"):
            self._restart_from_scratch("restart from scratch requested")
            return False
        if not path.is_file():
            self._restart_from_scratch("no last.pt")
            return False
        try:
            state = checkpoint.load(
                path, map_location=self.device, run_uid=self.row.get("uid"),
                cfg_hash=checkpoint.config_hash(self.config),
            )  # fmt: skip
        except checkpoint.CheckpointError as exc:
            raise checkpoint.CheckpointError(
                f"{exc.message} Resume this run from scratch with `dwc resume {self.run_id} --from-scratch` (its "
                "recorded epochs are cleared), or put an earlier checkpoint of this run in its place."
            ) from None
        if not state.get("run_uid"):
            self._main(self.registry.event, self.run_id, "warning", f"{path} records no run id (older dwc)")
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
        self.pending_eval = state.get("pending_eval")
        checkpoint.set_rng_state(state["rng"])
        dropped = self._main(self.registry.delete_metrics_after, self.run_id, self.step)
        # an interrupted evaluation recorded nothing, but a killed one may have left part of its rows
        recorded = self.epoch if self.pending_eval is None else self.pending_eval - 1
        self._main(self.registry.delete_evaluations_after, self.run_id, recorded)
        # a later best may have been dropped with its epoch: the checkpoint's best stands
        if self.best_eval_id:
            self._main(self.registry.mark_best, self.run_id, self.best_eval_id)
        trimmed = None  # a files sink keeps metrics.jsonl append-only: its truncate op marks the resume point
        if sink_kind() != "files":
            trimmed = self._main(trim_metrics_file, self.run_dir / METRICS_FILE, self.step)
        msg = (
            f"resumed from last.pt at epoch {self.epoch} step {self.step} (dropped {dropped} later metric rows"
            f"{f' and {trimmed} lines of metrics.jsonl' if trimmed else ''})"
            + (f"; the evaluation of epoch {self.pending_eval} was interrupted and runs first"
               if self.pending_eval is not None else "")
        )  # fmt: skip
        log(msg)
        self._main(self.registry.event, self.run_id, "resume", msg)
        return True

    def _restart_from_scratch(self, why: str) -> None:
        """Start at epoch 0; if an earlier attempt of this run recorded anything, clear it first and say so."""
        if not self.dist.is_main or not hasattr(self.registry, "clear_history"):
            return
        had = self.registry.evaluations(self.run_id, kind="epoch") or self.registry.metrics(self.run_id)
        if not had and not self.row.get("from_scratch"):
            return  # a first start
        cleared = self.registry.clear_history(self.run_id)
        removed = [n for n in ("last.pt", "best.pt") if (self.run_dir / n).exists()]
        for name in removed:
            (self.run_dir / name).unlink()
        trimmed = trim_metrics_file(self.run_dir / METRICS_FILE, -1)
        files = f" and removed {' and '.join(removed)}" if removed else ""
        msg = (
            f"{why}: training restarts from scratch at epoch 0; cleared the earlier attempt's "
            f"{cleared['evaluations']} evaluations, {cleared['metrics']} metric rows ({trimmed} lines of "
            f"metrics.jsonl){files}"
        )
        log(msg)
        self.registry.event(self.run_id, "restart", msg)

    # ------------------------------------------------------------------------------------------ evaluation
    def run_eval(self, epoch: int) -> None:
        self.reporter.progress(phase="eval", epoch=epoch)
        t0 = time.time()
        if self.ema:
            self.ema.swap_in()
        try:
            args = (self.method, self.ds, self.cache, self.device, self.ecfg, self.autocast)
            check = self.stop_check("eval")
            with self._interruptible():
                results = {"test": evaluate(*args, dist=self.dist, check=check)}
                if self.tcfg["select_on"] == "val_split":
                    results["val"] = evaluate(*args, eval_sets=self.val_set, dist=self.dist, check=check)
        except BaseException:
            if self.ema:  # an interrupted evaluation leaves the weights as they were: it runs again on resume
                self.ema.swap_out()
            raise
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
        for phase, secs in test.timings.items():  # where evaluation time goes: encode gallery / queries, rank
            self.reporter.metric(self.step, epoch, "test", f"eval_{phase}", secs)
        t_write = time.time()
        value = results[select_split].metrics["mean"]
        improved = self.tcfg["select_on"] == "last" or self.best_value is None or value > self.best_value
        if improved and epoch > 0:
            self.best_value, self.best_epoch, self.best_eval_id = value, epoch, eval_ids["test"]
            checkpoint.save_atomic(  # the file first: the registry marks a best epoch only once best.pt holds it
                {
                    "model": self._evaluated_weights(),
                    "epoch": epoch,
                    "step": self.step,
                    "metrics": test.metrics,
                    **self._identity(),
                },
                self.run_dir / "best.pt",
            )
            self.registry.mark_best(self.run_id, eval_ids["test"])
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
        self.reporter.metric(self.step, epoch, "test", "eval_write_s", time.time() - t_write)
        shown = ", ".join(
            f"{k} {v:.2f}" for k, v in test.metrics.items() if "/" not in k or k.startswith("avg/")
        )
        log(f"eval epoch {epoch} ({seconds:.1f}s): {shown}")

    def _evaluate_pending(self) -> None:
        self.run_eval(self.pending_eval)
        self.pending_eval = None

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
        step_delay = _phase_delay("step")  # tests only ("step=1"): a step long enough to interrupt mid-epoch
        for ref, tgt, texts, labels in loader:
            if step_delay:
                time.sleep(step_delay)
            stop = self.stop_requested.is_set() or self.reporter.cancel_requested.is_set()
            if self.dist.any(stop, self.device):  # every rank stops at the same step
                raise Stop()
            nb = self.device.type == "cuda"
            batch = Batch(
                ref.to(self.device, non_blocking=nb), tgt.to(self.device, non_blocking=nb), texts,
                labels.to(self.device, non_blocking=nb),
            )  # fmt: skip
            ctx.step = self.step
            self.consistent = False  # a stop inside a step leaves no checkpoint of half-stepped weights
            try:
                terms = self.method.train_step(batch, ctx)
            except NonFiniteLoss as exc:
                self.consistent = True
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
            self.consistent = True
            steps_since += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            # the budget is looked at after each step: every epoch takes one at least (an epoch of none would
            # evaluate the last one's weights again as a new epoch), and the steps since the last log are logged
            over_budget = budget is not None and self.dist.any(
                self.train_seconds + time.time() - t_epoch >= budget * 60, self.device
            )
            if self.step % log_every == 0 or self.batch_in_epoch == self.steps_per_epoch or over_budget:
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
            if over_budget:
                self.budget_reached = True
                break
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
        self.consistent = True
        if not resumed and self.tcfg["eval_at_start"]:
            self.pending_eval = 0
        if self.pending_eval is not None:  # epoch 0, or an evaluation a stop interrupted before the resume
            self._evaluate_pending()
        epochs = int(self.tcfg["epochs"])
        while self.epoch < epochs:
            epoch = self.epoch + 1
            self.train_epoch(epoch)
            self.epoch, self.batch_in_epoch = epoch, 0
            budget = self.tcfg["time_budget_min"]
            if budget is not None and not self.budget_reached:  # spent by this epoch's end: it is the last
                self.budget_reached = self.dist.any(self.train_seconds >= budget * 60, self.device)
            last = epoch == epochs or self.budget_reached
            if epoch % int(self.tcfg["eval_every"]) == 0 or last:
                self.pending_eval = epoch
                self._evaluate_pending()
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


def _cancelled(trainer: Trainer, registry, run_id: int) -> int:
    """Record a cancellation; ``last.pt`` is written only when the state is consistent (not inside a step)."""
    saved = trainer.consistent
    if saved:
        trainer.save_last()
    with contextlib.suppress(Exception):
        trainer.reporter.close()
    where = f"epoch {trainer.epoch + 1} step {trainer.step}"
    if trainer.pending_eval is not None:
        where = f"the evaluation of epoch {trainer.pending_eval} (it runs first on resume)"
    note = "last.pt saved" if saved else "stopped inside a step or before training began; last.pt not updated"
    registry.set_status(run_id, "cancelled", f"cancelled at {where}; {note}", exit_code=EXIT_CANCELLED)
    log(f"cancelled; {note}")
    return EXIT_CANCELLED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dwc_core.engine.train", description=__doc__.splitlines()[0]
    )
    parser.add_argument("run_id", type=int)
    parser.add_argument("--registry", default=os.environ.get("DWC_REGISTRY", "runs/registry.db"))
    parser.add_argument(
        "--sink", choices=SINKS, help="report to the registry (default) or to files in --run-dir"
    )
    parser.add_argument("--run-dir", help="the run directory (with --sink files: never opens the registry)")
    args = parser.parse_args(argv)
    registry_path = Path(args.registry).resolve()
    trainer: Trainer | None = None
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()
        if trainer is not None:
            trainer.stop_requested.set()
            if trainer.interruptible:  # cache build, evaluation: stop now, not at the next check
                trainer.interruptible = False
                raise Stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.sink:
        os.environ[SINK_ENV] = args.sink
    if args.run_dir:
        os.environ[RUN_DIR_ENV] = str(Path(args.run_dir).resolve())
    registry = open_sink(registry_path, args.run_id)
    try:
        lock = _take_run_lock(registry, args.run_id)
    except DwcError as exc:  # e.g. no such run: nothing to record it in
        log(f"failed: {exc.message}")
        return exc.exit_code
    if lock is None:
        return EXIT_LOCKED
    dist = Dist()
    try:
        # backend and device follow trainer.device (cpu: gloo processes even where CUDA exists)
        dist = Dist.from_env(registry.get(args.run_id)["config"]["trainer"]["device"])
        if not dist.is_main:  # only rank 0 records the run's outcome
            registry.set_status = lambda *a, **k: None  # type: ignore[method-assign]
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
    except BaseException as exc:  # noqa: BLE001 — everything ends as a recorded outcome
        # a stop ends as cancelled, also when it surfaced as another error (a loader worker it killed)
        if trainer is not None and (
            isinstance(exc, Stop) or (stop.is_set() and not isinstance(exc, DwcError))
        ):
            return _cancelled(trainer, registry, args.run_id)
        if isinstance(exc, torch.OutOfMemoryError):
            message = _oom_message(exc, trainer)
        elif isinstance(exc, DwcError):
            message = exc.message
        elif isinstance(exc, KeyboardInterrupt):
            message = "interrupted"
        else:
            message = f"{type(exc).__name__}: {exc}"
        if not dist.is_main:  # its peers' failure or cancel often surfaces here as a broken collective
            log(
                f"rank {dist.rank} ended: {message} (rank 0 records the run's outcome: see its lines above/below)"
            )
            return 1
        if not isinstance(
            exc, DwcError
        ):  # a user-fixable error is one message; anything else keeps its trace
            traceback.print_exc()
        log(f"failed: {message}")
        code = exc.exit_code if isinstance(exc, DwcError) and exc.exit_code in (1, 2) else 1
        if trainer is not None:
            with contextlib.suppress(Exception):
                trainer.reporter.close()
        try:
            registry.set_status(args.run_id, "failed", message, error=message, exit_code=code)
        except Exception as exc2:  # noqa: BLE001 — e.g. the disk is full: train.log keeps the outcome
            log(f"could not record the failure in the registry ({type(exc2).__name__}: {exc2}); "
                f"`dwc runs` reconciles it from this log")  # fmt: skip
        return code
    finally:
        dist.close()
        lock.release()


EXIT_LOCKED = 4  # another live process trains this run: this one exits without touching it


class _NoLock:
    def release(self) -> None:
        pass


def _take_run_lock(registry, run_id: int):
    """The run lock, held until exit (rank 0 of a torchrun group only: its other ranks are its own children).
    ``None`` (after saying who holds it) when another live process trains this run."""
    if int(os.environ.get("RANK", "0")) != 0:
        return _NoLock()
    row = registry.get(run_id)
    run_dir = row.get("run_dir") or os.environ.get(RUN_DIR_ENV)
    if not run_dir:
        return _NoLock()
    lock = run_lock(run_dir, run_id)
    for attempt in range(5):  # a reader probing the lock (is_locked) holds it for an instant: try a few times
        try:
            lock.acquire()
            break
        except LockHeld as exc:
            if attempt == 4:
                log(
                    f"refused: run {run_id} is already being trained by {describe_holder(exc.holder)} (it holds "
                    f"{exc.path}); this process leaves the run alone"
                )
                return None
            time.sleep(0.2)
    removed = temp_files(run_dir)  # the run lock is ours: no write of this run is under way
    if removed:
        size = remove_files(removed) / 2**20
        msg = f"removed {len(removed)} temp files of interrupted writes ({size:.1f} MB)"
        log(msg)
        with contextlib.suppress(Exception):
            registry.event(run_id, "cleanup", msg)
    return lock


if __name__ == "__main__":
    sys.exit(main())
