"""The run registry: migrations, lifecycle, atomic claims, metrics and lost-run detection."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import time

from dwc_core.config.experiments import default_config
from dwc_core.runs import launcher
from dwc_core.runs.registry import MIGRATIONS, Registry


def make(tmp_path) -> Registry:
    return Registry(tmp_path / "runs" / "registry.db")


def test_migrations_applied_once_and_wal(tmp_path):
    reg = make(tmp_path)
    again = make(tmp_path)
    names = [r[0] for r in again.conn.execute("SELECT name FROM _dwc_migrations")]
    assert names == [name for name, _ in MIGRATIONS]  # each once, in order
    assert reg.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"runs", "metrics", "events", "evaluations", "query_results"} <= set(reg.db.table_names())


def test_create_claim_lifecycle(tmp_path):
    reg = make(tmp_path)
    cfg = default_config()
    run = reg.create_run("demo", cfg, tmp_path / "runs")
    assert run["status"] == "queued" and run["config"] == cfg
    assert (tmp_path / "runs" / f"{run['id']}-demo" / "config.json").is_file()
    claimed = reg.claim("w1")
    assert claimed["id"] == run["id"] and claimed["status"] == "starting"
    assert reg.claim("w2") is None  # nothing left
    assert reg.set_status(run["id"], "running", pid=123)
    assert not reg.set_status(run["id"], "failed", only_from=("queued",))  # guarded transition
    reg.set_status(run["id"], "failed")
    kinds = [e["kind"] for e in reg.events(run["id"])]
    assert kinds == ["queued", "starting", "running", "failed"]
    reg.requeue(run["id"])  # a failed run can be resumed (a done one cannot: tests/test_hardening.py)
    row = reg.get(run["id"])
    assert row["status"] == "queued" and row["resumes"] == 1


def test_metrics_long_table_replaces_duplicates_and_trims_on_resume(tmp_path):
    reg = make(tmp_path)
    rid = reg.create_run("demo", default_config(), tmp_path / "runs")["id"]
    reg.log_metrics(
        rid, [{"step": s, "epoch": 1, "split": "train", "name": "loss", "value": 1 / s} for s in (1, 2, 3)]
    )
    reg.log_metrics(rid, [{"step": 3, "epoch": 1, "split": "train", "name": "loss", "value": 9.0}])
    rows = reg.metrics(rid, name="loss")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["value"] == 9.0
    assert reg.delete_metrics_after(rid, 2) == 1
    assert [r["step"] for r in reg.metrics(rid)] == [1, 2]


def _claimer(path, out):
    reg = Registry(path)
    got = []
    while True:
        row = reg.claim(f"w{mp.current_process().pid}")
        if row is None:
            break
        got.append(row["id"])
    out.put(got)


def test_concurrent_claims_never_hand_out_a_run_twice(tmp_path):
    reg = make(tmp_path)
    ids = [reg.create_run("demo", default_config(), tmp_path / "runs")["id"] for _ in range(30)]
    q = mp.get_context("fork").Queue()
    procs = [mp.get_context("fork").Process(target=_claimer, args=(reg.path, q)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [x for _ in procs for x in q.get(timeout=60)]
    for p in procs:
        p.join()
    assert sorted(got) == ids


def test_reap_lost_marks_dead_processes(tmp_path):
    reg = make(tmp_path)
    rid = reg.create_run("demo", default_config(), tmp_path / "runs")["id"]
    reg.claim("w", host="hostA")
    reg.set_status(rid, "running", pid=2**22 + 12345, host="hostA")  # no such pid
    assert launcher.reap_lost(reg, "hostA") == [rid]
    assert reg.get(rid)["status"] == "lost"
    # stale heartbeat on another host
    rid2 = reg.create_run("demo", default_config(), tmp_path / "runs")["id"]
    reg.claim("w", host="hostB")
    reg.set_status(rid2, "running", host="hostB", heartbeat=time.time() - 1000)
    assert launcher.reap_lost(reg, "hostA", stale_s=60) == [rid2]


def test_query_results_pruned_to_best_and_last(tmp_path):
    reg = make(tmp_path)
    rid = reg.create_run("demo", default_config(), tmp_path / "runs")["id"]
    eids = []
    for epoch in (1, 2, 3):
        eid = reg.add_evaluation(
            rid, epoch=epoch, step=epoch, kind="epoch", split="test", metrics={"mean": epoch}
        )
        eids.append(eid)
        row = {"eval_set": "test", "qidx": 0, "ref_id": "a", "text": "t", "target_ids": ["b"],
               "topk_ids": ["b"], "topk_scores": [1.0], "target_rank": 1}  # fmt: skip
        reg.add_query_results(rid, eid, [row])
    reg.prune_query_results(rid, keep=[eids[0], eids[2]])
    assert (
        len(reg.query_results(eids[0])) == 1 and not reg.query_results(eids[1]) and reg.query_results(eids[2])
    )


def test_corrupt_registry_file_is_a_clear_error(tmp_path):
    path = tmp_path / "runs" / "registry.db"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not sqlite" * 100)
    try:
        Registry(path)
    except Exception as exc:  # noqa: BLE001
        assert type(exc).__name__ == "RegistryError" and "is damaged" in str(exc) and ".recover" in str(exc)
    else:
        raise AssertionError("expected RegistryError")
    assert isinstance(sqlite3.sqlite_version, str)
