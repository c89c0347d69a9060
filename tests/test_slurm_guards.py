"""Slurm runs are never doubled nor followed forever (no cluster needed: Slurm's answers are faked).

A run waiting in Slurm's queue is not `lost` for want of a heartbeat; `dwc resume` of a run whose job Slurm still
holds is refused (a second job would train beside the first); a job of an earlier submission that Slurm starts late
exits without touching the run; a followed job that Slurm and the run directory both forgot ends `failed`.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from test_results_registry import config, seed_run

from dwc_core.errors import UsageError
from dwc_core.runs import control, launcher, slurm
from dwc_core.runs.ingest import STATUS_FILE
from dwc_core.runs.registry import Registry


@pytest.fixture
def reg(tmp_path):
    (tmp_path / "experiments.yaml").write_text("experiments: {}\n")
    r = Registry(tmp_path / "runs" / "registry.db")
    yield r
    r.close()


def _slurm_run(reg, tmp_path, status: str, state: str, job: str = "4711") -> int:
    rid = seed_run(reg, tmp_path, "synth", config(seed=1), {"mean": 1.0}, status=status)
    reg.update(rid, slurm_job=job, slurm_state=state, heartbeat=time.time() - 3600, host="elsewhere")
    return rid


def test_a_run_waiting_in_slurms_queue_is_not_lost_for_want_of_a_heartbeat(reg, tmp_path):
    pending = _slurm_run(reg, tmp_path, "running", "PENDING (JobHeldUser)")
    running = _slurm_run(reg, tmp_path, "running", "RUNNING on node1", job="4712")
    assert launcher.reap_lost(reg, socket.gethostname()) == [running]  # a running job's trainer should beat
    assert reg.get(pending)["status"] == "running"


def test_resume_is_refused_while_slurm_still_holds_the_runs_job(reg, tmp_path, monkeypatch):
    rid = _slurm_run(reg, tmp_path, "lost", "RUNNING on node1")
    monkeypatch.setattr(
        slurm, "job_states", lambda ids: {"4711": slurm.JobInfo("4711", "PENDING", reason="JobHeldUser")}
    )
    with pytest.raises(UsageError, match=r"slurm job 4711 is still PENDING \(JobHeldUser\).*scancel 4711"):
        control.resume(reg, rid)
    assert reg.get(rid)["status"] == "lost"

    def no_slurm(ids):
        raise slurm.SlurmError("`squeue` is not installed or not on PATH")

    monkeypatch.setattr(slurm, "job_states", no_slurm)  # Slurm cannot be asked: the recorded state decides
    with pytest.raises(UsageError, match="still RUNNING on node1"):
        control.resume(reg, rid)
    monkeypatch.setattr(slurm, "job_states", lambda ids: {})  # Slurm knows it no more: the job is over
    assert control.resume(reg, rid)["status"] == "queued"


def test_a_job_of_an_earlier_submission_exits_without_touching_the_run(reg, tmp_path, monkeypatch, capsys):
    rid = _slurm_run(reg, tmp_path, "running", "RUNNING on node1")
    run_dir = tmp_path / "runs" / "stale"
    run_dir.mkdir(parents=True)
    (run_dir / slurm.ATTEMPT_FILE).write_text("new-token")
    (run_dir / STATUS_FILE).write_text(json.dumps({"status": "done"}))  # the current job's final word
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    code = slurm.job_main([str(rid), str(reg.path), str(run_dir), "old-token"])
    assert code == 0 and "submitted again" in capsys.readouterr().out
    assert json.loads((run_dir / STATUS_FILE).read_text()) == {"status": "done"}
    assert not (run_dir / "events.jsonl").exists()


def test_submission_writes_the_attempt_token_the_job_receives(reg, tmp_path, monkeypatch):
    rid = seed_run(reg, tmp_path, "synth", config(seed=1), {"mean": 1.0}, status="starting")
    seen = []

    def fake(cmd, timeout=60.0):
        seen.append(cmd)
        return type("R", (), {"returncode": 0, "stdout": "321\n", "stderr": ""})()

    monkeypatch.setattr(slurm, "_slurm", fake)
    job = slurm.submit(reg, reg.path, reg.get(rid), slurm.SlurmOptions())
    token = (Path(reg.get(rid)["run_dir"]) / slurm.ATTEMPT_FILE).read_text()
    assert job == "321" and seen[0][-1] == token and len(token) == 12
    assert all(isinstance(a, str) for a in seen[0])  # an argument list, never a shell string


def test_a_job_that_slurm_and_the_run_directory_forgot_ends_failed(reg, tmp_path, monkeypatch):
    rid = _slurm_run(reg, tmp_path, "running", "RUNNING on node1", job="99999")
    monkeypatch.setattr(slurm, "job_states", lambda ids: {})
    worker = slurm.SlurmWorker(reg.path, slurm.SlurmOptions(), name="w", log=lambda m: None)
    worker.unknown_polls = 3
    worker.followed[rid] = "99999"
    assert worker.poll() == [] and worker.poll() == []
    assert reg.get(rid)["status"] == "running"
    assert worker.poll() == [rid] and not worker.followed
    row = reg.get(rid)
    assert (
        row["status"] == "failed"
        and "unknown to Slurm" in row["error"]
        and f"dwc resume {rid}" in row["error"]
    )


def test_queue_failed_leaves_a_run_whose_job_slurm_still_holds(reg, tmp_path, monkeypatch):
    held = _slurm_run(reg, tmp_path, "lost", "RUNNING on node1")
    gone = _slurm_run(reg, tmp_path, "lost", "RUNNING on node1", job="4712")
    monkeypatch.setattr(
        slurm, "job_states", lambda ids: {"4711": slurm.JobInfo("4711", "PENDING")} if "4711" in ids else {}
    )
    assert control.queue_failed(reg, "synth") == [gone]
    assert reg.get(held)["status"] == "lost" and reg.get(gone)["status"] == "queued"
