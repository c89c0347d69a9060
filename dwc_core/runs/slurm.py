"""Queued runs on a Slurm cluster: submit, follow, re-submit, cancel; the registry stays on the head node.

The Slurm worker (``dwc worker --slurm``, or ``python -m dwc_core.runs.slurm worker``) runs on the login/head node
and never trains anything itself. It claims queued runs, writes each run's row to ``<run_dir>/run.json`` and submits
a batch job with ``sbatch`` (argument lists only; nothing built from config values reaches a shell). The job runs
:func:`job_main` on its first node, which starts the training process with the *files* reporting sink (it never
opens the registry): directly for one process, or ``srun`` → ``torchrun`` on every node for ``trainer.nodes`` ×
``trainer.gpus`` processes. The worker follows its jobs with ``squeue`` (then ``sacct``, then ``scontrol show job``
where accounting is off), ingests the run directories' report files into the registry, and when a job ends:

- completed with the run's final status written → that status (done, or failed with the trainer's message);
- TIMEOUT / PREEMPTED → re-submitted from ``last.pt`` (at most ``max_requeues`` times), no metric step repeated;
  a job that got Slurm's SIGTERM, checkpointed and exited in time ends FAILED: it counts as PREEMPTED when Slurm
  had chosen it for preemption (PreemptTime), else as TIMEOUT. A job Slurm requeues itself (PreemptMode=REQUEUE,
  ``scontrol requeue``) keeps its id and stays followed: it restarts from ``last.pt`` (bounded by Slurm's
  MaxBatchRequeue, not by ``max_requeues``);
- CANCELLED (``scancel``) → ``cancelled`` with Slurm's reason;
- FAILED / NODE_FAIL / OUT_OF_MEMORY / … → ``failed`` with Slurm's state, reason, exit code (a trainer killed by
  signal N makes the batch script exit 128+N) and the log's last lines;
- unknown to Slurm (squeue, sacct and scontrol answer that they do not know it, e.g. purged after MinJobAge while
  no worker followed it) and no final status in the run directory, ``UNKNOWN_POLLS`` polls in a row → ``failed``,
  resumable. Polls where Slurm did not answer (controller unreachable) do not count.

When Slurm does not answer (a command times out, the controller is unreachable) the worker says so once, settles,
fails and forgets nothing, keeps ingesting the run directories, and asks again at the next poll. sbatch refusing a
run fails that run with sbatch's message; sbatch getting no answer puts the run back in the queue, and its next
submission first looks for a job of the run's name (sbatch may have submitted one before its answer was lost). That
"no answer yet" is recorded in the run directory (``slurm_sbatch_pending``, written before sbatch runs and removed
once Slurm answered and the job id is in the registry), so it outlives the worker: a worker that died while sbatch
hung, or before it submitted the run again, leaves the next worker to look before submitting.

A run is one job at a time: each submission writes a token (``slurm_attempt``) that the job gets as an argument,
and a job of an earlier submission that Slurm starts late exits without touching the run directory; ``dwc resume``
of a run whose job Slurm still has is refused.

Plain ``sbatch``/``squeue``/``sacct``/``scontrol``/``scancel`` rather than submitit: submitit pickles Python
callables into jobs and keeps its own job folders and state, while a run here is a command line whose state lives in
the registry and the run directory; and the CLI tools work unchanged on clusters without accounting storage.

A worker that dies loses nothing: the jobs keep writing their files, and the next worker adopts every run that has a
Slurm job and is not finished, and ingests what was written meanwhile. Torch-free.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dwc_core.errors import DwcError, UsageError
from dwc_core.fileio import atomic_write_text
from dwc_core.runs import control
from dwc_core.runs.ingest import STATUS_FILE, ingest, job_started_since, read_final
from dwc_core.runs.locks import LockHeld
from dwc_core.runs.registry import ACTIVE, CLAIMABLE, Registry
from dwc_core.runs.worker import (
    INFO_EVERY_S,
    ORPHAN_CLAIM_S,
    hold_worker_lock,
    remove_worker_files,
    write_worker_file,
)

ACTIVE_STATES = {
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
    "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT",
}  # fmt: skip
RESUBMIT_STATES = {"TIMEOUT", "PREEMPTED"}
# Written by the batch script when Slurm signals it (``--signal=B:TERM@grace`` before the time limit, or a
# preemption's SIGTERM): the trainer then checkpoints and exits before the limit, so the job ends FAILED rather than
# TIMEOUT, and this file is what tells a time-limit stop from a crash.
SIGNAL_FILE = "slurm_signal.json"
ATTEMPT_FILE = "slurm_attempt"  # the token of the run's current submission
# present while an sbatch of the run has not been answered (written before sbatch runs, removed once Slurm
# answered and its job id is recorded): whoever submits the run next looks for a job of its name first
SBATCH_PENDING_FILE = "slurm_sbatch_pending"
#: polls after which a followed job that neither Slurm (squeue, sacct, scontrol) nor its run directory knows is
#: settled as failed (it ended while no worker followed it, and Slurm forgot it after MinJobAge)
UNKNOWN_POLLS = 24
FAILED_STATES = {"FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
JOB_SCRIPT = "dwc-slurm-job.py"
LOG_TAIL_LINES = 8


class SlurmError(DwcError):
    """A Slurm command failed (the message quotes it and its error output)."""


class SlurmUnreachable(SlurmError):
    """A Slurm command got no answer (it timed out, or could not reach the controller): nothing can be concluded
    from it, and asking again later may work — unlike a command Slurm answered with a refusal."""


#: what Slurm's clients print when the controller does not answer (rather than refusing the request)
UNREACHABLE_MARKS = (
    "unable to contact slurm controller", "socket timed out", "connection refused", "zero bytes were transmitted",
    "temporarily unable to accept job", "connection timed out",
)  # fmt: skip


@dataclass
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    sbatch_args: list[str] = field(default_factory=list)
    max_jobs: int = 8
    max_requeues: int = 3
    grace_s: int = 90  # --signal=B:TERM@grace: the trainer checkpoints before the time limit
    poll_s: float = 5.0


@dataclass
class JobInfo:
    job_id: str
    state: str
    reason: str = ""
    nodes: str = ""
    exit_code: str = ""
    source: str = ""  # squeue / sacct / scontrol
    preempted: bool = False  # scontrol shows a PreemptTime: Slurm chose this job for preemption
    restarts: int = 0  # scontrol's Restarts: how many times Slurm requeued this job id

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def describe(self) -> str:
        text = self.state
        if self.state == "RUNNING" and self.nodes:
            text += f" on {self.nodes}"
        elif self.reason and self.reason not in ("None", "(null)"):
            text += f" ({self.reason})"
        return text


# --------------------------------------------------------------------------------------------- slurm commands
def _slurm(args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SlurmError(
            f"`{args[0]}` is not installed or not on PATH: `dwc worker --slurm` needs the Slurm client commands "
            "(sbatch, squeue, scontrol, scancel) on this node."
        ) from None
    except subprocess.TimeoutExpired:
        raise SlurmUnreachable(f"`{' '.join(args)}` did not answer within {timeout:.0f}s.") from None


def available() -> str | None:
    """None when Slurm's commands answer here; else why not, in words."""
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH"
    res = _slurm(["sinfo", "-h", "-o", "%P %a"], timeout=20)
    if res.returncode != 0:
        return f"sinfo failed: {res.stderr.strip() or res.stdout.strip()}"
    return None


class JobStates(dict):
    """``job_states``' answer: job id → JobInfo, and ``forgotten``: the asked jobs Slurm answered it does not know
    (squeue and scontrol said so, sacct had nothing) — unlike a job it could not be asked about (controller down).
    ``answered`` is False when squeue got no answer (``error`` says why): a job absent from such an answer may
    well be alive."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.forgotten: set[str] = set()
        self.answered = True
        self.error = ""


def _invalid_id(res: subprocess.CompletedProcess) -> bool:
    """Slurm answered and does not know the job (``slurm_load_jobs error: Invalid job id specified``)."""
    return "invalid job id" in f"{res.stderr} {res.stdout}".lower()


def _unreachable(res: subprocess.CompletedProcess) -> bool:
    """The command failed because the controller did not answer (not because Slurm refused the request)."""
    text = f"{res.stderr} {res.stdout}".lower()
    return res.returncode != 0 and any(mark in text for mark in UNREACHABLE_MARKS)


def _squeue(job_ids: list[str]) -> tuple[dict[str, JobInfo], bool, str]:
    """squeue's view of the jobs, whether it answered (an unknown single job id is an answer too), and its error
    output when it did not."""
    cmd = ["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%r|%N"]
    res = _slurm(cmd)
    out = {}
    if res.returncode == 0:
        for line in res.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 4:
                out[parts[0]] = JobInfo(parts[0], parts[1], parts[2], parts[3], source="squeue")
    answered = res.returncode == 0 or _invalid_id(res)
    why = (res.stderr or res.stdout).strip() or f"exit code {res.returncode}"
    return out, answered, "" if answered else f"`{' '.join(cmd)}` failed: {why}"


def _sacct(job_ids: list[str]) -> dict[str, JobInfo]:
    """sacct's view of the jobs: one ``JobID|State|NodeList|ExitCode`` line per job allocation (``-X``: step lines
    such as ``12.batch`` are left out, and ignored if printed); a job Slurm requeued may be listed once per
    instance, oldest first: the last line is the current one. ``State`` may carry words after the state
    (``CANCELLED by 0``): they become the reason."""
    res = _slurm(["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State,NodeList,ExitCode"])
    out = {}
    if res.returncode == 0:
        for line in res.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 4 and parts[0] in job_ids:
                state, _, reason = parts[1].strip().partition(" ")  # "CANCELLED by 0" → CANCELLED, "by 0"
                out[parts[0]] = JobInfo(
                    parts[0], state or "UNKNOWN", reason.strip(), parts[2], parts[3], source="sacct"
                )
    return out


def _scontrol(job_id: str) -> JobInfo | None:
    return _scontrol_query(job_id)[0]


def _scontrol_query(job_id: str) -> tuple[JobInfo | None, bool]:
    """``scontrol show job``'s view of the job, and whether scontrol answered that it does not know it."""
    res = _slurm(["scontrol", "show", "job", "-o", job_id])
    if res.returncode != 0 or "JobState=" not in res.stdout:
        return None, _invalid_id(res)
    fields = dict(item.split("=", 1) for item in res.stdout.split() if "=" in item)
    return JobInfo(
        job_id, fields.get("JobState", "UNKNOWN"), fields.get("Reason", ""), fields.get("NodeList", ""),
        fields.get("ExitCode", ""), source="scontrol",
        preempted=fields.get("PreemptTime", "None") not in ("", "None", "Unknown", "(null)"),
        restarts=int(fields["Restarts"]) if fields.get("Restarts", "").isdigit() else 0,
    ), False  # fmt: skip


def _read_json(path: Path) -> dict:
    """A small JSON object written by the worker or the batch script ({} when missing or unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_signal(run_dir: Path) -> dict:
    """What the batch script recorded about Slurm's SIGTERM ({} when none)."""
    return _read_json(run_dir / SIGNAL_FILE)


def job_states(job_ids: list[str]) -> JobStates:
    """Slurm's view of the given jobs: squeue, then sacct for the ones it no longer lists, then ``scontrol show
    job`` (clusters without accounting storage). A job nobody knows any more is absent from the result, and in its
    ``forgotten`` set when Slurm answered so (not when a command failed, e.g. the controller was unreachable).
    Raises :class:`SlurmError` when a command timed out or is missing."""
    ids = [j for j in dict.fromkeys(job_ids) if j]
    out = JobStates()
    if not ids:
        return out
    listed, squeue_answered, out.error = _squeue(ids)
    out.answered = squeue_answered
    out.update(listed)
    # squeue still lists a job for a while after it ended: prefer sacct/scontrol for its final state details
    missing = [j for j in ids if j not in out or not out[j].active]
    if missing:
        out.update(_sacct(missing))
        for j in missing:
            if j not in out or out[j].source == "squeue":
                info, unknown = _scontrol_query(j)
                if info is not None:
                    out[j] = info
                elif j not in out and unknown and squeue_answered:
                    out.forgotten.add(j)
    return out


def scancel(job_id: str) -> None:
    res = _slurm(["scancel", job_id])
    if res.returncode != 0:
        raise SlurmError(f"scancel {job_id} failed: {res.stderr.strip()}")


# ------------------------------------------------------------------------------------------------- submission
def job_script(project: Path) -> Path:
    """The batch script (a Python file run by this interpreter); its content holds no config value."""
    folder = project / "runs" / ".slurm"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / JOB_SCRIPT
    text = (
        f"#!{sys.executable}\n"
        "# dwc: a queued run as a Slurm batch job (arguments: run id, registry path, run directory)\n"
        "from dwc_core.runs.slurm import job_main\n\n"
        "raise SystemExit(job_main())\n"
    )
    if not path.exists() or path.read_text() != text:
        atomic_write_text(path, text, mode=0o755)
    return path


def sbatch_command(
    run: dict, registry_path: Path, opts: SlurmOptions, script: Path, attempt: str | None = None
) -> list[str]:
    t = run["config"]["trainer"]
    nodes, gpus = int(t.get("nodes", 1)), int(t.get("gpus", 1))
    run_dir = Path(run["run_dir"])
    cmd = [
        "sbatch", "--parsable", f"--job-name={job_name(run)}", f"--nodes={nodes}",
        "--ntasks-per-node=1", f"--output={run_dir / 'train.log'}", "--open-mode=append",
        f"--chdir={registry_path.parent.parent}", f"--signal=B:TERM@{int(opts.grace_s)}", "--requeue",
        "--export=ALL",
    ]  # fmt: skip
    if t.get("device") == "cpu":
        cmd.append(f"--cpus-per-task={gpus}")  # one process per "gpu" (gloo), one core each
    else:
        cmd.append(f"--gpus-per-node={gpus}")
    for flag, value in (("partition", opts.partition), ("account", opts.account), ("qos", opts.qos),
                        ("time", opts.time)):  # fmt: skip
        if value:
            cmd.append(f"--{flag}={value}")
    cmd += list(opts.sbatch_args)
    cmd += [str(script), str(run["id"]), str(registry_path), str(run_dir)] + ([attempt] if attempt else [])
    return cmd


def job_name(run: dict) -> str:
    return f"dwc-{run['id']}-{run['experiment']}"


def find_job(name: str) -> str | None:
    """The id of a job named ``name`` that Slurm has and that has not ended (None when there is none)."""
    cmd = ["squeue", "-h", "--name", name, "-o", "%i|%T"]
    res = _slurm(cmd)
    if res.returncode != 0:
        error = SlurmUnreachable if _unreachable(res) else SlurmError
        raise error(f"`{' '.join(cmd)}` failed: {(res.stderr or res.stdout).strip() or res.returncode}")
    for line in res.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if job and state in ACTIVE_STATES:
            return job
    return None


def submit(
    registry: Registry,
    registry_path: Path,
    run: dict,
    opts: SlurmOptions,
    note: str = "",
) -> str:
    """Submit a claimed run as a batch job; records the job id on the run and in its events. When the run
    directory records an sbatch that got no answer (``SBATCH_PENDING_FILE``, written before each sbatch and removed
    once Slurm answered: by this worker or by one that died since — it may have submitted a job all the same), a
    job of the run's name that Slurm has, or one that started the run since, is followed instead of submitting a
    second one."""
    run_dir = Path(run["run_dir"])
    pending = run_dir / SBATCH_PENDING_FILE
    if pending.exists():
        found = find_job(job_name(run))
        if found is None:  # a job that started, and may have ended, since that sbatch
            found = job_started_since(run_dir, float(_read_json(pending).get("time") or 0) - 1.0)
        if found is not None:
            registry.update(
                run["id"], slurm_job=found, slurm_state="PENDING", slurm_reason=None, slurm_nodes=None
            )
            registry.event(
                run["id"],
                "slurm",
                f"sbatch got no answer earlier, but Slurm has job {found} for this run: followed",
            )
            pending.unlink(missing_ok=True)
            return found
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / STATUS_FILE).unlink(missing_ok=True)  # a new attempt: the last one's final word is stale
    (run_dir / SIGNAL_FILE).unlink(missing_ok=True)
    row = registry.get(run["id"])
    atomic_write_text(run_dir / "run.json", json.dumps(row, sort_keys=True, default=str))
    # the run's current attempt: a job of an earlier submission that Slurm starts late (it was held, requeued)
    # finds another token here and exits without touching the run (see job_main)
    attempt = secrets.token_hex(6)
    atomic_write_text(run_dir / ATTEMPT_FILE, attempt)
    cmd = sbatch_command(row, registry_path, opts, job_script(registry_path.parent.parent), attempt)
    # until Slurm answers, this sbatch may or may not submit a job: say so where any later worker looks
    atomic_write_text(
        pending, json.dumps({"time": time.time(), "job_name": job_name(row), "attempt": attempt})
    )
    res = _slurm(cmd)  # a timeout raises SlurmUnreachable (and the pending file stays)
    job_id = res.stdout.strip().split(";")[0] if res.returncode == 0 else ""
    if not job_id.isdigit():
        # the controller did not answer: a later try may work (it first looks for a job that this sbatch did
        # submit before its answer was lost: the pending file stays for that)
        error = SlurmUnreachable if _unreachable(res) else SlurmError
        if error is SlurmError:  # Slurm answered with a refusal: no job was submitted
            pending.unlink(missing_ok=True)
        raise error(
            f"sbatch refused run {run['id']}: {(res.stderr or res.stdout).strip() or f'exit code {res.returncode}'} "
            f"(command: {' '.join(cmd)})"
        )
    registry.update(run["id"], slurm_job=job_id, slurm_state="PENDING", slurm_reason=None, slurm_nodes=None)
    registry.event(run["id"], "slurm", f"submitted as slurm job {job_id}{note}")
    pending.unlink(missing_ok=True)  # only now: a worker dying before the update above finds the job by name
    return job_id


# ------------------------------------------------------------------------------------------------- the worker
class SlurmWorker:
    def __init__(
        self, registry_path: Path, opts: SlurmOptions, name: str | None = None, log=print, log_file: str | None = None
    ):  # fmt: skip
        self.registry_path = Path(registry_path).resolve()
        self.registry = Registry(self.registry_path)
        self.opts = opts
        self.name = name or f"slurm-{socket.gethostname()}-{os.getpid()}"
        self.log = log
        self.log_file = log_file
        self.followed: dict[int, str] = {}  # run id → job id
        self.unknown: dict[int, int] = {}  # run id → polls in a row that found its job nowhere
        self.unknown_polls = UNKNOWN_POLLS
        self.stop = False
        self.folder = self.registry_path.parent / control.WORKERS_DIR  # runs/workers/, beside local workers
        self._lock = None
        self._info: dict = {}
        self._last_info = 0.0
        # why Slurm does not answer, while it does not (logged once per outage)
        self.outage: str | None = None

    # -------------------------------------------------------------------------------- runs/workers/ entry
    def register(self) -> None:
        """Describe this worker in ``runs/workers/<name>.json`` (``kind: slurm``) and hold ``<name>.lock`` while
        it lives, as local workers do: `dwc workers` lists it, and `dwc run --queue` / `dwc resume` know that
        queued runs will be taken. A second worker object in the same process gets a numbered name."""
        base, n = self.name, 1
        while True:
            try:
                self._lock = hold_worker_lock(self.folder, self.name)
                break
            except LockHeld:
                if n >= 100:
                    raise
                n += 1
                self.name = f"{base}-{n}"
        o = self.opts
        self._info = {
            "name": self.name, "kind": "slurm", "host": socket.gethostname(), "pid": os.getpid(), "gpus": [],
            "cpu_slots": 0, "partition": o.partition, "account": o.account, "qos": o.qos, "time": o.time,
            "max_jobs": o.max_jobs, "started": time.time(), "log": self.log_file,
        }  # fmt: skip
        self.heartbeat(force=True)

    def heartbeat(self, force: bool = False) -> None:
        """Refresh the worker file (heartbeat, followed runs) every INFO_EVERY_S: a worker on another host is
        live while its heartbeat is fresh."""
        if self._lock is None or (not force and time.time() - self._last_info < INFO_EVERY_S):
            return
        self._info["runs"] = sorted(self.followed)
        write_worker_file(self.folder, self.name, self._info)
        self._last_info = time.time()

    def unregister(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
            remove_worker_files(self.folder, self.name)

    def adopt(self) -> list[int]:
        """Follow every unfinished run that has a Slurm job (a previous worker's included)."""
        rows = [
            r
            for r in self.registry._rows(
                "SELECT id, slurm_job, slurm_state, status FROM runs WHERE slurm_job IS NOT NULL AND deleted = 0 "
                "AND status IN ('starting', 'running', 'lost')"
            )
            # a lost run is adopted when its job was last seen alive (marked lost while no worker ingested)
            if r["status"] != "lost" or (r["slurm_state"] or "PENDING").split(" ")[0] in ACTIVE_STATES
        ]
        for r in rows:
            if r["id"] not in self.followed:
                self.followed[r["id"]] = str(r["slurm_job"])
                self.registry.update(r["id"], worker=self.name)  # `dwc workers` shows who follows it now
                if r["status"] == "lost":
                    self.registry.set_status(
                        r["id"],
                        "running",
                        f"adopted by {self.name}: slurm job {r['slurm_job']}",
                        only_from=("lost",),
                    )
                else:
                    self.registry.event(
                        r["id"], "slurm", f"followed by {self.name} (slurm job {r['slurm_job']})"
                    )
        self._requeue_unanswered_claims()
        return [r["id"] for r in rows]

    def _requeue_unanswered_claims(self) -> list[int]:
        """Runs a worker claimed and died with while its sbatch had no answer (no job id recorded, the run
        directory's SBATCH_PENDING_FILE still there): back in the queue, where the next submission looks for a job
        of the run's name before submitting (the lost sbatch may have submitted one)."""
        live = {w.get("name") for w in control.live_workers(self.registry_path.parent.parent)} | {self.name}
        back = []
        for r in self.registry._rows(
            "SELECT id, worker, run_dir FROM runs WHERE status = 'starting' AND slurm_job IS NULL AND pid IS NULL "
            "AND deleted = 0 AND claimed < ?",
            [time.time() - ORPHAN_CLAIM_S],
        ):
            if (
                r["worker"] in live
                or not r["run_dir"]
                or not (Path(r["run_dir"]) / SBATCH_PENDING_FILE).exists()
            ):
                continue
            why = (
                f"back in the queue: claimed by {r['worker']}, which ended while its sbatch had no answer (the next "
                "submission first looks for a job of this run's name)"
            )
            if self.registry.set_status(r["id"], "queued", why, only_from=("starting",)):
                back.append(r["id"])
                self.log(f"run {r['id']}: {why}")
        return back

    def _slurm_down(self, why: str) -> None:
        """Slurm did not answer: say so once per outage (the worker keeps going and asks again at each poll)."""
        if self.outage is None:
            self.log(
                f"Slurm does not answer: {why} — nothing is settled, failed or forgotten while it does not; "
                f"asking again every {self.opts.poll_s:g}s"
            )
        self.outage = why

    def _slurm_up(self) -> None:
        if self.outage is not None:
            self.log("Slurm answers again")
        self.outage = None

    def _slurm_answers(self) -> bool:
        """During an outage, whether Slurm answers now (one ``sinfo``), before claiming queued runs again."""
        try:
            res = _slurm(["sinfo", "-h", "-o", "%P"], timeout=20)
        except SlurmError as exc:
            self._slurm_down(exc.message)
            return False
        if res.returncode != 0:
            self._slurm_down(f"sinfo failed: {(res.stderr or res.stdout).strip() or res.returncode}")
            return False
        self._slurm_up()
        return True

    def _back_to_queue(self, run_id: int, why: str) -> None:
        """sbatch got no answer: the run waits in the queue (not failed), and is submitted once Slurm answers
        (its run directory's SBATCH_PENDING_FILE makes that submission look for the job this one may have made)."""
        self.registry.set_status(
            run_id, "queued", f"back in the queue: sbatch got no answer ({why}); submitted when Slurm answers",
            only_from=ACTIVE,
        )  # fmt: skip

    def submit_queued(self) -> list[int]:
        """Claim queued runs and submit them, up to ``max_jobs`` followed at once. sbatch refusing a run (a bad
        partition, account, time limit...) fails that run with sbatch's message: submitting it again would be
        refused again. sbatch getting no answer puts the run back in the queue and stops submitting until Slurm
        answers: failing it would fail the whole queue for a controller that was down for a minute."""
        started = []
        if self.outage is not None and not self._slurm_answers():
            return started
        while len(self.followed) < self.opts.max_jobs and not self.stop:
            run = self.registry.claim(self.name)
            if run is None:
                break
            try:
                job = submit(self.registry, self.registry_path, run, self.opts)
            except SlurmUnreachable as exc:
                self._back_to_queue(run["id"], exc.message)
                self._slurm_down(exc.message)
                break
            except (SlurmError, OSError) as exc:
                msg = exc.message if isinstance(exc, DwcError) else f"cannot prepare run directory: {exc}"
                self.registry.set_status(run["id"], "failed", msg, only_from=ACTIVE, error=msg)
                self.log(f"run {run['id']}: {msg}")
                continue
            self.followed[run["id"]] = job
            started.append(run["id"])
            self.log(f"run {run['id']} ({run['experiment']}): slurm job {job}")
        return started

    def poll(self) -> list[int]:
        """Ingest, refresh Slurm's state, and settle the runs whose job ended; returns the runs that ended."""
        if not self.followed:
            return []
        try:
            states = job_states(list(self.followed.values()))
        # a command timed out (or vanished): a poll with no answer, asked again next time
        except SlurmError as exc:
            states = JobStates()
            states.answered, states.error = False, exc.message
        answered = getattr(states, "answered", True)
        if answered:
            self._slurm_up()
        else:
            self._slurm_down(getattr(states, "error", "") or "squeue got no answer")
        ended = []
        for run_id, job in list(self.followed.items()):
            info = states.get(job)
            with contextlib.suppress(FileNotFoundError):
                ingest(self.registry, run_id, apply_final=False)
            row = self.registry.get(run_id)
            if row["status"] not in (*ACTIVE, "lost"):  # settled elsewhere (e.g. cancelled before it started)
                self.followed.pop(run_id)
                ended.append(run_id)
                continue
            if info is not None:
                desc = info.describe()
                if desc != row.get("slurm_state") or info.nodes != (row.get("slurm_nodes") or ""):
                    self.registry.update(
                        run_id,
                        slurm_state=desc,
                        slurm_reason=info.reason or None,
                        slurm_nodes=info.nodes or None,
                    )
                    if info.state != (row.get("slurm_state") or "").split(" ")[0]:
                        self.registry.event(run_id, "slurm", f"slurm job {job}: {desc}")
                if info.active:
                    self.unknown.pop(run_id, None)
                    if row["status"] == "lost":  # marked lost while nobody followed it: Slurm still has it
                        self.registry.set_status(
                            run_id, "running", f"slurm job {job} is {desc}; followed by {self.name}",
                            only_from=("lost",),
                        )  # fmt: skip
                    continue
            elif not answered:
                # Slurm did not answer (controller unreachable, a command timed out): its silence says nothing
                # about the job, so nothing is settled, counted or re-submitted until it answers
                continue
            elif read_final(Path(row["run_dir"])) is None:
                # not known to Slurm (yet, or any more) and no final word: look again next time — a bounded
                # number of times (a job that ended unseen and that Slurm has forgotten would be followed forever).
                # Only polls where Slurm answered count: an unreachable controller forgets nothing.
                forgotten = getattr(states, "forgotten", None)
                if forgotten is not None and job not in forgotten:
                    continue
                self.unknown[run_id] = self.unknown.get(run_id, 0) + 1
                if self.unknown[run_id] >= self.unknown_polls:
                    self._forgotten(run_id, job)
                    self.followed.pop(run_id, None)
                    ended.append(run_id)
                continue
            self.unknown.pop(run_id, None)
            if self.settle(run_id, job, info, row):
                self.followed.pop(run_id, None)
                ended.append(run_id)
        return ended

    def _forgotten(self, run_id: int, job: str) -> None:
        why = (
            f"slurm job {job} is unknown to Slurm and left no final status (it may have been purged after "
            f"MinJobAge while no worker followed it; squeue, sacct and scontrol knew nothing of it in "
            f"{self.unknown_polls} polls). `dwc resume {run_id}` continues it from last.pt."
        )
        tail = log_tail(Path(self.registry.get(run_id)["run_dir"]) / "train.log")
        message = why + ("\nlast lines of train.log:\n" + "\n".join(tail) if tail else "")
        self.registry.set_status(
            run_id, "failed", why, only_from=(*ACTIVE, "lost"), error=message, exit_code=1,
            slurm_state="UNKNOWN (forgotten by Slurm)", slurm_reason=None, slurm_nodes=None,
        )  # fmt: skip
        self.log(f"run {run_id}: {why}")

    def settle(self, run_id: int, job: str, info: JobInfo | None, row: dict) -> bool:
        """The job ended: final ingest, then done / failed / cancelled, or re-submission. True when settled."""
        with contextlib.suppress(FileNotFoundError):
            ingest(self.registry, run_id, apply_final=False)
        run_dir = Path(row["run_dir"])
        final = read_final(run_dir)
        state = info.state if info else "UNKNOWN"
        requeues = int(row.get("slurm_requeues") or 0)
        stopped = final is None or final["status"] == "cancelled"
        fresh = self.registry.get(run_id)
        if (
            state not in (*RESUBMIT_STATES, "CANCELLED")
            and stopped
            and (run_dir / SIGNAL_FILE).exists()
            and not fresh.get("cancel_requested")
        ):  # stopped by Slurm's SIGTERM, checkpointed, exited before being killed: Slurm says FAILED (or
            # COMPLETED); a preemption when Slurm had chosen the job for it (PreemptTime, seen by the batch script
            # or still by scontrol), else the time-limit warning
            preempted = bool(_read_signal(run_dir).get("preempted")) or bool(info and info.preempted)
            if not preempted and info is not None and info.source != "scontrol":
                with contextlib.suppress(SlurmError):
                    preempted = bool((_scontrol(job) or JobInfo(job, state)).preempted)
            state = "PREEMPTED" if preempted else "TIMEOUT"
        if state in RESUBMIT_STATES and stopped and requeues < self.opts.max_requeues:
            note = f" (re-submitted after {state}, {requeues + 1}/{self.opts.max_requeues}; resumes from last.pt)"
            self.registry.update(run_id, slurm_requeues=requeues + 1)
            self.registry.set_status(
                run_id, "starting", f"slurm job {job} ended {state}", only_from=(*ACTIVE, "lost")
            )
            try:
                self.followed[run_id] = submit(self.registry, self.registry_path, row, self.opts, note)
            except SlurmUnreachable as exc:  # no answer: the run waits in the queue until Slurm answers
                self._back_to_queue(run_id, exc.message)
                self._slurm_down(exc.message)
                return True
            except (SlurmError, OSError) as exc:  # refused: submitting it again would be refused again
                msg = exc.message if isinstance(exc, DwcError) else f"cannot prepare run directory: {exc}"
                self.registry.set_status(run_id, "failed", msg, only_from=ACTIVE, error=msg)
                self.log(f"run {run_id}: {msg}")
                return True
            return False
        fields = {"slurm_state": state}
        if state == "CANCELLED":
            reason = f"slurm job {job}: cancelled by Slurm (scancel)" + (
                f"; {final['message']}" if final and final.get("message") else ""
            )
            self.registry.set_status(
                run_id, "cancelled", reason, only_from=(*ACTIVE, "lost"), error=reason, **fields
            )
        elif state in RESUBMIT_STATES and stopped:
            # out of re-submissions: nobody asked the run to stop, it did not get to finish — failed (resumable,
            # and `dwc queue --failed` takes it), not cancelled
            hint = "a longer --time" if state == "TIMEOUT" else "a partition or QOS where it is not preempted"
            why = (
                f"slurm job {job} ended {state} after {requeues} re-submissions (--max-requeues "
                f"{self.opts.max_requeues}): not re-submitted again. `dwc resume {run_id}` continues it from "
                f"last.pt ({hint} may help)"
            )
            self.registry.set_status(
                run_id, "failed", why, only_from=(*ACTIVE, "lost"), error=why, exit_code=1, **fields
            )
        elif final is not None and final["status"] == "done" and state in ("COMPLETED", "UNKNOWN"):
            extra = {k: final[k] for k in ("exit_code",) if k in final}
            self.registry.set_status(run_id, "done", final.get("message") or "done", only_from=(*ACTIVE, "lost"),
                                     **fields, **extra)  # fmt: skip
        else:
            if final is not None and final["status"] == "failed":
                why = final.get("error") or final.get("message") or "failed"
            else:
                code = f", exit code {exit_words(info.exit_code)}" if info and info.exit_code else ""
                reason = f": {info.reason}" if info and info.reason not in ("", "None") else ""
                why = f"slurm job {job} ended {state}{code}{reason}"
            tail = log_tail(run_dir / "train.log")
            message = why + ("\nlast lines of train.log:\n" + "\n".join(tail) if tail else "")
            self.registry.set_status(run_id, "failed", why, only_from=(*ACTIVE, "lost"), error=message,
                                     exit_code=1, **fields)  # fmt: skip
        self.log(f"run {run_id}: slurm job {job} ended {state} → {self.registry.get(run_id)['status']}")
        return True

    def run(self, once: bool = False) -> int:
        """Register in runs/workers/, follow and submit until stopped (or, with ``once``, until nothing is left);
        the worker file goes when it returns."""
        self.register()
        try:
            return self._loop(once)
        finally:
            self.unregister()

    def _loop(self, once: bool) -> int:
        self.adopt()
        while not self.stop:
            try:
                self.submit_queued()
                self.poll()
            # both handle Slurm's silence themselves; anything else Slurm did: logged, and tried again next poll
            except SlurmError as exc:
                self._slurm_down(exc.message)
            self.heartbeat()
            if once and not self.followed and not self._claimable():
                return 0
            deadline = time.time() + self.opts.poll_s
            while time.time() < deadline and not self.stop:
                time.sleep(min(0.2, self.opts.poll_s))
        return 130

    def _claimable(self) -> bool:
        row = self.registry.conn.execute(f"SELECT COUNT(*) FROM runs WHERE {CLAIMABLE}").fetchone()
        return bool(row[0])


def log_tail(path: Path, n: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            data = fh.read()
    except OSError:
        return []
    return [line for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()][-n:]


def cancel(registry: Registry, run_id: int) -> str | None:
    """``dwc cancel`` of a run handed to Slurm: scancel its job (the worker records the outcome). None when the
    run has no active Slurm job."""
    row = registry.get(run_id)
    job = row.get("slurm_job")
    if not job or row["status"] not in (*ACTIVE, "lost"):
        return None
    scancel(str(job))
    registry.event(run_id, "cancel", f"scancel {job}")
    return f"run {run_id}: scancel {job} (Slurm stops it; the Slurm worker records it cancelled)"


def run_worker(
    registry_path: Path, opts: SlurmOptions, once: bool = False, log=print, log_file: str | None = None
) -> int:
    why = available()
    if why is not None:
        raise UsageError(f"dwc worker --slurm: no Slurm cluster reachable from here ({why}).")
    worker = SlurmWorker(registry_path, opts, log=log, log_file=log_file)

    def on_signal(signum, _frame):
        worker.stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return worker.run(once=once)


# ------------------------------------------------------------------------------------------------ inside a job
def _first_node() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or ""
    if nodelist:
        res = _slurm(["scontrol", "show", "hostnames", nodelist])
        if res.returncode == 0 and res.stdout.split():
            return res.stdout.split()[0]
    return socket.gethostname()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def job_command(run: dict, registry_path: Path, run_dir: Path) -> list[str]:
    """What the batch job runs: the trainer with the files sink; srun → torchrun when more than one process."""
    from dwc_core.runs.launcher import torchrun_command

    t = run["config"]["trainer"]
    nodes, gpus = int(t.get("nodes", 1)), int(t.get("gpus", 1))
    extra = ["--sink", "files", "--run-dir", str(run_dir)]
    if nodes * gpus == 1:
        return [sys.executable, "-m", "dwc_core.engine.train", str(run["id"]), "--registry", str(registry_path),
                *extra]  # fmt: skip
    job = os.environ.get("SLURM_JOB_ID", "0")
    endpoint = f"{_first_node()}:{_free_port()}"
    return [
        "srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
        *torchrun_command(run, registry_path, nodes, gpus, endpoint, f"dwc-{run['id']}-{job}", extra),
    ]  # fmt: skip


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _preempted_in_log(log: Path, job: str) -> bool:
    """Slurm's own line in the job's output when it killed the job for a preemption (requeue mode), e.g.
    ``slurmstepd: error: *** JOB 12 ON node1 CANCELLED AT ... DUE TO PREEMPTION ***``."""
    return any(f"JOB {job} ON" in line and "DUE TO PREEMPTION" in line for line in log_tail(log, n=200))


def job_main(argv: list[str] | None = None) -> int:
    """The batch script's body: start the training process, forward SIGTERM to it, exit with its code."""
    from dwc_core.engine.reporting import RUN_DIR_ENV, SINK_ENV, FileSink

    p = argparse.ArgumentParser(prog=JOB_SCRIPT)
    p.add_argument("run_id", type=int)
    p.add_argument("registry")
    p.add_argument("run_dir")
    p.add_argument("attempt", nargs="?", help="the submission's token (slurm_attempt in the run directory)")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    job = os.environ.get("SLURM_JOB_ID", "?")
    current = _read_text(run_dir / ATTEMPT_FILE)
    if args.attempt and current and current != args.attempt:
        print(
            f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} slurm job {job}: run {args.run_id} has been submitted again "
            "since this job was; this job exits without running it",
            flush=True,
        )
        return 0
    (run_dir / STATUS_FILE).unlink(missing_ok=True)
    # the attempt before this one (Slurm requeued this same job) may have left its signal record: read, then
    # remove it (stale for this attempt)
    previous = _read_signal(run_dir)
    (run_dir / SIGNAL_FILE).unlink(missing_ok=True)
    sink = FileSink(run_dir, args.run_id)
    run = sink.get(args.run_id)
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    message = f"slurm job {job} started on {socket.gethostname()} (restart {restarts})"
    if restarts not in ("", "0"):
        if previous.get("preempted") or _preempted_in_log(run_dir / "train.log", job):
            why = "a preemption"
        elif previous.get("requeued"):  # Slurm gives a job no other sign of which of the two it was
            why = "a preemption (PreemptMode=REQUEUE) or scontrol requeue"
        else:
            why = "scontrol requeue or a node failure"
        message += f": requeued by Slurm after {why}; the run resumes from last.pt"
    sink.event(args.run_id, "slurm", message)
    cmd = job_command(run, Path(args.registry), run_dir)
    env = {**os.environ, SINK_ENV: "files", RUN_DIR_ENV: str(run_dir), "PYTHONUNBUFFERED": "1"}
    print(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} slurm job {job}: {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
        if signum == signal.SIGTERM:  # from Slurm: the time-limit warning (--signal) or a preemption
            # Slurm may signal more than once (its --signal, then the kill's SIGTERM), and scontrol may not answer
            # the second time: what an earlier signal found out stays true
            earlier = _read_signal(run_dir)
            record = {
                "signal": "TERM",
                "time": earlier.get("time", time.time()),
                "preempted": bool(earlier.get("preempted")),
                "requeued": bool(earlier.get("requeued")),
            }
            with contextlib.suppress(SlurmError):
                info = _scontrol(job) if job != "?" else None
                if info is not None:
                    # a preemption's grace time: Slurm has set a PreemptTime
                    record["preempted"] |= info.preempted
                    # Slurm is requeueing this job id (PreemptMode=REQUEUE, or scontrol requeue): Restarts is up
                    record["requeued"] |= info.restarts > int(restarts or 0)
            with contextlib.suppress(OSError):
                atomic_write_text(run_dir / SIGNAL_FILE, json.dumps(record))

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:  # pragma: no cover — forwarded above
            continue
    return batch_exit_code(code, job)


def batch_exit_code(code: int, job: str = "?") -> int:
    """The batch script's exit code for the trainer's: a trainer killed by signal N (Popen's -N) exits 128+N, as a
    shell reports it — Slurm would otherwise show ``SystemExit(-9)``'s status 247 ("exit code 247:0")."""
    if code >= 0:
        return code
    print(
        f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} slurm job {job}: the trainer was killed by {_signame(-code)}",
        flush=True,
    )
    return 128 - code


def exit_words(exit_code: str) -> str:
    """Slurm's ``ExitCode`` (``code:signal``) in words: ``137:0`` → ``137:0 (the trainer was killed by SIGKILL)``."""
    code, _, sig = (exit_code or "").partition(":")
    extra = ""
    with contextlib.suppress(ValueError):
        if sig and int(sig):
            extra = f"the batch script was killed by {_signame(int(sig))}"
        elif 128 < int(code) <= 128 + 64:
            extra = f"the trainer was killed by {_signame(int(code) - 128)}"
    return f"{exit_code} ({extra})" if extra else exit_code


def _signame(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


# ------------------------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """``python -m dwc_core.runs.slurm worker`` (the CLI's ``dwc worker --slurm`` does the same)."""
    p = argparse.ArgumentParser(prog="python -m dwc_core.runs.slurm", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="submit queued runs to Slurm and follow them")
    w.add_argument("--registry", default="runs/registry.db")
    w.add_argument("--partition")
    w.add_argument("--account")
    w.add_argument("--qos")
    w.add_argument("--time")
    w.add_argument("--sbatch-arg", action="append", default=[])
    w.add_argument("--max-jobs", type=int, default=8)
    w.add_argument("--max-requeues", type=int, default=3)
    w.add_argument("--grace", type=int, default=90)
    w.add_argument("--poll", type=float, default=5.0)
    w.add_argument("--once", action="store_true")
    w.add_argument("--log-file", help="where this worker's output goes (recorded in runs/workers/)")
    args = p.parse_args(argv)
    opts = SlurmOptions(
        partition=args.partition, account=args.account, qos=args.qos, time=args.time,
        sbatch_args=args.sbatch_arg, max_jobs=args.max_jobs, max_requeues=args.max_requeues,
        grace_s=args.grace, poll_s=args.poll,
    )  # fmt: skip
    try:
        return run_worker(
            Path(args.registry),
            opts,
            once=args.once,
            log=lambda m: print(m, flush=True),
            log_file=args.log_file,
        )
    except DwcError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())


def spawn_detached(registry_path: Path, opts: SlurmOptions, once: bool = False) -> tuple[int, Path]:
    """``dwc worker --slurm --detach``: the same worker in its own session, logging to runs/workers/."""
    folder = Path(registry_path).resolve().parent / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"slurm-{socket.gethostname()}-{int(time.time())}.log"
    cmd = [sys.executable, "-m", "dwc_core.runs.slurm", "worker", "--registry", str(Path(registry_path).resolve()),
           "--max-jobs", str(opts.max_jobs), "--max-requeues", str(opts.max_requeues), "--grace", str(opts.grace_s),
           "--poll", str(opts.poll_s)]  # fmt: skip
    for flag, value in (("--partition", opts.partition), ("--account", opts.account), ("--qos", opts.qos),
                        ("--time", opts.time)):  # fmt: skip
        if value:
            cmd += [flag, value]
    for arg in opts.sbatch_args:
        cmd.append(f"--sbatch-arg={arg}")
    if once:
        cmd.append("--once")
    cmd.append(f"--log-file={log}")
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
    return proc.pid, log
