"""The local worker: takes queued runs and trains them on this machine's GPUs (or CPU slots), torch-free.

A worker owns slots: ``slots_per_gpu`` per GPU (a lock per GPU under ``runs/workers/`` keeps two workers off one
GPU) or ``cpu_slots`` CPU slots. Every tick (``poll_s``) it

1. notices children that exited (exit code, signal) and reconciles their runs (done / failed with the cause and
   the log's last lines);
2. marks runs of this host whose process is gone as ``lost`` (not its own children: those it reconciles itself);
3. claims queued runs — not held, not deleted — in priority then creation order, as many as fit its free slots,
   and starts each with :func:`launcher.spawn` (``CUDA_VISIBLE_DEVICES``, ``OMP_NUM_THREADS`` = cores / slots or
   ``trainer.cpu_threads``, a DataLoader worker count that fits). A ``trainer.gpus: N`` run waits until N of the
   worker's GPUs are free; smaller runs may pass it, but only ``max_passes`` times: then nothing passes it.

SIGTERM / SIGINT: the worker stops claiming and exits; its runs go on in their own sessions, and the next worker
on this host adopts them (pid alive) instead of marking them lost. ``--detach`` daemonises (double fork + setsid)
with the log in ``runs/workers/<host>-<pid>.log``; every worker describes itself in ``runs/workers/<host>-<pid>.json``
and holds ``<host>-<pid>.lock`` while it lives.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dwc_core.errors import RunLocked, RunNotFound, UsageError
from dwc_core.fileio import atomic_write_text
from dwc_core.runs import control, launcher
from dwc_core.runs.gpus import gpu_request_problem, visible_gpus
from dwc_core.runs.locks import FileLock, LockHeld, describe_holder, run_lock_holder
from dwc_core.runs.registry import ACTIVE, CLAIMABLE, Registry

CPU_UNIT = "cpu"
REAP_EVERY_S = 5.0
INFO_EVERY_S = 5.0
ORPHAN_CLAIM_S = 60.0  # a 'starting' run with no process this long after its worker died is lost


# ---------------------------------------------------------------------------------------------------- planning
@dataclass
class Pool:
    """What a worker can hand out: units (GPU ids, or the one CPU unit) with ``capacity`` slots each."""

    units: list[str]
    capacity: int
    gpu_mode: bool
    used: dict[str, int] = field(default_factory=dict)

    def free(self) -> dict[str, int]:
        return {u: self.capacity - self.used.get(u, 0) for u in self.units}

    def take(self, units: list[str]) -> None:
        for u in units:
            self.used[u] = self.used.get(u, 0) + 1

    def give(self, units: list[str]) -> None:
        for u in units:
            if self.used.get(u, 0) > 0:
                self.used[u] -= 1


def plan(pool: Pool, candidates: list[tuple[int, int]], passes: dict[int, int], max_passes: int):
    """Which queued runs start now, on which units. ``candidates``: (run id, GPUs wanted) in queue order.

    A one-GPU run takes the least-loaded GPU with a free slot; an N-GPU run needs N GPUs with no run on them. A
    run that does not fit now is passed by the runs behind it that do fit, each pass counted in ``passes``; once
    it has been passed ``max_passes`` times nothing behind it may start until it has started. A run asking for
    more GPUs than the worker has is left for another worker. CPU pools give every run one slot.
    Returns [(run id, units)]; updates ``passes``.
    """
    free = pool.free()
    out: list[tuple[int, list[str]]] = []
    blocked: list[int] = []
    for rid, wanted in candidates:
        need = max(1, int(wanted)) if pool.gpu_mode else 1
        if need > len(pool.units):
            continue
        if need == 1:
            ok = sorted((u for u in pool.units if free[u] > 0), key=lambda u: -free[u])
            pick = ok[:1]
        else:
            ok = [u for u in pool.units if free[u] == pool.capacity]
            pick = ok[:need] if len(ok) >= need else []
        if not pick:
            blocked.append(rid)
            if passes.get(rid, 0) >= max_passes:
                break
            continue
        for b in blocked:
            passes[b] = passes.get(b, 0) + 1
        for u in pick:
            free[u] -= 1
        out.append((rid, pick))
    return out


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_share(cores: int, total_slots: int, override: int | None) -> int:
    """Threads per run: ``trainer.cpu_threads`` when set, else the cores divided among the worker's slots."""
    if override:
        return int(override)
    return max(1, cores // max(1, total_slots))


def data_workers(config_workers: int | None, threads: int, gpu_mode: bool) -> int:
    """DataLoader workers that fit a run's CPU share: the config's value when set; on CPU slots 0 (batches come
    from the memory-mapped cache and workers only compete with compute); on a GPU up to 4 within the share."""
    if config_workers is not None:
        return int(config_workers)
    if not gpu_mode:
        return 0
    return max(0, min(4, threads - 1))


def preflight(config: dict) -> str | None:
    """A reason a run cannot start here, found without starting it (torch-free), or None."""
    ds = config.get("dataset") or {}
    root = ds.get("root")
    if root:
        path = Path(os.path.expanduser(str(root)))
        if not path.exists():
            return (
                f"dataset.root {path} does not exist (dataset {ds.get('name')}); nothing was started. Fix the path "
                "in experiments.yaml (check it with `dwc data check`), then `dwc queue --failed` or `dwc resume`."
            )
    return None


# ------------------------------------------------------------------------------------------------------ worker
@dataclass
class Child:
    run_id: int
    pid: int
    units: list[str]
    proc: subprocess.Popen | None = None  # None: adopted from a worker that is gone

    def exit_code(self) -> tuple[bool, int | None]:
        """(ended, return code); the code is None for an adopted process (not our child)."""
        if self.proc is not None:
            code = self.proc.poll()
            return code is not None, code
        return not launcher.pid_alive(self.pid), None


class Worker:
    def __init__(
        self,
        project: str | os.PathLike,
        gpus: list[str] | None = None,
        cpu: bool = False,
        cpu_slots: int = 1,
        slots_per_gpu: int = 1,
        max_runs: int | None = None,
        once: bool = False,
        poll_s: float = 0.5,
        max_passes: int | None = None,
        cores: int | None = None,
        out=None,
    ):
        self.project = Path(project).resolve()
        self.registry_path = control.registry_path(self.project)
        self.folder = control.workers_dir(self.project)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.name = control.worker_name(self.host, self.pid)
        self.once, self.max_runs, self.poll_s = once, max_runs, poll_s
        self.out = out or sys.stdout
        if cpu_slots < 1 or slots_per_gpu < 1:
            raise UsageError("--slots and --slots-per-gpu must be at least 1.")
        if cpu:
            self.pool = Pool([CPU_UNIT], cpu_slots, gpu_mode=False)
        else:
            have = visible_gpus()
            ids = list(gpus) if gpus else have
            if not ids:
                raise UsageError(
                    "no GPU is visible on this machine (nvidia-smi finds none and CUDA_VISIBLE_DEVICES names none). "
                    "Start a CPU worker with `dwc worker --cpu [--slots N]`."
                )
            unknown = [g for g in ids if g not in have]
            if unknown:
                raise UsageError(
                    f"--gpus names {', '.join(unknown)}, which this machine does not show. "
                    f"Visible GPUs: {', '.join(have) or 'none'}."
                )
            if len(set(ids)) != len(ids):
                raise UsageError(f"--gpus {','.join(ids)} names a GPU twice.")
            self.pool = Pool(ids, slots_per_gpu, gpu_mode=True)
        total = len(self.pool.units) * self.pool.capacity
        self.max_passes = 2 * total if max_passes is None else max_passes
        self.cores = cores or _cores()
        self.children: dict[int, Child] = {}
        self.passes: dict[int, int] = {}
        self.started_runs = 0
        self.stopping = False
        self._locks: list[FileLock] = []
        self._info: dict = {}
        self._last_reap = 0.0
        self._last_info = 0.0
        self.registry: Registry | None = None
        self.host_gpus = visible_gpus() if self.pool.gpu_mode else []
        self._spared: dict[int, float] = {}

    # ------------------------------------------------------------------------------------------- set-up
    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] worker {self.name}: {msg}", file=self.out, flush=True)

    def start(self, log_file: str | None = None) -> None:
        """Take the GPU locks and the worker's own lock, write its description, open the registry, adopt runs."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.pool.gpu_mode:
            for gpu in self.pool.units:
                lock = FileLock(self.folder / f"gpu-{gpu}.lock", what=f"worker {self.name}")
                try:
                    lock.acquire()
                except LockHeld as exc:
                    self.release()
                    raise UsageError(
                        f"GPU {gpu} is held by {describe_holder(exc.holder)} ({exc.path}); two workers never share "
                        f"a GPU. Name other GPUs with --gpus, or stop that worker first (`dwc workers` lists them)."
                    ) from None
                self._locks.append(lock)
        self._locks.append(hold_worker_lock(self.folder, self.name))
        self._info = {
            "name": self.name,
            "kind": "local",
            "host": self.host,
            "pid": self.pid,
            "gpus": self.pool.units if self.pool.gpu_mode else [],
            "cpu_slots": 0 if self.pool.gpu_mode else self.pool.capacity,
            "slots_per_gpu": self.pool.capacity if self.pool.gpu_mode else 0,
            "started": time.time(),
            "log": log_file,
        }
        self.write_info()
        self.registry = Registry(self.registry_path)
        self.adopt()
        what = f"GPUs {','.join(self.pool.units)} × {self.pool.capacity}" if self.pool.gpu_mode else (
            f"{self.pool.capacity} CPU slot(s)"
        )  # fmt: skip
        self.log(f"started on {what}; {self.cores} cores; project {self.project}")

    def write_info(self) -> None:
        self._info["runs"] = sorted(self.children)
        write_worker_file(self.folder, self.name, self._info)
        self._last_info = time.time()

    def release(self) -> None:
        for lock in self._locks:
            lock.release()
        self._locks = []
        remove_worker_files(self.folder, self.name)

    def adopt(self) -> None:
        """Take over active runs of this host whose worker is gone but whose process lives (at start, and at every
        reap: a worker killed beside a live one leaves runs that this one then follows). Ownership moves in one
        conditional write, so two workers never both adopt a run; a foreground `dwc run` that is alive keeps its
        run."""
        assert self.registry is not None
        live = {w.get("name") for w in control.live_workers(self.project)}
        for row in self.registry.runs(statuses=list(ACTIVE), include_deleted=True):
            old = row["worker"] or ""
            if row["host"] != self.host or old in live or old == self.name or row["id"] in self.children:
                continue
            if old.startswith("cli:") and old[4:].isdigit() and launcher.pid_alive(int(old[4:])):
                continue
            if row.get(
                "slurm_job"
            ):  # followed by a Slurm worker through its report files, never adopted here
                continue
            if not row["pid"] or not launcher.pid_alive(row["pid"]):
                continue
            if row["status"] == "running" and row.get("run_dir") and run_lock_holder(row["run_dir"]) is None:
                continue  # a running trainer holds its run lock for its whole life: this pid is someone else now
            with self.registry.write() as c:
                cur = c.execute(
                    "UPDATE runs SET worker = ? WHERE id = ? AND worker IS ? AND status IN ('starting', 'running')",
                    (self.name, row["id"], row["worker"]),
                )
                if cur.rowcount != 1:
                    continue
                Registry._event(c, row["id"], "adopted", f"adopted by {self.name} (pid {row['pid']} alive)")
            units = self._units_of(row)
            self.pool.take(units)
            self.children[row["id"]] = Child(row["id"], int(row["pid"]), units)
            self.log(f"adopted run {row['id']} (pid {row['pid']})")

    def _units_of(self, row: dict) -> list[str]:
        gpus = "" if row.get("gpus") is None else str(row["gpus"])  # "0" decodes as the number 0
        if not self.pool.gpu_mode:
            return [CPU_UNIT] if not gpus.strip() else []
        ids = [x.strip() for x in gpus.split(",") if x.strip()]
        return [g for g in ids if g in self.pool.units]

    # -------------------------------------------------------------------------------------------- the loop
    def install_signals(self) -> None:
        def on_signal(signum, _frame):
            if not self.stopping:
                self.log(
                    f"{signal.Signals(signum).name}: stop claiming; running runs continue in their sessions"
                )
            self.stopping = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def run(self) -> int:
        """The loop; returns the exit code (0)."""
        try:
            while True:
                self.tick()
                if self.stopping:
                    break
                if self._finished():
                    break
                time.sleep(self.poll_s)
        finally:
            if self.children:
                self.log(f"exiting; runs {sorted(self.children)} go on and the next worker adopts them")
            self.log("stopped")  # before the worker files go: whoever waits for them finds the log complete
            self.release()
            if self.registry is not None:
                self.registry.close()
        return 0

    def _finished(self) -> bool:
        if self.children:
            return False
        if self.max_runs is not None and self.started_runs >= self.max_runs:
            return True
        return self.once and not self._candidates(fitting_only=True)

    def tick(self) -> None:
        self.reconcile_children()
        now = time.time()
        if now - self._last_reap >= REAP_EVERY_S:
            self.reap()
            self._last_reap = now
        if not self.stopping and (self.max_runs is None or self.started_runs < self.max_runs):
            self.claim_and_start()
        if time.time() - self._last_info >= INFO_EVERY_S:
            self.write_info()

    def reconcile_children(self) -> None:
        assert self.registry is not None
        for rid, child in list(self.children.items()):
            ended, code = child.exit_code()
            if not ended:
                continue
            row = launcher.reconcile_exit(self.registry, rid, code)
            self.pool.give(child.units)
            del self.children[rid]
            if code is None:  # an adopted process is not our child: its exit status cannot be known
                how = "exit status unknown: adopted"
            else:
                how = f"exit code {code}" if code >= 0 else launcher.signal_name(code)
            self.log(f"run {rid} ended ({how}): {row['status']}")
            self.write_info()

    def reap(self) -> None:
        assert self.registry is not None
        for rid in launcher.reap_lost(self.registry, self.host, exclude=set(self.children)):
            self.log(f"run {rid} marked lost (its process is gone)")
        self.adopt()
        # claims whose worker died before it started a process
        live = {w.get("name") for w in control.live_workers(self.project)} | {self.name}
        for row in self.registry._rows(
            "SELECT id, worker, claimed FROM runs WHERE status = 'starting' AND pid IS NULL AND claimed < ?",
            [time.time() - ORPHAN_CLAIM_S],
        ):
            if row["worker"] not in live and not str(row["worker"] or "").startswith("cli:"):
                reason = f"claimed by {row['worker']}, which ended before starting it"
                self.registry.set_status(row["id"], "lost", reason, only_from=("starting",), error=reason)

    def _candidates(self, fitting_only: bool = False) -> list[tuple[int, int]]:
        assert self.registry is not None
        rows = self.registry.conn.execute(
            "SELECT id, COALESCE(json_extract(config, '$.trainer.gpus'), 1), "
            "COALESCE(json_extract(config, '$.trainer.device'), 'auto'), experiment FROM runs "
            f"WHERE {CLAIMABLE} AND COALESCE(json_extract(config, '$.trainer.nodes'), 1) <= 1 "  # multi-node: Slurm's
            "ORDER BY priority DESC, id LIMIT 500"
        ).fetchall()
        cands = []
        for rid, wanted, device, experiment in rows:
            oversized = self.pool.gpu_mode and device != "cpu" and int(wanted) > len(self.host_gpus)
            if oversized and self._fail_unfittable(int(rid), int(wanted), device, experiment):
                continue
            cands.append((int(rid), int(wanted)))
        if fitting_only and self.pool.gpu_mode:
            cands = [c for c in cands if c[1] <= len(self.pool.units)]
        return cands

    def _fail_unfittable(self, run_id: int, wanted: int, device: str, experiment: str) -> bool:
        """A run asking for more GPUs than this whole machine shows would wait forever: unless another live worker
        could take it (a Slurm worker, or one on another host with enough GPUs), claim it and fail it with a
        message naming both counts. Returns True when it was failed (or taken meanwhile)."""
        assert self.registry is not None
        now = time.time()
        if now - self._spared.get(run_id, 0.0) < REAP_EVERY_S:
            return False
        others = [w for w in control.live_workers(self.project) if w.get("name") != self.name]
        if any(w.get("kind") == "slurm" or len(w.get("gpus") or []) >= wanted for w in others):
            self._spared[run_id] = now
            return False
        problem = gpu_request_problem({"gpus": wanted, "device": device}, "")
        if problem is None:
            return False
        row = self.claim(run_id)
        if row is None:
            return True
        head, _, rest = problem.partition(". ")
        msg = (
            f"run {run_id} ({experiment}) can never start on {self.host}: {head}, and no live worker has "
            f"{wanted}. Nothing was started. {rest} Queue it again with that change (`dwc queue {experiment} --set trainer.gpus=...`)."
        )
        self.registry.set_status(run_id, "failed", msg, only_from=("starting",), error=msg, exit_code=2)
        self.log(msg)
        return True

    def claim_and_start(self) -> None:
        if all(v <= 0 for v in self.pool.free().values()):
            return
        cands = self._candidates()
        self.passes = {rid: n for rid, n in self.passes.items() if any(rid == c[0] for c in cands)}
        for rid, units in plan(self.pool, cands, self.passes, self.max_passes):
            if self.max_runs is not None and self.started_runs >= self.max_runs:
                return
            row = self.claim(rid)
            if row is None:
                continue  # another worker took it first, or it was held/cancelled meanwhile
            self.start_run(row, units)

    def claim(self, run_id: int) -> dict | None:
        """Atomically move a claimable run (queued, unheld, not deleted: :data:`CLAIMABLE`) to ``starting`` for
        this worker (None if it is no longer claimable). A run whose trainer still holds its run lock is skipped."""
        assert self.registry is not None
        try:
            return self.registry.claim(self.name, run_id=run_id, host=self.host)
        except (RunLocked, RunNotFound):
            return None

    def start_run(self, row: dict, units: list[str]) -> None:
        assert self.registry is not None
        rid = row["id"]
        config = row["config"]
        reason = preflight(config)
        if reason:
            self.registry.set_status(
                rid, "failed", reason, only_from=("starting",), error=reason, exit_code=2
            )
            self.log(f"run {rid} failed before start: {reason}")
            return
        tcfg = config.get("trainer", {})
        threads = cpu_share(self.cores, len(self.pool.units) * self.pool.capacity, tcfg.get("cpu_threads"))
        loaders = data_workers(tcfg.get("num_workers"), threads, self.pool.gpu_mode)
        env = {
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "DWC_CPU_THREADS": str(threads),
            "DWC_DATA_WORKERS": str(loaders),
        }
        gpus = ",".join(units) if self.pool.gpu_mode else ""  # a CPU slot hides the GPUs
        self.registry.update(rid, cpu_threads=threads, data_workers=loaders)
        try:
            proc = launcher.spawn(self.registry, row, self.registry_path, gpus=gpus, env_extra=env)
        except OSError as exc:
            msg = f"could not start the training process: {exc}"
            self.registry.set_status(rid, "failed", msg, only_from=("starting",), error=msg)
            self.log(f"run {rid}: {msg}")
            return
        self.pool.take(units)
        self.children[rid] = Child(rid, proc.pid, units, proc)
        self.started_runs += 1
        where = f"GPU {gpus}" if self.pool.gpu_mode else "CPU"
        self.log(f"run {rid} ({row['experiment']}) started on {where}, pid {proc.pid}, {threads} threads")
        self.write_info()


# --------------------------------------------------------------------------------------------------- detach
def daemonize(log_path_for) -> int | None:
    """Double fork + setsid. In the calling process, returns the daemon's pid once it is running (or raises the
    UsageError the daemon met while starting); in the daemon, returns None. ``log_path_for(pid)`` is where the
    daemon's stdout/stderr go."""
    r, w = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(w)
        chunks = []
        while True:
            data = os.read(r, 65536)
            if not data:
                break
            chunks.append(data)
        os.close(r)
        os.waitpid(pid, 0)
        msg = b"".join(chunks).decode()
        if msg.startswith("ok "):
            return int(msg.split()[1])
        raise UsageError(msg.partition(" ")[2] or "the detached worker did not start (see runs/workers/).")
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    log = open(log_path_for(os.getpid()), "ab", buffering=0)  # noqa: SIM115 — the daemon's stdout
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    os.close(devnull)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.environ["DWC_WORKER_REPORT_FD"] = str(w)
    return None


def report_started(ok: bool, message: str = "") -> None:
    """In a detached worker: tell the process that launched it whether start-up worked."""
    fd = os.environ.pop("DWC_WORKER_REPORT_FD", None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(int(fd), (f"ok {os.getpid()}" if ok else f"err {message}").encode())
        os.close(int(fd))


def run_worker(worker_kwargs: dict, project: str | os.PathLike, detach: bool = False) -> int:
    """Build, start and run a worker (the body of `dwc worker`). With ``detach``, returns the daemon's pid to the
    caller at once and the daemon runs the loop."""
    if detach:
        folder = control.workers_dir(project)
        folder.mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()

        def log_for(pid: int) -> Path:
            return folder / f"{host}-{pid}.log"

        pid = daemonize(log_for)
        if pid is not None:
            return pid
        try:
            worker = Worker(project, out=sys.stdout, **worker_kwargs)
            worker.start(log_file=str(log_for(os.getpid())))
        except BaseException as exc:  # noqa: BLE001 — reported to the launching process, then exit
            report_started(False, getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}")
            os._exit(2)
        report_started(True)
        worker.install_signals()
        try:
            worker.run()
        finally:
            os._exit(0)
    worker = Worker(project, **worker_kwargs)
    worker.start()
    worker.install_signals()
    return worker.run()


# ----------------------------------------------------------------------------------------------- worker files
# Every worker (local, Slurm) describes itself in runs/workers/<name>.json and holds <name>.lock while it lives:
# `dwc workers` lists them, `control.live_workers` tells a live one (same host: the lock; other host: heartbeat).
def hold_worker_lock(folder: Path, name: str) -> FileLock:
    """Take the worker's own lock ``<folder>/<name>.lock`` (the kernel drops it when the process dies)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return FileLock(Path(folder) / f"{name}.lock", what=f"worker {name}").acquire()


def write_worker_file(folder: Path, name: str, info: dict) -> None:
    """(Re)write ``<folder>/<name>.json`` atomically with ``info``, its ``heartbeat`` set to now."""
    info["heartbeat"] = time.time()
    atomic_write_text(Path(folder) / f"{name}.json", json.dumps(info, indent=1) + "\n")


def remove_worker_files(folder: Path, name: str) -> None:
    """Remove the worker's description and lock file (its lock must be released first)."""
    for suffix in (".json", ".lock"):
        with contextlib.suppress(OSError):
            (Path(folder) / f"{name}{suffix}").unlink()
