"""Runs through a real Slurm cluster (scripts/slurm-cluster.sh up): submission, ingestion, scancel, requeue,
a killed worker, and 2-process gloo training through srun + torchrun. Skipped (with the reason) without a cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import loss_steps, wait_for, write_project

from dwc_core.runs import slurm
from dwc_core.runs.control import queue_experiment
from dwc_core.runs.registry import Registry

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

DEFAULT_CONF = Path(os.environ.get("DWC_SLURM_DIR", "/tmp/dwc-slurm")) / "etc" / "slurm.conf"

TINY = """\
experiments:
  tiny:
    dataset: {name: synthetic, num_train: 96, num_test: 48, image_size: 32}
    model: {name: tirg, embed_dim: 32, cnn: {arch: tiny}, text: {word_dim: 16, hidden: 32}}
    eval: {ks: [1, 5, 10], query_results: false}
    trainer: {epochs: 1, batch_size: 16, lr: 1.0e-3, num_workers: 0, log_every: 1, heartbeat_s: 0.5,
              device: cpu, cpu_threads: 1}
"""


@pytest.fixture(scope="module", autouse=True)
def cluster():
    if not os.environ.get("SLURM_CONF") and DEFAULT_CONF.exists():
        os.environ["SLURM_CONF"] = str(DEFAULT_CONF)
    try:
        why = slurm.available()
    except slurm.SlurmError as exc:
        why = exc.message
    if why:
        pytest.skip(f"no Slurm cluster here ({why}); start one with scripts/slurm-cluster.sh up")


@pytest.fixture()
def project(tmp_path):
    return write_project(tmp_path, TINY)


def queue(project: Path, *overrides: str, seed: int = 1) -> int:
    reg = Registry(project / "runs" / "registry.db")
    return queue_experiment(reg, project, "tiny", overrides=list(overrides), seeds=[seed])[0]["id"]


def worker_thread(project: Path, partition: str | None = None) -> threading.Thread:
    """A Slurm worker with --once in a thread (it opens its own registry connection there)."""

    def body():
        reg_path = project / "runs" / "registry.db"
        opts = slurm.SlurmOptions(poll_s=0.5, partition=partition)
        slurm.SlurmWorker(reg_path, opts, log=lambda m: None).run(once=True)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t


def test_two_runs_once_and_two_gloo_processes_match_one(project):
    single = queue(project)
    ddp = queue(project, "trainer.gpus=2")
    w = slurm.SlurmWorker(
        project / "runs" / "registry.db", slurm.SlurmOptions(poll_s=0.5), log=lambda m: None
    )
    assert w.run(once=True) == 0
    reg = Registry(project / "runs" / "registry.db")
    for run_id in (single, ddp):
        row = reg.get(run_id)
        assert row["status"] == "done", (
            row["error"],
            (Path(row["run_dir"]) / "train.log").read_text()[-3000:],
        )
        messages = [e["message"] for e in reg.events(run_id)]
        assert f"submitted as slurm job {row['slurm_job']}" in messages
        assert row["slurm_state"] == "COMPLETED"
        recall = reg.metrics(run_id, split="test", name="R@10")
        assert [m["epoch"] for m in recall] == [0.0, 1.0]
    assert "world size 2" in " ".join(e["message"] for e in reg.events(ddp))
    e_single, e_ddp = reg.evaluations(single)[0], reg.evaluations(ddp)[0]
    assert e_single["epoch"] == e_ddp["epoch"] == 0
    assert e_ddp["metrics"] == e_single["metrics"] and e_ddp["num_queries"] == 48
    assert max(loss_steps(reg, ddp)) * 2 == max(loss_steps(reg, single)) == 96 // 16


def test_scancel_ends_the_run_cancelled_with_the_reason(project):
    run_id = queue(project, "trainer.epochs=50", "trainer.max_steps_per_epoch=4")
    reg = Registry(project / "runs" / "registry.db")
    t = worker_thread(project)
    wait_for(lambda: reg.get(run_id)["status"] == "running", what="the run to start")
    job = reg.get(run_id)["slurm_job"]
    assert slurm.cancel(reg, run_id).startswith(f"run {run_id}: scancel {job}")
    t.join(timeout=120)
    row = reg.get(run_id)
    assert row["status"] == "cancelled" and "cancelled by Slurm" in row["error"] and job in row["error"]
    assert row["slurm_state"] == "CANCELLED"


def _first_checkpoint(project: Path, partition: str | None = None, *overrides: str):
    """Queue a 12-step run, start a worker thread (submitting to ``partition``, default: the cluster's default
    one), wait for the run's first last.pt: (run id, registry, worker thread, run dir, slurm job id)."""
    run_id = queue(project, "trainer.epochs=3", "trainer.max_steps_per_epoch=4", *overrides)
    reg = Registry(project / "runs" / "registry.db")
    t = worker_thread(project, partition)
    run_dir = Path(wait_for(lambda: reg.get(run_id)["run_dir"], what="run dir"))
    wait_for(lambda: (run_dir / "last.pt").exists(), what="the first checkpoint")
    return run_id, reg, t, run_dir, reg.get(run_id)["slurm_job"]


def _start_requeued_now(job: str) -> None:
    """Slurm holds a requeued job back (Reason=BeginTime, for AuthInfo's cred_expire: 120 s by default); once it
    is pending, let it start now."""
    wait_for(
        lambda: slurm.job_states([job])[job].state == "PENDING", what="the job to be pending again", every=0.3
    )
    wait_for(
        lambda: (
            subprocess.run(
                ["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True
            ).returncode
            == 0
        ),
        what="the requeued job to accept a start time",
    )


def _assert_done_once(reg: Registry, run_id: int, run_dir: Path, *events: str, steps: int = 12) -> dict:
    """The run ended done, its events hold ``events``, and every step (``steps`` in all) and evaluation was
    recorded once."""
    row = reg.get(run_id)
    log = (run_dir / "train.log").read_text()[-3000:]
    assert row["status"] == "done", (row["error"], log)
    messages = " | ".join(e["message"] for e in reg.events(run_id))
    assert all(e in messages for e in events), messages
    assert loss_steps(reg, run_id) == list(range(1, steps + 1))  # every step once: none lost, none duplicated
    assert [e["epoch"] for e in reg.evaluations(run_id)] == [0, 1, 2, 3]
    return row


def test_requeue_resumes_from_last_pt_without_duplicated_steps(project):
    run_id, reg, t, run_dir, job = _first_checkpoint(project)
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True)
    _start_requeued_now(job)
    t.join(timeout=240)
    _assert_done_once(reg, run_id, run_dir, "resumed from last.pt", "(restart 1)")


def test_killed_worker_then_a_new_one_loses_nothing(project):
    run_id = queue(project, "trainer.epochs=3", "trainer.max_steps_per_epoch=4")
    reg_path = project / "runs" / "registry.db"
    reg = Registry(reg_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dwc_core.runs.slurm", "worker", "--registry", str(reg_path), "--poll", "0.5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=project,
    )  # fmt: skip
    try:
        wait_for(lambda: reg.get(run_id)["status"] == "running", what="the run to start")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    job = reg.get(run_id)["slurm_job"]
    written_before = len(loss_steps(reg, run_id))
    # the job trains to the end with nobody ingesting its reports
    wait_for(lambda: not slurm.job_states([job])[job].active, timeout=180, what="the job to end", every=0.3)
    assert len(loss_steps(reg, run_id)) == written_before and reg.get(run_id)["status"] == "running"
    w = slurm.SlurmWorker(reg_path, slurm.SlurmOptions(poll_s=0.5), log=lambda m: None)
    assert w.run(once=True) == 0
    row = reg.get(run_id)
    assert row["status"] == "done", row["error"]
    assert loss_steps(reg, run_id) == list(range(1, 13))
    assert [e["epoch"] for e in reg.evaluations(run_id)] == [0, 1, 2, 3]
    assert any("followed by" in e["message"] for e in reg.events(run_id))


def test_time_limit_warning_signal_resubmits_from_last_pt(project):
    """What ``--signal=B:TERM@grace`` does before a time limit, sent now (``scancel --signal=TERM --batch``): the
    trainer checkpoints and exits before the limit, so Slurm records FAILED, not TIMEOUT — the run must still be
    re-submitted and resume from last.pt, not end failed or cancelled."""
    run_id, reg, t, run_dir, job = _first_checkpoint(project)
    subprocess.run(["scancel", "--signal=TERM", "--batch", job], check=True, capture_output=True)
    t.join(timeout=240)
    row = _assert_done_once(reg, run_id, run_dir, "re-submitted after TIMEOUT, 1/", "resumed from last.pt")
    assert row["slurm_job"] != job and int(row["slurm_requeues"]) == 1


def test_time_limit_warning_reaches_every_process_of_a_two_process_run_through_srun_and_torchrun(
    project, monkeypatch
):
    """The same warning for a data-parallel job (srun → torchrun → 2 gloo trainers): the batch script forwards
    SIGTERM to srun, which passes it to torchrun, which passes it to both ranks; they stop at the same step,
    rank 0 checkpoints, every process exits, and the re-submitted job resumes both ranks from last.pt. (Each
    rank takes half of an epoch's 6 batches: 3 steps an epoch, 9 in all.)"""
    monkeypatch.setenv("DWC_TEST_PHASE_DELAY", "step=0.5")  # the signal lands while training goes on
    run_id, reg, t, run_dir, job = _first_checkpoint(project, None, "trainer.gpus=2")
    subprocess.run(["scancel", "--signal=TERM", "--batch", job], check=True, capture_output=True)
    t.join(timeout=240)
    assert not t.is_alive()
    row = _assert_done_once(
        reg, run_id, run_dir, "re-submitted after TIMEOUT, 1/", "resumed from last.pt", steps=9
    )
    assert row["slurm_job"] != job and int(row["slurm_requeues"]) == 1
    assert "world size 2" in " | ".join(e["message"] for e in reg.events(run_id))


# ------------------------------------------------------------------------------------------------- preemption
# scripts/slurm-cluster.sh up gives one node three partitions: debug (default; preempted jobs are requeued by
# Slurm), debug-cancel (preempted jobs get SIGTERM, a grace time, then are cancelled) and urgent (higher
# PriorityTier: its jobs preempt theirs). A job in urgent that wants the whole node preempts the run's job.
URGENT_S = 8  # how long the preempting job holds the node
# Each training step of the run sleeps this long (the jobs inherit the environment: sbatch --export=ALL), so the
# preemption, which Slurm carries out a second or two after the urgent job's submission, lands inside epoch 2's
# training rather than in an evaluation or after the run ended.
STEP_DELAY = "step=1.5"


def _preemption_partitions() -> None:
    res = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True)
    have = {p.rstrip("*") for p in res.stdout.split()}
    missing = {"debug", "debug-cancel", "urgent"} - have
    if missing:
        pytest.skip(
            f"the Slurm cluster has no partition {', '.join(sorted(missing))} (a cluster started by an older "
            "scripts/slurm-cluster.sh: run it with `up` again to restart it with preemption configured)"
        )


def _preempt(tmp_path: Path) -> str:
    """Submit a job to the high-priority partition that needs every CPU of the node: Slurm preempts the run's."""
    res = subprocess.run(
        ["sbatch", "--parsable", "--partition=urgent", "--exclusive", "--job-name=urgent",
         f"--output={tmp_path / 'urgent.log'}", "--wrap", f"sleep {URGENT_S}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return res.stdout.strip().split(";")[0]


def test_preemption_requeue_mode_slurm_restarts_the_same_job_from_last_pt(project, tmp_path, monkeypatch):
    """PreemptMode=REQUEUE (partition debug): Slurm kills the job (SIGTERM, KillWait), puts the same job id back
    in the queue and restarts it after the preempting job; the worker keeps following it, and the run resumes
    from last.pt with every step once."""
    _preemption_partitions()
    monkeypatch.setenv("DWC_TEST_PHASE_DELAY", STEP_DELAY)
    run_id, reg, t, run_dir, job = _first_checkpoint(project)
    urgent = _preempt(tmp_path)
    _start_requeued_now(job)  # rather than wait out Slurm's hold on a requeued job
    t.join(timeout=240)
    assert not t.is_alive()
    row = _assert_done_once(
        reg, run_id, run_dir, "(restart 1): requeued by Slurm after ", "resumed from last.pt"
    )
    assert row["slurm_job"] == job and int(row["slurm_requeues"] or 0) == 0  # Slurm's requeue, not ours
    assert slurm.job_states([urgent])[urgent].state == "COMPLETED"
    # Why the job came back is told only as far as Slurm showed it: its "DUE TO PREEMPTION" line in the log or a
    # PreemptTime at the SIGTERM make it "a preemption"; a requeue seen at the SIGTERM leaves preemption or
    # scontrol requeue open; when Slurm's kill reached the batch script before it could ask (about one time in
    # three on this cluster), the generic wording stays. Any of the three, never none.
    restart = next(e["message"] for e in reg.events(run_id) if "(restart 1)" in e["message"])
    assert any(
        f"requeued by Slurm after {why}; the run resumes from last.pt" in restart
        for why in (
            "a preemption",
            "a preemption (PreemptMode=REQUEUE) or scontrol requeue",
            "scontrol requeue or a node failure",
        )
    ), restart


def test_preemption_cancel_mode_with_grace_time_resubmits_from_last_pt(project, tmp_path, monkeypatch):
    """PreemptMode=CANCEL with GraceTime (partition debug-cancel): the batch script gets SIGTERM at once, the
    trainer checkpoints and exits within the grace time, so Slurm records FAILED with a PreemptTime — the worker
    must call it a preemption and re-submit the run (a new job), which resumes from last.pt."""
    _preemption_partitions()
    monkeypatch.setenv("DWC_TEST_PHASE_DELAY", STEP_DELAY)
    run_id, reg, t, run_dir, job = _first_checkpoint(project, partition="debug-cancel")
    _preempt(tmp_path)
    t.join(timeout=240)
    assert not t.is_alive()
    first = slurm.job_states([job])[job]
    assert first.preempted and first.state in ("FAILED", "COMPLETED", "PREEMPTED"), first
    row = _assert_done_once(
        reg, run_id, run_dir, f"slurm job {job} ended PREEMPTED", "re-submitted after PREEMPTED, 1/",
        "resumed from last.pt",
    )  # fmt: skip
    assert row["slurm_job"] != job and int(row["slurm_requeues"]) == 1


def test_a_held_job_is_never_lost_nor_doubled_and_cancel_scancels_it(project):
    """A job waiting in Slurm's queue (here held from the start: as after `scontrol requeue` + `scontrol hold`)
    is judged by the Slurm worker following it, not by heartbeat age; once nobody follows it, `dwc resume` is
    refused while Slurm still has the job, and `dwc cancel` scancels it."""
    from typer.testing import CliRunner

    from dwc_core.runs import control, launcher
    from dwc_tui.cli import app

    run_id = queue(project)
    reg = Registry(project / "runs" / "registry.db")
    w = slurm.SlurmWorker(
        reg.path, slurm.SlurmOptions(poll_s=0.2, sbatch_args=["--hold"]), log=lambda m: None
    )
    w.register()
    try:
        assert w.submit_queued() == [run_id]
        job = reg.get(run_id)["slurm_job"]
        w.poll()
        assert reg.get(run_id)["slurm_state"].startswith("PENDING ("), reg.get(run_id)["slurm_state"]
        assert launcher.reap_lost(reg, "elsewhere", stale_s=0) == []
        # last seen running, heartbeat long gone (the trainer was requeued): its live worker still judges it
        reg.update(run_id, status="running", slurm_state="RUNNING on vm", heartbeat=1.0)
        assert launcher.reap_lost(reg, "elsewhere") == []
    finally:
        w.unregister()
    assert launcher.reap_lost(reg, "elsewhere") == [run_id]  # nobody follows it now
    res = CliRunner().invoke(app, ["--project", str(project), "resume", str(run_id)])
    text = " ".join(res.output.split())
    assert (
        res.exit_code == 2 and f"slurm job {job} is still PENDING" in text and f"dwc cancel {run_id}" in text
    )
    assert reg.get(run_id)["slurm_job"] == job and reg.get(run_id)["status"] == "lost"  # no second job
    assert f"scancel {job}" in control.cancel(reg, run_id)
    assert reg.get(run_id)["status"] == "cancelled"
    wait_for(lambda: not slurm.job_states([job])[job].active, what="the job to leave Slurm's queue")
    assert control.resume(reg, run_id)["status"] == "queued"  # now it may be submitted again
    control.cancel(reg, run_id)


def test_dwc_worker_slurm_once_cli_submits_follows_and_exits(project):
    """`dwc worker --slurm --once` as a user types it: one queued tiny run → a batch job → done, then it exits 0."""
    run_id = queue(project, "trainer.max_steps_per_epoch=2")
    res = subprocess.run(
        [sys.executable, "-m", "dwc_tui.cli", "--project", str(project), "worker", "--slurm", "--once"],
        capture_output=True, text=True, timeout=300, cwd=project, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    reg = Registry(project / "runs" / "registry.db")
    row = reg.get(run_id)
    job = row["slurm_job"]
    assert row["status"] == "done" and row["slurm_state"] == "COMPLETED", row["error"]
    assert f"run {run_id} (tiny): slurm job {job}" in res.stdout
    assert f"run {run_id}: slurm job {job} ended COMPLETED → done" in res.stdout
    assert f"submitted as slurm job {job}" in [e["message"] for e in reg.events(run_id)]
    assert [m["epoch"] for m in reg.metrics(run_id, split="test", name="R@10")] == [0.0, 1.0]
    assert loss_steps(reg, run_id) == [1, 2]
    assert not list((project / "runs" / "workers").glob("*.json"))  # it unregistered on the way out
    assert not slurm.job_states([job])[job].active
