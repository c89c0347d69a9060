"""Slurm's view of a run beside ours (`dwc runs`, `dwc show`, machine formats) and the Slurm worker's registration
in runs/workers/ (`dwc workers`), without a cluster: the registry and the worker files are seeded by the test."""

from __future__ import annotations

import csv
import io
import json
import time

import pytest
from test_results_registry import config, seed_run
from typer.testing import CliRunner

from dwc_core.results.slurm_view import slurm_compact, slurm_fields, slurm_line, slurm_summary
from dwc_core.runs.registry import Registry
from dwc_tui.cli import app


def invoke(project, *args: str):
    return CliRunner().invoke(app, ["--project", str(project), *args])


PENDING = {"slurm_job": "4711", "slurm_state": "PENDING (Priority)", "slurm_reason": "Priority"}
RUNNING = {
    "slurm_job": "4712",
    "slurm_state": "RUNNING on node1",
    "slurm_reason": "None",
    "slurm_nodes": "node1",
}


# ------------------------------------------------------------------------------------------------- formatting
def test_summary_reads_state_reason_nodes_and_requeues():
    assert slurm_summary(PENDING) == "PENDING (Priority)"
    assert slurm_summary(RUNNING) == "RUNNING on node1"
    assert slurm_summary({**RUNNING, "slurm_state": "RUNNING", "slurm_requeues": 2}) == (
        "RUNNING on node1 · requeued 2×"
    )
    # sacct gives the state words as the reason: not repeated
    cancelled = {"slurm_job": "9", "slurm_state": "CANCELLED", "slurm_reason": "CANCELLED by 0"}
    assert slurm_summary(cancelled) == "CANCELLED by 0"
    assert slurm_summary({"slurm_job": "9", "slurm_state": "TIMEOUT", "slurm_reason": "TimeLimit"}) == (
        "TIMEOUT (TimeLimit)"
    )
    assert slurm_summary({"slurm_job": "9"}) == "submitted"
    for row in ({}, {"slurm_job": None, "slurm_state": "PENDING"}):
        assert slurm_summary(row) is None and slurm_compact(row) is None and slurm_line(row) is None


def test_compact_uses_squeue_codes_cuts_and_stays_quiet_for_settled_jobs():
    assert slurm_compact(PENDING) == "PD Priority"
    assert slurm_compact(RUNNING) == "R node1"
    assert slurm_compact(PENDING, width=6) == "PD Pr…"
    assert len(slurm_compact({**RUNNING, "slurm_nodes": "node[001-128]"}, width=9)) == 9
    done = {"slurm_job": "1", "slurm_state": "COMPLETED", "slurm_nodes": "node1"}
    assert slurm_compact(done) is None
    assert slurm_compact(done, quiet_when_settled=False) == "CD"
    assert slurm_compact({**done, "slurm_requeues": 1}) == "CD ↻1"
    assert slurm_compact({"slurm_job": "1", "slurm_state": "OUT_OF_MEMORY"}) == "OOM"


def test_line_and_raw_fields():
    assert slurm_line({**RUNNING, "slurm_requeues": 1}) == (
        "slurm job 4712  state RUNNING  reason –  nodes node1  requeues 1"
    )
    assert slurm_line(PENDING) == "slurm job 4711  state PENDING  reason Priority  nodes –  requeues 0"
    assert slurm_fields(RUNNING) == {
        "slurm_job": "4712", "slurm_state": "RUNNING", "slurm_reason": "None", "slurm_nodes": "node1",
        "slurm_requeues": 0,
    }  # fmt: skip
    assert set(slurm_fields({}).values()) == {None}


# ---------------------------------------------------------------------------------------------------- the CLI
@pytest.fixture
def proj(tmp_path):
    (tmp_path / "experiments.yaml").write_text("experiments: {}\n")
    reg = Registry(tmp_path / "runs" / "registry.db")
    m = {"R@1": 10.0, "R@10": 40.0, "mean": 25.0}
    ids = [
        seed_run(reg, tmp_path, "synth-clip4cir", config(seed=s), m, status=st)
        for s, st in ((1, "starting"), (2, "running"), (3, "done"), (4, "done"))
    ]
    reg.update(ids[0], **PENDING)
    reg.update(ids[1], started=time.time() - 600, **RUNNING)
    reg.update(ids[2], slurm_job="4700", slurm_state="COMPLETED", slurm_nodes="node2", slurm_requeues=1)
    reg.close()  # ids[3]: a local run, no Slurm job
    return tmp_path


def _status_cells(table: str) -> dict[int, list[str]]:
    """Run id → the lines of its status cell, from a rendered `dwc runs` table."""
    cells: dict[int, list[str]] = {}
    current = None
    for line in table.splitlines()[2:]:
        parts = [p.strip() for p in line.split("│")]
        if len(parts) < 3:
            continue
        if parts[0]:
            current = int(parts[0])
        if parts[2]:
            cells.setdefault(current, []).append(parts[2])
    return cells


def test_runs_table_shows_slurm_beside_status_within_80_columns(proj):
    res = invoke(proj, "runs")
    assert res.exit_code == 0, res.output
    assert max(len(line) for line in res.stdout.splitlines()) <= 80, res.stdout
    cells = _status_cells(res.stdout)
    assert cells[1][0] == "starting" and cells[1][1].startswith("PD Pri")
    assert cells[2] == ["running", "R node1"]
    assert cells[3] == ["done", "CD ↻1"]  # re-submitted once
    assert cells[4] == ["done"]  # local run: nothing added
    # a shorter experiment name leaves room for the whole reason
    reg = Registry(proj / "runs" / "registry.db")
    seed_run(reg, proj, "tiny", config(seed=9), {"R@10": 1.0}, status="starting")
    reg.update(5, **PENDING)
    reg.close()
    short = invoke(proj, "runs", "tiny")
    assert _status_cells(short.stdout)[5] == ["starting", "PD Priority"], short.stdout


def test_runs_machine_formats_carry_raw_columns(proj):
    data = {r["id"]: r for r in json.loads(invoke(proj, "runs", "-f", "json").stdout)}
    assert (data[1]["slurm_job"], data[1]["slurm_state"], data[1]["slurm_reason"]) == (
        "4711",
        "PENDING",
        "Priority",
    )
    assert (data[2]["slurm_state"], data[2]["slurm_nodes"], data[2]["slurm_requeues"]) == (
        "RUNNING",
        "node1",
        0,
    )
    assert data[3]["slurm_requeues"] == 1 and data[1]["status"] == "starting"
    assert data[4]["slurm_job"] is None and data[4]["slurm_requeues"] is None
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(invoke(proj, "runs", "-f", "csv").stdout))}
    assert (rows["2"]["slurm_job"], rows["2"]["slurm_nodes"], rows["4"]["slurm_state"]) == (
        "4712",
        "node1",
        "",
    )


def test_runs_without_any_slurm_run_have_no_slurm_columns(tmp_path):
    (tmp_path / "experiments.yaml").write_text("experiments: {}\n")
    reg = Registry(tmp_path / "runs" / "registry.db")
    seed_run(reg, tmp_path, "demo", config(), {"R@10": 1.0})
    reg.close()
    data = json.loads(invoke(tmp_path, "runs", "-f", "json").stdout)
    assert not any(k.startswith("slurm") for k in data[0])
    assert "\n   │" not in invoke(tmp_path, "runs").stdout  # one line per run


def test_show_has_a_slurm_line_and_json_the_columns(proj):
    res = invoke(proj, "show", "2")
    assert res.exit_code == 0, res.output
    assert "slurm job 4712  state RUNNING  reason –  nodes node1  requeues 0" in res.stdout
    assert "slurm job" not in invoke(proj, "show", "4").stdout
    run = json.loads(invoke(proj, "show", "1", "-f", "json").stdout)["run"]
    assert (run["slurm_job"], run["slurm_reason"], run["slurm_requeues"]) == ("4711", "Priority", 0)


# ------------------------------------------------------------------------------ the Slurm worker in workers/
def _slurm_worker_in_thread(project, started: list, monkeypatch, job_state: str = "RUNNING"):
    """A Slurm worker (no cluster: Slurm's answers are faked) looping in a thread until ``stop``."""
    import threading

    from dwc_core.runs import slurm

    monkeypatch.setattr(
        slurm, "job_states", lambda ids: {j: slurm.JobInfo(j, job_state, "None", "node7") for j in ids}
    )

    def body():
        w = slurm.SlurmWorker(project / "runs" / "registry.db", slurm.SlurmOptions(poll_s=0.05, partition="gpu"),
                              log=lambda m: None, log_file="/tmp/w.log")  # fmt: skip
        started.append(w)
        w.result = w.run()

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t


def _wait(pred, timeout=20.0):
    deadline = time.time() + timeout
    while not pred():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_slurm_worker_registers_while_it_lives_and_dwc_workers_lists_it(proj, monkeypatch):
    from dwc_core.runs import control

    assert control.nobody_will_take(proj) is not None
    started: list = []
    t = _slurm_worker_in_thread(proj, started, monkeypatch)
    _wait(lambda: started and control.live_workers(proj))
    w = started[0]
    (info,) = control.live_workers(proj)
    assert (info["name"], info["kind"], info["partition"], info["log"]) == (
        w.name,
        "slurm",
        "gpu",
        "/tmp/w.log",
    )
    assert info["name"].startswith("slurm-") and (proj / "runs" / "workers" / f"{w.name}.lock").exists()
    assert control.nobody_will_take(proj) is None  # `dwc run --queue` / `dwc resume` no longer warn
    # it adopted the unfinished Slurm runs (1 pending, 2 running) and is named as the worker following them
    reg = Registry(proj / "runs" / "registry.db")
    _wait(lambda: [reg.get(i)["worker"] for i in (1, 2, 3)] == [w.name, w.name, None])
    reg.close()
    (row,) = json.loads(invoke(proj, "workers", "-f", "json").stdout)
    assert (row["kind"], row["state"], sorted(row["runs"].split(","))) == ("slurm", "alive", ["1", "2"])
    assert "gpu partition" in row["gpus"]
    table = invoke(proj, "workers").stdout
    assert "slurm" in table and "alive" in table
    # the heartbeat is refreshed while it lives (a worker on another host is judged by it)
    first = json.loads((proj / "runs" / "workers" / f"{w.name}.json").read_text())["heartbeat"]
    monkeypatch.setattr("dwc_core.runs.slurm.INFO_EVERY_S", 0.0)
    _wait(lambda: json.loads((proj / "runs" / "workers" / f"{w.name}.json").read_text())["heartbeat"] > first)
    w.stop = True
    t.join(timeout=20)
    assert w.result == 130
    assert not list((proj / "runs" / "workers").glob("slurm-*"))  # its files go with it
    assert control.live_workers(proj) == []


def test_two_slurm_workers_in_one_process_get_distinct_files(tmp_path):
    from dwc_core.runs import slurm

    reg_path = tmp_path / "runs" / "registry.db"
    Registry(reg_path).close()
    a = slurm.SlurmWorker(reg_path, slurm.SlurmOptions(), log=lambda m: None)
    b = slurm.SlurmWorker(reg_path, slurm.SlurmOptions(), log=lambda m: None)
    a.register()
    b.register()
    try:
        assert a.name != b.name and b.name == f"{a.name}-2"
        names = {p.stem for p in (tmp_path / "runs" / "workers").glob("*.json")}
        assert names == {a.name, b.name}
    finally:
        a.unregister()
        b.unregister()
    assert not list((tmp_path / "runs" / "workers").iterdir())


def test_slurm_worker_entry_point_records_its_log_file(tmp_path, monkeypatch):
    """`python -m dwc_core.runs.slurm worker --log-file F` (what `--detach` starts) names F in its worker file."""
    from dwc_core.runs import slurm

    reg_path = tmp_path / "runs" / "registry.db"
    Registry(reg_path).close()
    monkeypatch.setattr(slurm, "available", lambda: None)
    seen = []
    real = slurm.write_worker_file
    monkeypatch.setattr(slurm, "write_worker_file", lambda folder, name, info: (seen.append(dict(info)),
                                                                               real(folder, name, info)))  # fmt: skip
    code = slurm.main(
        ["worker", "--registry", str(reg_path), "--once", "--log-file", str(tmp_path / "w.log")]
    )
    assert code == 0
    assert seen and seen[0]["kind"] == "slurm" and seen[0]["log"] == str(tmp_path / "w.log")
    assert not list((tmp_path / "runs" / "workers").glob("*.json"))
