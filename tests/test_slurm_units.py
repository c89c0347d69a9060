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
from test_results_registry import config, seed_run
from typer.testing import CliRunner

from dwc_core.runs import control, launcher, slurm
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


def _worker(reg, **kw) -> slurm.SlurmWorker:
    return slurm.SlurmWorker(reg.path, slurm.SlurmOptions(poll_s=0.01, **kw), name="w", log=lambda m: None)


def _completed(args, rc=0, out="", err=""):
    return subprocess.CompletedProcess(args, rc, out, err)


class FakeSlurm:
    """Answers ``_slurm`` calls: squeue/sacct/scontrol as a cluster that does not know any job (or cannot be
    reached, with ``down``); records every command, and answers sbatch / scancel."""

    def __init__(self, down=False):
        self.down = down
        self.calls: list[list[str]] = []

    def __call__(self, args, timeout=60.0):
        self.calls.append(list(args))
        tool = args[0]
        if self.down and tool in ("squeue", "scontrol", "sacct"):
            return _completed(args, 1, err="slurm_load_jobs error: Unable to contact slurm controller")
        if tool in ("squeue", "scontrol"):
            return _completed(args, 1, err="slurm_load_jobs error: Invalid job id specified")
        if tool == "sacct":
            return _completed(args, 1, err="Slurm accounting storage is disabled")
        if tool == "sbatch":
            return _completed(args, 0, out="555\n")
        return _completed(args, 0)


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
