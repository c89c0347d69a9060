"""Report files → registry: torn lines, re-ingestion, resume truncation, and the file sink's operations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dwc_core.engine.reporting import FileSink, Reporter, append_lines
from dwc_core.runs.ingest import ingest, read_final
from dwc_core.runs.registry import Registry


@pytest.fixture()
def run(tmp_path):
    reg = Registry(tmp_path / "runs" / "registry.db")
    row = reg.create_run("tiny", {"trainer": {"seed": 1, "epochs": 2}}, tmp_path / "runs")
    reg.update(row["id"], status="running")
    run_dir = Path(row["run_dir"])
    (run_dir / "run.json").write_text(json.dumps(reg.get(row["id"])))
    return reg, row["id"], run_dir


def metric(step: int, value: float, name: str = "loss") -> str:
    return json.dumps({"step": step, "epoch": 1, "split": "train", "name": name, "value": value, "time": 1.0})


def steps(reg: Registry, run_id: int, name: str = "loss") -> list[tuple[int, float]]:
    return [(m["step"], m["value"]) for m in reg.metrics(run_id, split="train", name=name)]


def test_torn_last_line_is_retried_and_double_ingest_keeps_one_row_per_step(run):
    reg, run_id, run_dir = run
    path = run_dir / "metrics.jsonl"
    third = metric(3, 0.3)
    path.write_text(metric(1, 0.1) + "\n" + metric(2, 0.2) + "\n" + third[:17])  # the writer died mid-line
    res = ingest(reg, run_id)
    assert steps(reg, run_id) == [(1, 0.1), (2, 0.2)] and res.metrics == 2 and res.bad_lines == 0
    with open(path, "a") as fh:  # the line completes
        fh.write(third[17:] + "\n")
    assert ingest(reg, run_id).metrics == 1
    assert steps(reg, run_id) == [(1, 0.1), (2, 0.2), (3, 0.3)]
    again = ingest(reg, run_id)  # nothing new: nothing read, nothing duplicated
    assert again.metrics == 0 and steps(reg, run_id) == [(1, 0.1), (2, 0.2), (3, 0.3)]
    # forget what was ingested (the worst case): re-reading everything still gives one row per step
    with reg.write() as c:
        c.execute("DELETE FROM ingest_state WHERE run_id = ?", (run_id,))
    ingest(reg, run_id)
    ingest(reg, run_id)
    assert steps(reg, run_id) == [(1, 0.1), (2, 0.2), (3, 0.3)]
    n = reg.conn.execute("SELECT COUNT(*) FROM metrics WHERE run_id = ?", (run_id,)).fetchone()[0]
    assert n == 3


def test_a_writer_after_a_crash_isolates_the_torn_fragment(run):
    reg, run_id, run_dir = run
    path = run_dir / "metrics.jsonl"
    path.write_text(metric(1, 0.1) + "\n" + '{"step": 2, "va')  # killed mid-write, never completed
    append_lines(path, [metric(2, 0.25), metric(3, 0.3)])  # the resumed process appends whole lines
    res = ingest(reg, run_id)
    assert res.bad_lines == 1  # the fragment, skipped
    assert steps(reg, run_id) == [(1, 0.1), (2, 0.25), (3, 0.3)]


def test_file_sink_operations_are_ingested_once(run):
    reg, run_id, run_dir = run
    sink = FileSink(run_dir, run_id)
    assert sink.get(run_id)["id"] == run_id
    sink.set_status(run_id, "running", "running on node1 pid 77", host="node1", pid=77, device="cpu")
    sink.event(run_id, "info", "parameters 123")
    e0 = sink.add_evaluation(run_id, epoch=0, step=0, kind="epoch", split="test", metrics={"mean": 1.0})
    e1 = sink.add_evaluation(run_id, epoch=1, step=4, kind="epoch", split="test", metrics={"mean": 5.0})
    sink.mark_best(run_id, e1)
    q = {"eval_set": "test", "ref_id": "a", "text": "t", "target_ids": ["b"], "topk_ids": ["b"],
         "topk_scores": [0.9], "target_rank": 1}  # fmt: skip
    sink.add_query_results(run_id, e0, [{**q, "qidx": 0}])
    sink.add_query_results(run_id, e1, [{**q, "qidx": 0}, {**q, "qidx": 1}])
    sink.prune_query_results(run_id, [e1])
    sink.update(run_id, best_value=5.0, best_epoch=1, last_metrics={"mean": 5.0, "epoch": 1})
    sink.heartbeat(run_id, epoch=1, step=4, total_steps=8, phase="train", loss=0.5)
    first = ingest(reg, run_id)
    row = reg.get(run_id)
    assert row["status"] == "running" and row["host"] == "node1" and row["pid"] is None  # no remote pid
    assert row["step"] == 4 and row["progress"]["phase"] == "train" and row["best_value"] == 5.0
    evals = reg.evaluations(run_id)
    assert [(e["epoch"], e["is_best"], e["metrics"]["mean"]) for e in evals] == [(0, 0, 1.0), (1, 1, 5.0)]
    assert len(reg.query_results(evals[0]["id"])) == 0 and len(reg.query_results(evals[1]["id"])) == 2
    sink.set_status(run_id, "done", "finished", exit_code=0)
    assert read_final(run_dir)["status"] == "done"
    n_events = len(reg.events(run_id))
    second = ingest(reg, run_id)
    assert first.ops == 9 and second.ops == 1 and second.final["status"] == "done"
    assert reg.get(run_id)["status"] == "done" and len(reg.events(run_id)) == n_events + 1
    ingest(reg, run_id)
    assert len(reg.events(run_id)) == n_events + 1 and len(reg.evaluations(run_id)) == 2


def test_resume_truncation_never_duplicates_a_step(run):
    reg, run_id, run_dir = run
    path = run_dir / "metrics.jsonl"
    append_lines(path, [metric(s, s / 10) for s in range(1, 7)])  # attempt 1 reached step 6, checkpoint at 4
    ingest(reg, run_id)  # the head node had read all of attempt 1
    sink = FileSink(run_dir, run_id)
    assert sink.delete_metrics_after(run_id, 4) == 2
    append_lines(path, [metric(5, 0.55)])  # attempt 2 redoes step 5 (and has not reached 6 yet)
    ingest(reg, run_id)
    assert steps(reg, run_id) == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4), (5, 0.55)]
    append_lines(path, [metric(6, 0.66)])
    ingest(reg, run_id)
    ingest(reg, run_id)
    assert steps(reg, run_id) == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4), (5, 0.55), (6, 0.66)]


def test_truncation_read_in_one_pass_with_both_attempts(run):
    reg, run_id, run_dir = run
    path = run_dir / "metrics.jsonl"
    append_lines(path, [metric(s, s / 10) for s in range(1, 7)])
    FileSink(run_dir, run_id).delete_metrics_after(run_id, 4)
    append_lines(path, [metric(5, 0.55)])
    ingest(reg, run_id)  # nothing was read before: attempt 1, the truncation and attempt 2 in one pass
    assert steps(reg, run_id) == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4), (5, 0.55)]


def test_final_status_left_to_the_worker(run):
    reg, run_id, run_dir = run
    sink = FileSink(run_dir, run_id)
    sink.set_status(run_id, "cancelled", "cancelled at epoch 1 step 3; last.pt saved", exit_code=3)
    res = ingest(reg, run_id, apply_final=False)
    assert res.final["status"] == "cancelled" and reg.get(run_id)["status"] == "running"
    assert any(e["kind"] == "attempt" and "cancelled" in e["message"] for e in reg.events(run_id))


def test_reporter_with_file_sink_never_opens_the_registry(tmp_path, run):
    reg, run_id, run_dir = run
    missing = tmp_path / "nowhere" / "registry.db"
    rep = Reporter(missing, run_id, run_dir, interval=60, sink="files")
    rep.metric(1, 0.5, "train", "loss", 0.7)
    rep.progress(phase="train", step=1)
    rep.flush_now()
    assert not missing.parent.exists()
    assert json.loads((run_dir / "heartbeat.json").read_text())["phase"] == "train"
    (run_dir / "cancel").touch()
    rep.flush_now()
    assert rep.cancel_requested.is_set()
    ingest(reg, run_id)
    assert steps(reg, run_id) == [(1, 0.7)]


def test_restart_from_scratch_with_the_file_sink_clears_history_once(run):
    reg, run_id, run_dir = run
    path = run_dir / "metrics.jsonl"
    sink = FileSink(run_dir, run_id)
    append_lines(path, [metric(s, s / 10) for s in range(1, 5)])  # attempt 1 reached step 4
    e1 = sink.add_evaluation(run_id, epoch=1, step=4, kind="epoch", split="test", metrics={"mean": 5.0})
    sink.mark_best(run_id, e1)
    sink.update(run_id, best_value=5.0, best_epoch=1, epoch=1, step=4)
    ingest(reg, run_id)
    reg.update(run_id, from_scratch=1)  # `dwc resume --from-scratch` of a Slurm run
    assert len(reg.evaluations(run_id)) == 1 and reg.get(run_id)["from_scratch"] == 1
    # attempt 2 (from scratch): what the trainer sees of attempt 1, then the clear
    assert len(sink.metrics(run_id)) == 4 and [e["epoch"] for e in sink.evaluations(run_id, "epoch")] == [1]
    assert sink.clear_history(run_id) == {"metrics": 4, "evaluations": 1}
    assert sink.metrics(run_id) == [] and sink.evaluations(run_id, "epoch") == []
    append_lines(path, [metric(1, 0.9)])  # attempt 2's first step, written before the head node reads
    ingest(reg, run_id)
    row = reg.get(run_id)
    assert steps(reg, run_id) == [(1, 0.9)]  # attempt 1's steps 2-4 are gone, step 1 is attempt 2's
    assert reg.evaluations(run_id) == [] and row["from_scratch"] == 0
    assert row["best_value"] is None and row["epoch"] == 0
    append_lines(path, [metric(2, 0.8)])
    e2 = sink.add_evaluation(run_id, epoch=1, step=2, kind="epoch", split="test", metrics={"mean": 3.0})
    sink.mark_best(run_id, e2)
    again = ingest(reg, run_id)  # the clear (an earlier seq) is not applied a second time
    assert again.ops == 2
    assert steps(reg, run_id) == [(1, 0.9), (2, 0.8)]
    assert [(e["epoch"], e["is_best"]) for e in reg.evaluations(run_id)] == [(1, 1)]
    assert ingest(reg, run_id).ops == 0 and steps(reg, run_id) == [(1, 0.9), (2, 0.8)]


def test_clear_read_before_and_after_the_emptied_metrics_file(run):
    """A head node that read the events just before the clear and the metrics just after the file was emptied
    keeps what it had; the next pass applies the clear and reads the new attempt from the start."""
    reg, run_id, run_dir = run
    path = run_dir / "metrics.jsonl"
    append_lines(path, [metric(s, s / 10) for s in range(1, 4)])
    ingest(reg, run_id)
    sink = FileSink(run_dir, run_id)
    path.write_bytes(b"")  # the first half of clear_history, seen by a pass before the op is written
    ingest(reg, run_id)
    assert steps(reg, run_id) == [(1, 0.1), (2, 0.2), (3, 0.3)]
    sink.clear_history(run_id)
    append_lines(path, [metric(1, 0.7)])
    ingest(reg, run_id)
    assert steps(reg, run_id) == [(1, 0.7)]


TINY_PROJECT = """\
experiments:
  tiny:
    dataset: {name: synthetic, num_train: 48, num_test: 24, image_size: 32}
    model: {name: tirg, embed_dim: 32, cnn: {arch: tiny}, text: {word_dim: 16, hidden: 32}}
    eval: {ks: [1, 5, 10], query_results: false}
    trainer: {epochs: 1, batch_size: 16, lr: 1.0e-3, num_workers: 0, log_every: 1, heartbeat_s: 0.5,
              device: cpu, cpu_threads: 1}
"""


@pytest.mark.slow
def test_a_trainer_with_the_files_sink_never_opens_the_registry_and_its_reports_are_ingested(tmp_path):
    """The Slurm job's path without Slurm: job_main starts ``python -m dwc_core.engine.train ID --sink files``
    with a registry path in a folder that does not exist (were it opened, sqlite could not even create it); the run
    trains to done writing only its run directory, and ingestion brings that into the real registry."""
    import subprocess
    import sys

    from dwc_core.runs.control import queue_experiment

    (tmp_path / "experiments.yaml").write_text(TINY_PROJECT)
    reg = Registry(tmp_path / "runs" / "registry.db")
    rid = queue_experiment(reg, tmp_path, "tiny", seeds=[1])[0]["id"]
    run = reg.claim("test-head")
    assert run is not None and run["id"] == rid
    run_dir = Path(run["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(reg.get(rid), default=str))  # as the Slurm worker writes it
    nowhere = tmp_path / "no-such-folder" / "runs" / "registry.db"
    job = [sys.executable, "-c", "from dwc_core.runs.slurm import job_main; raise SystemExit(job_main())"]
    res = subprocess.run(
        [*job, str(rid), str(nowhere), str(run_dir)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"dwc_core.engine.train {rid} --registry {nowhere} --sink files --run-dir {run_dir}" in res.stdout
    # never opened: no database, journal or lock beside it. (The trainer does take its project folder from the
    # registry path: it put the dataset cache in <that folder>/runs/.cache, and nothing else.)
    assert not any(p.name.startswith("registry.db") for p in nowhere.parent.parent.rglob("*"))
    assert sorted(p.name for p in nowhere.parent.iterdir()) == [".cache"]
    assert read_final(run_dir)["status"] == "done"
    for name in ("events.jsonl", "metrics.jsonl", "heartbeat.json", "status.json", "last.pt"):
        assert (run_dir / name).exists(), name
    # the real registry learnt nothing while the trainer ran
    assert reg.get(rid)["status"] == "starting" and reg.metrics(rid) == [] and reg.evaluations(rid) == []
    ingest(reg, rid)
    row = reg.get(rid)
    assert row["status"] == "done" and row["exit_code"] == 0, row
    assert [m["epoch"] for m in reg.metrics(rid, split="test", name="R@10")] == [0.0, 1.0]
    assert [m["step"] for m in reg.metrics(rid, split="train", name="loss")] == [1, 2, 3]
    assert [e["epoch"] for e in reg.evaluations(rid)] == [0, 1]
    messages = " | ".join(e["message"] for e in reg.events(rid))
    assert "slurm job ? started on" in messages and "running on" in messages, messages
    ingest(reg, rid)  # again: nothing doubles
    assert [m["step"] for m in reg.metrics(rid, split="train", name="loss")] == [1, 2, 3]
