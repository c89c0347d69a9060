"""An interrupted foreground `dwc run` of a grid leaves none of its runs held: the runs it created and never
started end `cancelled` with an event naming the interruption (so `dwc resume` / `dwc queue --failed` can start
them again), and the command says so. Ctrl-C also cancels the run being trained; SIGHUP (SSH drop) and SIGTERM
leave it training on its own, as the trainer lives in its own session."""

from __future__ import annotations

import signal
import time

import pytest
from helpers import dwc, finish, invoke, start, tiny_experiments, wait_for, write_project

from dwc_core.runs.registry import Registry
from dwc_tui.cli import supervise

GRID = tiny_experiments(
    trainer="epochs: 1, batch_size: 16, max_steps_per_epoch: 2, num_workers: 0, log_every: 1, heartbeat_s: 0.5",
    data="num_train: 64, num_test: 24",
    more="    seeds: [1, 2, 3]\n    eval: {ks: [1, 5, 10], batch_size: 8}\n",
)


def _start_grid(tmp_path, delay: str):
    write_project(tmp_path, GRID)
    return start(tmp_path, "run", "tiny", env={"DWC_TEST_PHASE_DELAY": delay}, merge_stderr=True)


def _wait_running(tmp_path, proc) -> Registry:
    db = tmp_path / "runs" / "registry.db"

    def first_running():
        assert proc.poll() is None, proc.stdout.read()
        if not db.exists():
            return None
        rows = Registry(db).runs()
        return len(rows) == 3 and rows[0]["status"] == "running" and rows[0]["pid"]

    wait_for(first_running, timeout=180, what="run 1 to be training")
    return Registry(db)


def _assert_left_cancelled(reg: Registry, out: str, word: str) -> None:
    runs = {r["id"]: r for r in reg.runs()}
    for rid in (2, 3):
        row = runs[rid]
        assert row["status"] == "cancelled", (rid, row["status"], out)
        assert not row["hold"], (rid, out)  # nothing stays held by a command that is gone
        assert not row["started"] and not row["pid"], (rid, out)  # never started
        assert any(word in e["message"] for e in reg.events(rid)), reg.events(rid)
    assert "2, 3" in out and "cancelled" in out, out  # the command said what became of them
    assert "dwc resume 2 3" in out or "dwc queue --failed tiny" in out, out


@pytest.mark.slow
def test_ctrl_c_during_run_1_cancels_it_and_the_runs_not_started(tmp_path):
    proc = _start_grid(tmp_path, "eval=0.5")
    reg = _wait_running(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    out = finish(proc, timeout=120, what="dwc run after Ctrl-C")
    assert proc.returncode == 130, out
    assert reg.get(1)["status"] == "cancelled", out
    _assert_left_cancelled(reg, out, "interrupted")
    # and they can be started again: `dwc queue --failed` re-queues all three for a worker
    res = dwc(tmp_path, "queue", "--failed", "tiny", timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert [r["status"] for r in reg.runs()] == ["queued"] * 3
    assert not any(r["hold"] for r in reg.runs())


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
def test_hangup_or_term_leaves_run_1_training_and_cancels_the_rest(tmp_path, sig):
    proc = _start_grid(tmp_path, "eval=0.2")
    reg = _wait_running(tmp_path, proc)
    proc.send_signal(sig)
    proc.send_signal(signal.SIGTERM)  # a second signal does not cut the clean-up short
    out = finish(proc, timeout=60, what=f"dwc run after {sig.name}")
    assert proc.returncode == 130, out
    assert "Traceback" not in out, out
    _assert_left_cancelled(reg, out, sig.name)
    # run 1 was not the command's to stop: its trainer (own session) finishes and records it
    done = wait_for(
        lambda: reg.get(1)["status"] in ("done", "failed", "cancelled"), timeout=120, what="run 1"
    )
    assert done and reg.get(1)["status"] == "done", reg.get(1)
    time.sleep(0.5)
    assert [reg.get(i)["status"] for i in (2, 3)] == ["cancelled", "cancelled"]


# ------------------------------------------------------------- in-process: interruptions between two runs
def _fake_foreground(interrupt):
    """run_foreground that trains run 1 instantly (claimed, then done) and is interrupted at run 2."""

    def fake(registry, registry_path, run, interactive, on_interrupt=None):
        if run["id"] == 1:
            registry.claim(worker="test", run_id=1, held_ok=True)
            registry.set_status(1, "done", "finished", only_from=("starting", "running"))
            return registry.get(1)
        raise interrupt

    return fake


@pytest.mark.parametrize(
    "interrupt, word",
    [(KeyboardInterrupt(), "Ctrl-C"), (supervise.Interrupted("SIGTERM"), "SIGTERM")],
    ids=["ctrl-c", "sigterm"],
)
def test_interruption_between_runs_cancels_those_not_started(tmp_path, monkeypatch, interrupt, word):
    write_project(tmp_path, GRID)
    monkeypatch.setattr(supervise, "run_foreground", _fake_foreground(interrupt))
    monkeypatch.setattr(supervise, "print_summary", lambda registry, run_id: None)
    res = invoke(tmp_path, "run", "tiny")
    assert res.exit_code == 130, res.output
    reg = Registry(tmp_path / "runs" / "registry.db")
    assert reg.get(1)["status"] == "done"  # what finished stays finished
    _assert_left_cancelled(reg, res.output, word)
