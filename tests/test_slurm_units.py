"""The Slurm worker's decisions without a cluster (Slurm's answers are faked): a run whose job Slurm still has is
never lost nor doubled, a job Slurm forgot is settled after a bounded number of polls (only polls Slurm answered
count), a job that failed ends `failed` with Slurm's state, reason and the log's last lines, and the sbatch / srun /
torchrun command lines are argument lists built from the run's config and the worker's options."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import wait_for
from test_results_registry import config, seed_run
from typer.testing import CliRunner

from dwc_core.runs import control, launcher, slurm
from dwc_core.runs.ingest import STATUS_FILE
from dwc_core.runs.registry import Registry
from dwc_tui.cli import app


@pytest.fixture
def reg(tmp_path):
    (tmp_path / "experiments.yaml").write_text("experiments: {}\n")
    r = Registry(tmp_path / "runs" / "registry.db")
    yield r
    r.close()


def _slurm_run(reg, tmp_path, status="running", state="RUNNING on node1", job="4711", worker=None, **trainer):
    rid = seed_run(reg, tmp_path, "synth", config(seed=1, trainer=trainer), {"mean": 1.0}, status=status)
    reg.update(
        rid, slurm_job=job, slurm_state=state, heartbeat=time.time() - 3600, host="head", worker=worker
    )
    return rid


def _worker(reg, log=lambda m: None, **kw) -> slurm.SlurmWorker:
    return slurm.SlurmWorker(reg.path, slurm.SlurmOptions(poll_s=0.01, **kw), name="w", log=log)


def _completed(args, rc=0, out="", err=""):
    return subprocess.CompletedProcess(args, rc, out, err)


class FakeSlurm:
    """Answers ``_slurm`` calls: squeue/sacct/scontrol as a cluster that knows only the jobs in ``jobs`` (id →
    state; none by default), or cannot be reached (``down``: the controller answers nothing, as its clients say it),
    or does not answer at all for the next ``hang`` calls (each raises what ``_slurm`` raises on a timeout). sbatch
    submits job 555, 556, ... (recorded in ``jobs`` as PENDING under its job name), or fails with
    ``sbatch_error`` (return code 1 and that error output); for the next ``lost_answers`` sbatch calls it submits
    the job and then times out (the job exists, its id never reaches the worker). Records every command."""

    def __init__(self, down=False, hang=0, jobs=None, sbatch_error=None, lost_answers=0):
        self.down = down
        self.hang = hang
        self.lost_answers = lost_answers
        self.jobs: dict[str, str] = dict(jobs or {})
        self.names: dict[str, str] = {}  # job id → job name
        self.sbatch_error = sbatch_error
        self.next_job = 555
        self.calls: list[list[str]] = []

    def __call__(self, args, timeout=60.0):
        self.calls.append(list(args))
        tool = args[0]
        if self.hang:
            self.hang -= 1
            raise slurm.SlurmUnreachable(f"`{' '.join(args)}` did not answer within {timeout:.0f}s.")
        if self.down and tool in ("squeue", "scontrol", "sacct", "sinfo", "sbatch"):
            return _completed(args, 1, err="slurm_load_jobs error: Unable to contact slurm controller")
        if tool == "squeue" and "--name" in args:
            name = args[args.index("--name") + 1]
            lines = [f"{j}|{self.jobs[j]}" for j, n in self.names.items() if n == name]
            return _completed(args, 0, out="".join(f"{line}\n" for line in lines))
        if tool == "squeue":
            known = [j for j in args[args.index("-j") + 1].split(",") if j in self.jobs]
            if known:
                return _completed(args, 0, out="".join(f"{j}|{self.jobs[j]}|None|node1\n" for j in known))
        if tool == "scontrol" and args[-1] in self.jobs:
            j = args[-1]
            return _completed(args, 0, out=f"JobId={j} JobState={self.jobs[j]} Reason=None NodeList=node1\n")
        if tool in ("squeue", "scontrol"):
            return _completed(args, 1, err="slurm_load_jobs error: Invalid job id specified")
        if tool == "sacct":
            return _completed(args, 1, err="Slurm accounting storage is disabled")
        if tool == "sbatch":
            if self.sbatch_error:
                return _completed(args, 1, err=self.sbatch_error)
            job = str(self.next_job)
            self.next_job += 1
            self.jobs[job] = "PENDING"
            self.names[job] = next(a.split("=", 1)[1] for a in args if a.startswith("--job-name="))
            if self.lost_answers:
                self.lost_answers -= 1
                raise slurm.SlurmUnreachable(f"`{' '.join(args)}` did not answer within {timeout:.0f}s.")
            return _completed(args, 0, out=f"{job}\n")
        return _completed(args, 0)

    def count(self, tool: str) -> int:
        return sum(1 for c in self.calls if c[0] == tool)


# --------------------------------------------------------------------------------------- lost / resume / cancel
def test_a_followed_slurm_run_is_judged_by_its_worker_not_by_heartbeat_age(reg, tmp_path):
    held = _slurm_run(reg, tmp_path, state="PENDING (JobHeldUser)", job="17")
    running = _slurm_run(reg, tmp_path, job="18", worker="w")
    w = _worker(reg)
    w.register()  # the Slurm worker named on the run is alive: the run is its to settle
    try:
        assert launcher.reap_lost(reg, "head") == []
        assert reg.get(running)["status"] == "running"
    finally:
        w.unregister()
    assert launcher.reap_lost(reg, "head") == [running]  # nobody follows it any more, and it was running
    row = reg.get(running)
    assert (
        "no live Slurm worker follows slurm job 18" in row["error"] and "dwc worker --slurm" in row["error"]
    )
    assert reg.get(held)["status"] == "running"  # held in Slurm's queue: no heartbeat is expected


def test_a_worker_finding_a_lost_runs_job_alive_in_slurm_takes_it_back(reg, tmp_path, monkeypatch):
    rid = _slurm_run(reg, tmp_path, status="lost", job="18")
    monkeypatch.setattr(
        slurm, "job_states", lambda ids: {"18": slurm.JobInfo("18", "PENDING", "JobHeldUser")}
    )
    w = _worker(reg)
    w.followed[rid] = "18"
    assert w.poll() == []
    row = reg.get(rid)
    assert row["status"] == "running" and row["slurm_state"] == "PENDING (JobHeldUser)"


def test_resume_of_a_run_whose_job_slurm_holds_exits_2_and_says_how_to_cancel(reg, tmp_path, monkeypatch):
    rid = _slurm_run(reg, tmp_path, status="lost", job="17")
    fake = FakeSlurm()
    monkeypatch.setattr(slurm, "_slurm", fake)
    monkeypatch.setattr(slurm, "job_states", lambda ids: {"17": slurm.JobInfo("17", "PENDING", "JobHeld")})
    res = CliRunner().invoke(app, ["--project", str(tmp_path), "resume", str(rid)])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "slurm job 17 is still PENDING (JobHeld)" in text and f"dwc cancel {rid}" in text, text
    assert "scancel 17" in text
    assert reg.get(rid)["status"] == "lost" and not any(c[0] == "sbatch" for c in fake.calls)

    # dwc cancel of the lost run scancels its job and records it cancelled; then it can be resumed
    said = control.cancel(reg, rid)
    assert ["scancel", "17"] in fake.calls and "scancel 17" in said
    assert reg.get(rid)["status"] == "cancelled"
    monkeypatch.setattr(slurm, "job_states", lambda ids: {"17": slurm.JobInfo("17", "CANCELLED")})
    assert control.resume(reg, rid)["status"] == "queued"


def test_cancel_of_a_lost_run_whose_job_is_over_says_there_is_nothing_to_cancel(reg, tmp_path, monkeypatch):
    rid = _slurm_run(reg, tmp_path, status="lost", job="17")
    fake = FakeSlurm()
    monkeypatch.setattr(slurm, "_slurm", fake)
    with pytest.raises(control.UsageError, match="already lost"):
        control.cancel(reg, rid)
    assert not any(c[0] == "scancel" for c in fake.calls)


# ------------------------------------------------------------------------------------- a job Slurm forgot
def test_job_states_tells_a_forgotten_job_from_an_unreachable_controller(monkeypatch):
    monkeypatch.setattr(slurm, "_slurm", FakeSlurm())
    states = slurm.job_states(["99999"])
    assert dict(states) == {} and states.forgotten == {"99999"}
    monkeypatch.setattr(slurm, "_slurm", FakeSlurm(down=True))
    states = slurm.job_states(["99999"])
    assert dict(states) == {} and states.forgotten == set()


def test_worker_once_settles_a_job_slurm_forgot_and_exits(reg, tmp_path, monkeypatch):
    rid = _slurm_run(reg, tmp_path, job="99999")
    fake = FakeSlurm(down=True)
    monkeypatch.setattr(slurm, "_slurm", fake)
    w = _worker(reg)
    w.unknown_polls = 3
    w.followed[rid] = "99999"
    for _ in range(6):  # the controller does not answer: nothing is concluded from silence
        assert w.poll() == []
    assert reg.get(rid)["status"] == "running"
    fake.down = False  # Slurm answers: it does not know the job
    w.followed.clear()
    t0 = time.time()
    assert w.run(once=True) == 0 and time.time() - t0 < 30  # adopts it, gives up after 3 answered polls
    row = reg.get(rid)
    assert row["status"] == "failed", row
    assert (
        "slurm job 99999 is unknown to Slurm and left no final status (it may have been purged after MinJobAge "
        "while no worker followed it" in row["error"]
    )
    assert f"dwc resume {rid}" in row["error"]
    assert row["slurm_state"] == "UNKNOWN (forgotten by Slurm)"  # `dwc runs` no longer shows it running
    monkeypatch.setattr(slurm, "job_states", lambda ids: {})
    assert control.resume(reg, rid)["status"] == "queued"  # resumable


# ------------------------------------------------------------------------------------------ failed jobs
@pytest.mark.parametrize(
    ("state", "reason", "exit_code", "words"),
    [
        ("FAILED", "NonZeroExitCode", "1:0", "exit code 1:0: NonZeroExitCode"),
        (
            "OUT_OF_MEMORY",
            "OutOfMemory",
            "0:125",
            "exit code 0:125 (the batch script was killed by signal 125)",
        ),
        ("NODE_FAIL", "NodeDown", "0:0", "ended NODE_FAIL, exit code 0:0: NodeDown"),
        ("FAILED", "NonZeroExitCode", "137:0", "exit code 137:0 (the trainer was killed by SIGKILL)"),
    ],
)
def test_a_job_that_failed_ends_the_run_failed_with_slurms_word_and_the_log(
    reg, tmp_path, monkeypatch, state, reason, exit_code, words
):
    rid = _slurm_run(reg, tmp_path, job="21")
    run_dir = Path(reg.get(rid)["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "train.log").write_text("".join(f"line {i}\n" for i in range(20)) + "CUDA out of memory\n")
    monkeypatch.setattr(
        slurm, "job_states", lambda ids: {"21": slurm.JobInfo("21", state, reason, "n1", exit_code)}
    )
    w = _worker(reg)
    w.followed[rid] = "21"
    assert w.poll() == [rid]
    row = reg.get(rid)
    assert row["status"] == "failed" and row["slurm_state"] == state
    assert f"slurm job 21 ended {state}" in row["error"] and words in row["error"], row["error"]
    assert row["error"].rstrip().endswith("line 19\nCUDA out of memory")
    assert "last lines of train.log" in row["error"] and "line 12" not in row["error"]


def test_the_batch_script_exits_128_plus_the_signal_that_killed_the_trainer(
    reg, tmp_path, monkeypatch, capsys
):
    rid = _slurm_run(reg, tmp_path, job="22")
    run_dir = Path(reg.get(rid)["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(reg.get(rid), default=str))
    killed = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    monkeypatch.setattr(slurm, "job_command", lambda run, registry_path, run_dir: killed)
    monkeypatch.setenv("SLURM_JOB_ID", "22")
    assert slurm.job_main([str(rid), str(reg.path), str(run_dir)]) == 137
    assert "slurm job 22: the trainer was killed by SIGKILL" in capsys.readouterr().out
    assert (
        slurm.batch_exit_code(0) == 0 and slurm.batch_exit_code(3) == 3 and slurm.batch_exit_code(-15) == 143
    )


# ------------------------------------------------------------------------------------------- command lines
def test_sbatch_command_line(reg, tmp_path):
    rid = _slurm_run(reg, tmp_path, nodes=2, gpus=4)
    run = reg.get(rid)
    opts = slurm.SlurmOptions(
        partition="gpu", account="lab", qos="high", time="1-00:00:00", grace_s=120,
        sbatch_args=["--constraint=a100", "--mail-type=END"],
    )  # fmt: skip
    script = tmp_path / "job.py"
    cmd = slurm.sbatch_command(run, reg.path, opts, script, attempt="abc123")
    run_dir = run["run_dir"]
    assert cmd == [
        "sbatch", "--parsable", f"--job-name=dwc-{rid}-synth", "--nodes=2", "--ntasks-per-node=1",
        f"--output={run_dir}/train.log", "--open-mode=append", f"--chdir={tmp_path}", "--signal=B:TERM@120",
        "--requeue", "--export=ALL", "--gpus-per-node=4", "--partition=gpu", "--account=lab", "--qos=high",
        "--time=1-00:00:00", "--constraint=a100", "--mail-type=END",
        str(script), str(rid), str(reg.path), str(run_dir), "abc123",
    ]  # fmt: skip
    assert all(isinstance(a, str) for a in cmd)  # an argument list: nothing goes through a shell
    # a value with shell characters stays one argument
    odd = slurm.sbatch_command(run, reg.path, slurm.SlurmOptions(partition="a b;rm -rf /"), script)
    assert "--partition=a b;rm -rf /" in odd
    # defaults: one node, one GPU, no passthrough flags
    one = slurm.sbatch_command(reg.get(_slurm_run(reg, tmp_path)), reg.path, slurm.SlurmOptions(), script)
    assert "--nodes=1" in one and "--gpus-per-node=1" in one and "--signal=B:TERM@90" in one
    assert not any(a.startswith(("--partition", "--account", "--qos", "--time")) for a in one)


def test_job_command_runs_torchrun_on_every_node_for_several_nodes(reg, tmp_path, monkeypatch):
    run = reg.get(_slurm_run(reg, tmp_path, nodes=2, gpus=4))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setattr(slurm, "_first_node", lambda: "node01")
    monkeypatch.setattr(slurm, "_free_port", lambda: 29400)
    run_dir = Path(run["run_dir"])
    cmd = slurm.job_command(run, reg.path, run_dir)
    assert cmd[:4] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert cmd[4:] == [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=4", "--rdzv-backend=c10d",
        "--rdzv-endpoint=node01:29400", f"--rdzv-id=dwc-{run['id']}-4242", "-m", "dwc_core.engine.train",
        str(run["id"]), "--registry", str(reg.path), "--sink", "files", "--run-dir", str(run_dir),
    ]  # fmt: skip
    single = slurm.job_command(reg.get(_slurm_run(reg, tmp_path)), reg.path, run_dir)
    assert single[:3] == [sys.executable, "-m", "dwc_core.engine.train"] and "srun" not in single


# ----------------------------------------------------------------------------------- Slurm does not answer
def _queued(reg, tmp_path, **trainer) -> int:
    return seed_run(reg, tmp_path, "synth", config(seed=1, trainer=trainer), {"mean": 1.0}, status="queued")


def _final(reg, rid, status="done", **fields) -> None:
    run_dir = Path(reg.get(rid)["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / STATUS_FILE).write_text(json.dumps({"status": status, "message": status, **fields}))


@pytest.mark.parametrize("silence", ["timeout", "unreachable"])
def test_a_slurm_that_does_not_answer_settles_nothing_and_is_logged_once(reg, tmp_path, monkeypatch, silence):
    alive = _slurm_run(reg, tmp_path, job="31")
    finished = _slurm_run(reg, tmp_path, job="32")
    _final(reg, finished)  # its trainer wrote "done": still, nothing is settled on Slurm's silence
    fake = FakeSlurm(hang=10**6) if silence == "timeout" else FakeSlurm(down=True)
    monkeypatch.setattr(slurm, "_slurm", fake)
    logs: list[str] = []
    w = _worker(reg, log=logs.append)
    w.unknown_polls = 2
    w.followed.update({alive: "31", finished: "32"})
    for _ in range(5):
        assert w.poll() == []
    assert reg.get(alive)["status"] == "running" and reg.get(finished)["status"] == "running"
    assert w.followed == {alive: "31", finished: "32"} and w.unknown == {}
    said = [m for m in logs if "Slurm does not answer" in m]
    assert len(said) == 1, logs
    assert (
        "did not answer within" if silence == "timeout" else "Unable to contact slurm controller"
    ) in said[0]
    # Slurm answers again: the ended job is settled from its run directory, the live one stays followed
    fake.hang, fake.down = 0, False
    fake.jobs.update({"31": "RUNNING", "32": "COMPLETED"})
    assert w.poll() == [finished]
    assert reg.get(finished)["status"] == "done" and reg.get(alive)["status"] == "running"
    assert logs.count("Slurm answers again") == 1 and w.outage is None


def test_the_worker_loop_survives_a_squeue_that_times_out(reg, tmp_path, monkeypatch):
    rid = _slurm_run(reg, tmp_path, job="33")
    _final(reg, rid)
    fake = FakeSlurm(hang=4, jobs={"33": "COMPLETED"})  # squeue (and the sinfo probe) time out a while
    monkeypatch.setattr(slurm, "_slurm", fake)
    logs: list[str] = []
    w = _worker(reg, log=logs.append)
    t0 = time.time()
    assert w.run(once=True) == 0 and time.time() - t0 < 30  # adopts it, waits out the silence, settles it
    assert reg.get(rid)["status"] == "done"
    assert fake.count("squeue") >= 2  # asked again after the timeout
    assert sum("Slurm does not answer" in m for m in logs) == 1 and "Slurm answers again" in logs


@pytest.mark.parametrize(
    "silence", ["timeout", "sbatch: error: Batch job submission failed: Unable to contact slurm controller"]
)
def test_sbatch_without_an_answer_leaves_the_run_queued_and_its_job_is_found_later(
    reg, tmp_path, monkeypatch, silence
):
    rid = _queued(reg, tmp_path)
    fake = FakeSlurm(hang=10**6) if silence == "timeout" else FakeSlurm(sbatch_error=silence)
    monkeypatch.setattr(slurm, "_slurm", fake)
    logs: list[str] = []
    w = _worker(reg, log=logs.append)
    assert w.submit_queued() == [] and not w.followed
    row = reg.get(rid)
    assert row["status"] == "queued" and row["error"] is None, row
    assert any("back in the queue: sbatch got no answer" in e["message"] for e in reg.events(rid))
    assert w.outage is not None and sum("Slurm does not answer" in m for m in logs) == 1
    # still no answer: sinfo says so, nothing is claimed again (no event per poll)
    if silence != "timeout":
        fake.down = True
    events, sbatches = len(reg.events(rid)), fake.count("sbatch")
    assert w.submit_queued() == []
    assert len(reg.events(rid)) == events and fake.count("sbatch") == sbatches and fake.count("sinfo") == 1
    # Slurm answers, and has a job of the run's name (the lost sbatch did submit it): followed, not submitted again
    fake.hang, fake.down, fake.sbatch_error = 0, False, None
    fake.jobs["777"], fake.names["777"] = "PENDING", f"dwc-{rid}-synth"
    assert w.submit_queued() == [rid] and w.followed == {rid: "777"}
    assert fake.count("sbatch") == sbatches and reg.get(rid)["slurm_job"] == "777"
    assert reg.get(rid)["status"] == "starting" and "Slurm answers again" in logs


def test_a_lost_sbatch_answer_outlives_its_worker_the_next_one_follows_the_job(reg, tmp_path, monkeypatch):
    rid = _queued(reg, tmp_path)
    fake = FakeSlurm(lost_answers=1)  # sbatch submits job 555, then its answer is lost (a timeout)
    monkeypatch.setattr(slurm, "_slurm", fake)
    first = _worker(reg)
    assert first.submit_queued() == [] and reg.get(rid)["status"] == "queued"
    assert fake.jobs == {"555": "PENDING"} and reg.get(rid)["slurm_job"] is None
    pending = Path(reg.get(rid)["run_dir"]) / slurm.SBATCH_PENDING_FILE
    assert json.loads(pending.read_text())["job_name"] == f"dwc-{rid}-synth"
    del first  # the worker dies before trying again: what it knew in memory is gone
    fake.calls.clear()
    second = slurm.SlurmWorker(reg.path, slurm.SlurmOptions(poll_s=0.01), name="w2", log=lambda m: None)
    assert second.submit_queued() == [rid] and second.followed == {rid: "555"}
    assert (
        fake.count("sbatch") == 0
        and ["squeue", "-h", "--name", f"dwc-{rid}-synth", "-o", "%i|%T"] in fake.calls
    )
    assert reg.get(rid)["slurm_job"] == "555" and reg.get(rid)["status"] == "starting"
    assert any("Slurm has job 555 for this run: followed" in e["message"] for e in reg.events(rid))
    assert not pending.exists()  # answered: a later re-submission of this run submits straight away


def test_a_lost_answers_job_that_already_ended_is_followed_from_its_event_not_submitted_again(
    reg, tmp_path, monkeypatch
):
    """The job the unanswered sbatch created ran and ended before any worker looked: squeue no longer lists it,
    but its batch script's "slurm job N started on" event is in the run directory (newer than the sbatch), so the
    next worker follows that job (and settles the run from its final status) instead of training the run again."""
    from dwc_core.engine.reporting import EVENTS_FILE, STATUS_FILE

    rid = _queued(reg, tmp_path)
    fake = FakeSlurm(lost_answers=1)
    monkeypatch.setattr(slurm, "_slurm", fake)
    assert _worker(reg).submit_queued() == []
    run_dir = Path(reg.get(rid)["run_dir"])
    sent = json.loads((run_dir / slurm.SBATCH_PENDING_FILE).read_text())["time"]
    # an older job's start (before this sbatch) must not be taken for it
    lines = [
        {"seq": 1, "time": sent - 600, "op": "event", "kind": "slurm", "message": "slurm job 400 started on n1 (restart 0)"},
        {"seq": 2, "time": sent + 5, "op": "event", "kind": "slurm", "message": "slurm job 555 started on n1 (restart 0)"},
        {"seq": 3, "time": sent + 9, "op": "status", "status": "done", "message": "finished", "fields": {}},
    ]  # fmt: skip
    (run_dir / EVENTS_FILE).write_text("".join(json.dumps(x) + "\n" for x in lines))
    (run_dir / STATUS_FILE).write_text(
        json.dumps({"status": "done", "message": "finished", "time": sent + 9})
    )
    del fake.jobs["555"], fake.names["555"]  # ended, and Slurm has forgotten it
    fake.calls.clear()
    second = slurm.SlurmWorker(reg.path, slurm.SlurmOptions(poll_s=0.01), name="w2", log=lambda m: None)
    assert second.submit_queued() == [rid] and second.followed == {rid: "555"}
    assert fake.count("sbatch") == 0
    assert not (run_dir / slurm.SBATCH_PENDING_FILE).exists()
    second.poll()
    assert reg.get(rid)["status"] == "done"


def test_no_job_of_the_runs_name_after_a_lost_answer_is_submitted_and_the_mark_cleared(
    reg, tmp_path, monkeypatch
):
    rid = _queued(reg, tmp_path)
    fake = FakeSlurm(hang=1)  # the first sbatch hangs without submitting anything
    monkeypatch.setattr(slurm, "_slurm", fake)
    assert _worker(reg).submit_queued() == []
    pending = Path(reg.get(rid)["run_dir"]) / slurm.SBATCH_PENDING_FILE
    assert pending.exists()
    second = slurm.SlurmWorker(reg.path, slurm.SlurmOptions(poll_s=0.01), name="w2", log=lambda m: None)
    assert second.submit_queued() == [rid] and second.followed == {rid: "555"}
    assert fake.count("sbatch") == 2 and any("--name" in c for c in fake.calls)
    assert not pending.exists()
    # sbatch refusing a run: Slurm answered, no job exists, nothing is left marked
    refused = _queued(reg, tmp_path)
    fake.sbatch_error = "sbatch: error: Batch job submission failed: Invalid account or account/partition"
    assert second.submit_queued() == [] and reg.get(refused)["status"] == "failed"
    assert not (Path(reg.get(refused)["run_dir"]) / slurm.SBATCH_PENDING_FILE).exists()


class _Died(BaseException):
    """The worker process dies (SIGKILL, the node reboots) while sbatch has not answered."""


def test_a_worker_that_died_during_sbatch_leaves_the_run_to_the_next_which_follows_its_job(
    reg, tmp_path, monkeypatch
):
    rid = _queued(reg, tmp_path)
    fake = FakeSlurm()

    def dies_in_sbatch(args, timeout=60.0):
        out = fake(args, timeout)
        if args[0] == "sbatch":
            raise _Died  # the job was submitted; the worker never hears of it
        return out

    monkeypatch.setattr(slurm, "_slurm", dies_in_sbatch)
    dead = _worker(reg)
    with pytest.raises(_Died):
        dead.submit_queued()
    assert reg.get(rid)["status"] == "starting" and reg.get(rid)["slurm_job"] is None
    monkeypatch.setattr(slurm, "_slurm", fake)
    second = slurm.SlurmWorker(reg.path, slurm.SlurmOptions(poll_s=0.01), name="w2", log=lambda m: None)
    second.adopt()
    assert reg.get(rid)["status"] == "starting"  # a fresh claim: its worker may still be submitting it
    reg.update(rid, claimed=time.time() - 3600)
    second.adopt()
    row = reg.get(rid)
    assert (
        row["status"] == "queued"
        and "which ended while its sbatch had no answer" in reg.events(rid)[-1]["message"]
    )
    assert second.submit_queued() == [rid] and second.followed == {rid: "555"}
    assert fake.count("sbatch") == 1 and reg.get(rid)["slurm_job"] == "555"


def test_sbatch_refusing_a_run_fails_it_with_sbatchs_message(reg, tmp_path, monkeypatch):
    refused = _queued(reg, tmp_path)
    fake = FakeSlurm(
        sbatch_error="sbatch: error: Batch job submission failed: Invalid partition name specified"
    )
    monkeypatch.setattr(slurm, "_slurm", fake)
    w = _worker(reg, partition="nope")
    assert w.submit_queued() == []
    row = reg.get(refused)
    assert row["status"] == "failed" and "Invalid partition name specified" in row["error"]
    assert "--partition=nope" in row["error"] and w.outage is None  # an answer, not an outage


def test_a_resubmission_without_an_answer_puts_the_run_back_in_the_queue(reg, tmp_path, monkeypatch):
    rid = _slurm_run(reg, tmp_path, job="41")
    fake = FakeSlurm(
        jobs={"41": "TIMEOUT"}, sbatch_error="sbatch: error: Socket timed out on send/recv operation"
    )
    monkeypatch.setattr(slurm, "_slurm", fake)
    w = _worker(reg)
    w.followed[rid] = "41"
    assert w.poll() == [rid] and not w.followed
    row = reg.get(rid)
    assert row["status"] == "queued" and row["error"] is None and int(row["slurm_requeues"]) == 1
    assert (Path(row["run_dir"]) / slurm.SBATCH_PENDING_FILE).exists() and fake.count("sbatch") == 1


# ----------------------------------------------------------------------------------- cancel, caps, requeues
def test_dwc_cancel_of_a_running_slurm_run_scancels_its_job(reg, tmp_path, monkeypatch):
    rid = _slurm_run(reg, tmp_path, job="4711")
    reg.update(rid, heartbeat=time.time())  # its trainer beats: running, not lost
    fake = FakeSlurm(jobs={"4711": "RUNNING"})
    monkeypatch.setattr(slurm, "_slurm", fake)
    res = CliRunner().invoke(app, ["--project", str(tmp_path), "cancel", str(rid), "--no-wait"])
    assert res.exit_code == 0, res.output
    assert fake.calls == [["scancel", "4711"]]
    assert "scancel 4711" in " ".join(res.output.split())
    row = reg.get(rid)
    # the worker records the outcome when Slurm reports the job cancelled
    assert row["status"] == "running" and row["cancel_requested"] == 1
    assert any(e["message"] == "scancel 4711" for e in reg.events(rid))


def test_submit_queued_keeps_at_most_max_jobs_followed(reg, tmp_path, monkeypatch):
    adopted = _slurm_run(reg, tmp_path, job="60")
    queued = [_queued(reg, tmp_path) for _ in range(3)]
    fake = FakeSlurm()
    monkeypatch.setattr(slurm, "_slurm", fake)
    w = _worker(reg, max_jobs=3)
    w.followed[adopted] = "60"  # already followed: counts toward the cap
    assert w.submit_queued() == queued[:2] and fake.count("sbatch") == 2
    assert reg.get(queued[2])["status"] == "queued"
    assert w.submit_queued() == [] and fake.count("sbatch") == 2  # full: nothing more is claimed
    w.followed.pop(adopted)  # one of its jobs ended
    assert w.submit_queued() == [queued[2]] and len(w.followed) == 3


def test_reaching_max_requeues_ends_the_run_failed_and_resumable(reg, tmp_path, monkeypatch):
    below = _slurm_run(reg, tmp_path, job="51")
    at_cap = _slurm_run(reg, tmp_path, job="52")
    reg.update(below, slurm_requeues=2)
    reg.update(at_cap, slurm_requeues=3)
    fake = FakeSlurm(jobs={"51": "TIMEOUT", "52": "TIMEOUT"})
    monkeypatch.setattr(slurm, "_slurm", fake)
    w = _worker(reg, max_requeues=3)
    w.followed.update({below: "51", at_cap: "52"})
    assert w.poll() == [at_cap]
    assert fake.count("sbatch") == 1 and w.followed == {below: "555"}  # the one below the cap: re-submitted
    assert reg.get(below)["status"] == "starting" and int(reg.get(below)["slurm_requeues"]) == 3
    row = reg.get(at_cap)
    assert row["status"] == "failed" and row["slurm_state"] == "TIMEOUT"
    assert (
        "slurm job 52 ended TIMEOUT after 3 re-submissions (--max-requeues 3): not re-submitted again. "
        f"`dwc resume {at_cap}` continues it from last.pt (a longer --time may help)" == row["error"]
    )
    assert control.queue_failed(reg, "synth") == [at_cap]  # failed: `dwc queue --failed` takes it


def test_a_job_slurm_forgot_whose_run_directory_says_done_ends_done(reg, tmp_path, monkeypatch):
    rid = _slurm_run(reg, tmp_path, job="99998")
    _final(reg, rid, exit_code=0)
    fake = FakeSlurm()  # Slurm answers that it does not know the job
    monkeypatch.setattr(slurm, "_slurm", fake)
    w = _worker(reg)
    w.followed[rid] = "99998"
    assert w.poll() == [rid] and not w.followed
    row = reg.get(rid)
    assert row["status"] == "done" and row["slurm_state"] == "UNKNOWN" and row["error"] is None
    assert fake.count("squeue") == 1 and fake.count("scontrol") == 1  # it was asked, and answered


# ------------------------------------------------------------------------------------------------ sacct's answer
# What `sacct -n -P -X -j ... -o JobID,State,NodeList,ExitCode` prints (Slurm 22.05). -X leaves the job steps out;
# they are here too (as sacct prints them without -X) and must not be taken for jobs. Job 14 was requeued: sacct
# lists one line per instance, oldest first (as with -D).
SACCT_OUT = """\
12|COMPLETED|vm|0:0
12.batch|COMPLETED|vm|0:0
12.extern|COMPLETED|vm|0:0
13|CANCELLED by 0|vm|0:15
13.batch|CANCELLED|vm|0:15
13.extern|COMPLETED|vm|0:0
14|REQUEUED|vm|0:0
14|RUNNING|vm|0:0
14.batch|RUNNING|vm|0:0
15|PENDING|None assigned|0:0
16|FAILED|vm|1:0
16.batch|FAILED|vm|1:0
99|COMPLETED|vm|0:0
"""


def test_sacct_lines_become_one_job_state_each(monkeypatch):
    asked = []

    def fake(args, timeout=60.0):
        asked.append(args)
        return _completed(args, 0, out=SACCT_OUT)

    monkeypatch.setattr(slurm, "_slurm", fake)
    got = slurm._sacct(["12", "13", "14", "15", "16"])
    assert asked == [
        ["sacct", "-n", "-P", "-X", "-j", "12,13,14,15,16", "-o", "JobID,State,NodeList,ExitCode"]
    ]
    assert sorted(got) == ["12", "13", "14", "15", "16"]  # no step line taken for a job, no job not asked
    seen = {j: (i.state, i.reason, i.nodes, i.exit_code, i.source) for j, i in got.items()}
    assert seen == {
        "12": ("COMPLETED", "", "vm", "0:0", "sacct"),
        "13": ("CANCELLED", "by 0", "vm", "0:15", "sacct"),
        "14": ("RUNNING", "", "vm", "0:0", "sacct"),  # the requeued job's current instance
        "15": ("PENDING", "", "None assigned", "0:0", "sacct"),
        "16": ("FAILED", "", "vm", "1:0", "sacct"),
    }
    assert [got[j].describe() for j in ("12", "13", "14", "16")] == [
        "COMPLETED", "CANCELLED (by 0)", "RUNNING on vm", "FAILED",
    ]  # fmt: skip
    assert got["14"].active and got["15"].active and not got["12"].active


def test_a_job_squeue_forgot_is_judged_by_sacct(reg, tmp_path, monkeypatch):
    rid = _slurm_run(reg, tmp_path, job="16")
    run_dir = Path(reg.get(rid)["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "train.log").write_text("Traceback ...\nValueError: boom\n")
    fake = FakeSlurm()  # squeue and scontrol: "Invalid job id specified"

    def with_sacct(args, timeout=60.0):
        if args[0] == "sacct":
            fake.calls.append(list(args))
            return _completed(args, 0, out=SACCT_OUT)
        return fake(args, timeout)

    monkeypatch.setattr(slurm, "_slurm", with_sacct)
    states = slurm.job_states(["16"])
    assert states["16"].state == "FAILED" and states["16"].source == "sacct" and not states.forgotten
    w = _worker(reg)
    w.followed[rid] = "16"
    assert w.poll() == [rid]
    row = reg.get(rid)
    assert row["status"] == "failed" and row["slurm_state"] == "FAILED"
    assert row["error"].startswith("slurm job 16 ended FAILED, exit code 1:0\n"), row["error"]
    assert row["error"].endswith("ValueError: boom")


# ------------------------------------------------------------------------------------------- --detach
FAKE_TOOL = """#!/bin/sh
# a stand-in for Slurm's client commands: a cluster with one idle partition and no jobs
case "$(basename "$0")" in
  sinfo) echo "debug up" ;;
esac
exit 0
"""


def test_detached_slurm_worker_registers_is_listed_and_sigterm_removes_it(reg, tmp_path, monkeypatch):
    import os
    import signal

    bin_dir = tmp_path / "fake-slurm-bin"
    bin_dir.mkdir()
    for tool in ("sinfo", "squeue", "sbatch", "sacct", "scontrol", "scancel"):
        (bin_dir / tool).write_text(FAKE_TOOL)
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv(
        "PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    )  # the detached worker inherits it
    res = CliRunner().invoke(
        app, ["--project", str(tmp_path), "worker", "--slurm", "--detach", "--partition", "debug"]
    )
    assert res.exit_code == 0, res.output
    pid = int(res.stdout.strip().splitlines()[-1])
    folder = tmp_path / "runs" / "workers"
    try:
        info_file = wait_for(lambda: next(iter(folder.glob("*.json")), None), timeout=60, what="worker file")
        info = json.loads(info_file.read_text())
        assert info["kind"] == "slurm" and info["pid"] == pid and info["partition"] == "debug"
        assert Path(info["log"]).parent == folder and Path(info["log"]).exists()
        assert os.getsid(pid) == pid  # in its own session: it outlives the terminal that started it
        listed = CliRunner().invoke(app, ["--project", str(tmp_path), "workers", "--format", "json"])
        assert listed.exit_code == 0, listed.output
        rows = json.loads(listed.stdout)
        assert [(r["pid"], r["kind"], r["state"]) for r in rows] == [(pid, "slurm", "alive")], rows
        assert "debug partition" in rows[0]["gpus"]
    finally:
        os.kill(pid, signal.SIGTERM)
        t0 = time.time()
        while os.waitpid(pid, os.WNOHANG) == (0, 0):  # our child: reap it
            assert time.time() - t0 < 30, "the detached worker did not stop on SIGTERM"
            time.sleep(0.1)
    assert not list(folder.glob("*.json")) and not list(folder.glob("*.lock"))
    assert "no worker" in CliRunner().invoke(app, ["--project", str(tmp_path), "workers"]).output
