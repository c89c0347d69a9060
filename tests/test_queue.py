"""The queue without training: scheduling (trainer.gpus: N, no starvation), the run-management verbs of
runs/control.py, GPU locks between workers, worker files, and concurrent metric writers."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import HEAVY, dwc, finish, heavy_modules_after, invoke, start, wait_for, write_project

from dwc_core.errors import UsageError
from dwc_core.runs import control
from dwc_core.runs.registry import Registry
from dwc_core.runs.worker import Pool, Worker, cpu_share, data_workers, plan, preflight

EXPERIMENTS = """\
experiments:
  tiny:
    description: a tiny TIRG
    tags: [smoke, tirg]
    dataset: {name: synthetic, num_train: 64, num_test: 16, image_size: 32}
    model: {name: tirg, embed_dim: 32, cnn: {arch: tiny}, text: {word_dim: 16, hidden: 32}}
    trainer: {epochs: 1, batch_size: 16, max_steps_per_epoch: 2, num_workers: 0, heartbeat_s: 0.5}
    eval: {ks: [1, 5, 10]}
  grid:
    extends: tiny
    grid: {model.embed_dim: [16, 32]}
    seeds: [1, 2, 3]
"""


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    return write_project(tmp_path, EXPERIMENTS)


# ------------------------------------------------------------------------------------------------- scheduling
def test_two_gpu_run_gets_two_distinct_gpus_and_one_gpu_run_the_third():
    pool = Pool(["0", "1", "2"], capacity=1, gpu_mode=True)
    got = dict(plan(pool, [(1, 2), (2, 1)], {}, max_passes=10))
    assert len(got[1]) == 2 and len(set(got[1])) == 2
    assert got[2] == [g for g in ["0", "1", "2"] if g not in got[1]]


def test_run_asking_more_gpus_than_the_worker_has_is_left_for_another():
    pool = Pool(["0", "1"], capacity=1, gpu_mode=True)
    assert plan(pool, [(1, 4), (2, 1)], {}, max_passes=0) == [(2, ["0"])]


def test_big_run_is_passed_at_most_max_passes_times_then_starts():
    """1-GPU runs keep arriving; the 2-GPU run may be passed, but after max_passes nothing passes it and it gets
    the GPUs as soon as they free up."""
    pool = Pool(["0", "1", "2"], capacity=1, gpu_mode=True)
    pool.take(["0"])
    pool.take(["1"])  # two long runs hold GPUs 0 and 1
    passes: dict[int, int] = {}
    queue = [(100, 2)] + [(i, 1) for i in range(1, 50)]
    started = []
    for _round in range(10):
        got = plan(pool, queue, passes, max_passes=2)
        for rid, units in got:
            pool.take(units)
            started.append(rid)
            queue = [q for q in queue if q[0] != rid]
        # every round, whatever ran on the lowest busy GPU ends
        busy = [u for u in pool.units if pool.used.get(u)]
        if busy:
            pool.give([busy[0]])
        if 100 in started:
            break
    assert 100 in started
    assert started.index(100) <= 2  # passed at most twice
    assert passes.get(100, 0) <= 2


def test_cpu_pool_gives_one_slot_per_run_and_respects_capacity():
    pool = Pool(["cpu"], capacity=2, gpu_mode=False)
    assert [rid for rid, _ in plan(pool, [(1, 4), (2, 1), (3, 1)], {}, 5)] == [1, 2]


def test_cpu_share_and_loader_workers():
    assert cpu_share(16, 4, None) == 4
    assert cpu_share(2, 4, None) == 1
    assert cpu_share(16, 4, 7) == 7  # trainer.cpu_threads wins
    assert data_workers(None, 4, gpu_mode=True) == 3
    assert data_workers(None, 8, gpu_mode=False) == 0
    assert data_workers(2, 8, gpu_mode=True) == 2


def test_preflight_names_a_missing_dataset_root(tmp_path):
    msg = preflight({"dataset": {"name": "fashioniq", "root": str(tmp_path / "nope")}})
    assert msg and "nope" in msg and "does not exist" in msg
    assert preflight({"dataset": {"name": "fashioniq", "root": str(tmp_path)}}) is None
    assert preflight({"dataset": {"name": "synthetic"}}) is None


# -------------------------------------------------------------------------------------------------- the verbs
def test_queue_expands_grid_and_seeds_stores_tags_and_priority(proj, reg):
    rows = control.queue_experiment(reg, proj, "grid", priority=5)
    assert len(rows) == 6
    assert {(r["variant"]["model.embed_dim"], r["seed"]) for r in rows} == {
        (d, s) for d in (16, 32) for s in (1, 2, 3)
    }
    assert all(
        r["tags"] == ["smoke", "tirg"] and r["priority"] == 5 and r["status"] == "queued" for r in rows
    )
    rows = control.queue_experiment(reg, proj, "tiny", seeds=[7, 8])
    assert [r["seed"] for r in rows] == [7, 8]


def test_identical_finished_run_is_refused_without_force(proj, reg):
    (row,) = control.queue_experiment(reg, proj, "tiny")
    control.queue_experiment(reg, proj, "tiny")  # a queued twin is fine: only finished runs count
    reg.set_status(row["id"], "done", "done")
    with pytest.raises(control.DuplicateRuns) as exc:
        control.queue_experiment(reg, proj, "tiny")
    assert exc.value.existing == [row["id"]] and exc.value.exit_code == 2
    assert len(control.queue_experiment(reg, proj, "tiny", force=True)) == 1
    # another seed is another run
    assert len(control.queue_experiment(reg, proj, "tiny", seeds=[3])) == 1


def test_cli_queue_duplicate_non_interactive_exits_2_with_ids(proj, reg):
    (row,) = control.queue_experiment(reg, proj, "tiny")
    reg.set_status(row["id"], "done", "done")
    res = dwc(proj, "queue", "tiny")
    assert res.returncode == 2, res.stderr
    assert f"{row['id']}" in res.stderr and "--force" in res.stderr
    res = dwc(proj, "queue", "tiny", "--force", "--seeds", "4,5")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["2", "3"]
    assert "no worker is running" in res.stderr  # says that nothing will take them yet


def test_cli_queue_bad_seeds_is_usage_error(proj):
    res = dwc(proj, "queue", "tiny", "--seeds", "1,x")
    assert res.returncode == 2 and "--seeds" in res.stderr and "Traceback" not in res.stderr


def test_claim_order_is_priority_then_creation(proj, reg):
    old_low, mid, new_high, newer_high = control.queue_experiment(reg, proj, "tiny", seeds=[1, 2, 3, 4])
    for run, priority in ((old_low, 0), (mid, 5), (new_high, 9), (newer_high, 9)):
        reg.update(run["id"], priority=priority)
    w = Worker(proj, cpu=True, cpu_slots=4)
    w.registry = reg
    assert [c[0] for c in w._candidates()] == [new_high["id"], newer_high["id"], mid["id"], old_low["id"]]


def test_worker_adopts_a_live_trainer_only_when_it_holds_its_run_lock(proj, reg):
    """A worker takes over live runs of this host whose worker died; a live pid that does not hold the run's
    lock is another process now (pid reuse), never adopted."""
    import socket

    from dwc_core.runs.locks import run_lock

    a, b = control.queue_experiment(reg, proj, "tiny", seeds=[1, 2])
    for r in (a, b):
        reg.set_status(r["id"], "running", "running", pid=os.getpid(), host=socket.gethostname())
        reg.update(r["id"], worker="gone-1")
    lock = run_lock(a["run_dir"], a["id"]).acquire()
    try:
        w = Worker(proj, cpu=True, cpu_slots=2)
        w.registry = reg
        w.adopt()
        assert set(w.children) == {a["id"]}
        assert reg.get(a["id"])["worker"] == w.name and reg.get(b["id"])["worker"] == "gone-1"
    finally:
        lock.release()


def test_hold_release(proj, reg):
    a, b = control.queue_experiment(reg, proj, "tiny", seeds=[1, 2], hold=True)
    assert reg.get(a["id"])["hold"] == 1
    w = Worker(proj, cpu=True, cpu_slots=2)
    w.registry = reg
    assert w._candidates() == []  # held runs are not candidates
    assert w.claim(a["id"]) is None  # nor claimable
    assert control.set_hold(reg, [a["id"]], False) == [a["id"]]
    assert [c[0] for c in w._candidates()] == [a["id"]]
    assert w.claim(a["id"])["status"] == "starting"
    with pytest.raises(UsageError, match="only a queued run"):
        control.set_hold(reg, [a["id"]], True)
    kinds = [e["kind"] for e in reg.events(a["id"])]
    assert "hold" in kinds and "release" in kinds


def test_cancel_queued_run_leaves_the_queue(proj, reg):
    (row,) = control.queue_experiment(reg, proj, "tiny")
    msg = control.cancel(reg, row["id"])
    assert "queue" in msg and reg.get(row["id"])["status"] == "cancelled"
    res = dwc(proj, "cancel", str(row["id"]))
    assert res.returncode == 2 and "already cancelled" in res.stderr


def test_cancel_running_process_group_then_grace_kill(proj, reg):
    """A process that ignores SIGTERM is SIGKILLed after the grace and the run recorded cancelled."""
    (row,) = control.queue_experiment(reg, proj, "tiny")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
        ],
        start_new_session=True,
    )
    try:
        reg.set_status(row["id"], "running", "fake", pid=proc.pid, pgid=proc.pid, host=os.uname().nodename)
        time.sleep(0.3)
        assert "SIGTERM" in control.cancel(reg, row["id"])
        t0 = time.time()
        final = control.wait_cancelled(reg, row["id"], grace_s=1.0)
        assert final["status"] == "cancelled" and "grace" in final["error"]
        assert time.time() - t0 < 5
        assert proc.wait(timeout=5) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()


def test_rm_restore_purge(proj, reg):
    a, b = control.queue_experiment(reg, proj, "tiny", seeds=[1, 2])
    reg.set_status(a["id"], "done", "done")
    (Path(a["run_dir"]) / "last.pt").write_bytes(b"x" * 100_000)
    control.remove(reg, [a["id"]])
    assert [r["id"] for r in reg.runs()] == [b["id"]]
    assert {r["id"] for r in reg.runs(include_deleted=True)} == {a["id"], b["id"]}
    control.restore(reg, [a["id"]])
    assert {r["id"] for r in reg.runs()} == {a["id"], b["id"]}
    assert control.purge_plan(reg) == []
    control.remove(reg, [a["id"]])
    plan_ = control.purge_plan(reg)
    assert [p.id for p in plan_] == [a["id"]] and plan_[0].bytes >= 100_000
    reg.log_metrics(a["id"], [{"step": 1, "split": "train", "name": "loss", "value": 1.0}])
    n, freed = control.purge(reg)
    assert n == 1 and freed >= 100_000
    assert not Path(a["run_dir"]).exists() and Path(b["run_dir"]).exists()
    assert [r["id"] for r in reg.runs(include_deleted=True)] == [b["id"]]
    assert reg.metrics(a["id"]) == []


def test_rm_refuses_an_active_run_and_queued_rm_leaves_the_queue(proj, reg):
    a, b = control.queue_experiment(reg, proj, "tiny", seeds=[1, 2])
    reg.set_status(a["id"], "running", "fake")
    with pytest.raises(UsageError, match="cancel it first"):
        control.remove(reg, [a["id"]])
    control.remove(reg, [b["id"]])
    assert reg.get(b["id"])["status"] == "cancelled"
    assert control.restore(reg, [b["id"]]) == [b["id"]]  # rm then restore of a queued run changes nothing
    assert reg.get(b["id"])["status"] == "queued" and reg.get(b["id"])["ended"] is None
    reg.set_status(a["id"], "cancelled", "cancelled by the user")  # a cancelled run stays cancelled
    control.remove(reg, [a["id"]])
    control.restore(reg, [a["id"]])
    assert reg.get(a["id"])["status"] == "cancelled"


def test_cli_purge_lists_then_needs_yes(proj, reg):
    (a,) = control.queue_experiment(reg, proj, "tiny")
    assert dwc(proj, "rm", str(a["id"])).returncode == 0
    res = dwc(proj, "purge")
    assert res.returncode == 2 and "--yes" in res.stderr and f"{a['id']}" in res.stdout
    assert Path(a["run_dir"]).exists()
    res = dwc(proj, "purge", "--yes")
    assert res.returncode == 0 and "purged 1" in res.stderr
    assert not Path(a["run_dir"]).exists()


def test_queue_failed_requeues_only_failed_lost_cancelled(proj, reg):
    rows = control.queue_experiment(reg, proj, "tiny", seeds=[1, 2, 3, 4])
    for r, status in zip(rows, ["failed", "lost", "done", "cancelled"], strict=True):
        reg.set_status(r["id"], status, status)
    ids = control.queue_failed(reg, "tiny")
    assert ids == [rows[0]["id"], rows[1]["id"], rows[3]["id"]]
    assert [reg.get(i)["status"] for i in ids] == ["queued"] * 3
    assert reg.get(rows[2]["id"])["status"] == "done"


def test_resume_and_queue_failed_see_a_run_whose_process_died_unrecorded(proj, reg):
    """Worker and trainer both killed: the row still says running. `dwc resume` (and `queue --failed`) must
    reconcile it themselves, not only after a `dwc runs` or a worker marked it lost."""
    import socket

    a, b = control.queue_experiment(reg, proj, "tiny", seeds=[1, 2])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for r in (a, b):
        reg.set_status(r["id"], "running", "running", pid=dead.pid, host=socket.gethostname())
    res = dwc(proj, "resume", str(a["id"]))
    assert res.returncode == 0, res.stderr
    assert reg.get(a["id"])["status"] == "queued"
    assert any(e["kind"] == "lost" for e in reg.events(a["id"]))
    reg.set_status(b["id"], "running", "running", pid=dead.pid, host=socket.gethostname())
    res = dwc(proj, "queue", "--failed", "tiny")
    assert res.returncode == 0 and res.stdout.split() == [str(b["id"])], res.stderr


def test_queue_failed_of_an_unknown_experiment_exits_2(proj, reg):
    control.queue_experiment(reg, proj, "tiny")
    res = dwc(proj, "queue", "--failed", "tiyn")
    assert res.returncode == 2 and "no experiment named 'tiyn'" in res.stderr and "tiny" in res.stderr


def test_resume_says_whether_a_worker_will_take_it(proj, reg):
    (a,) = control.queue_experiment(reg, proj, "tiny")
    reg.set_status(a["id"], "failed", "boom")
    res = dwc(proj, "resume", str(a["id"]))
    assert res.returncode == 0 and "no worker is running" in res.stderr and "dwc worker" in res.stderr
    assert reg.get(a["id"])["status"] == "queued"


def test_experiments_listing(proj, reg):
    control.queue_experiment(reg, proj, "tiny")
    rows = {r["experiment"]: r for r in control.experiment_summary(proj)}
    assert rows["grid"]["grid"] == 2 and rows["grid"]["seeds"] == 3
    assert rows["tiny"]["runs"] == {"queued": 1} and rows["tiny"]["tags"] == ["smoke", "tirg"]
    assert rows["tiny"]["description"] == "a tiny TIRG"
    assert rows["grid"]["description"] == "(extends tiny)"  # never the parent's own text as its own
    res = dwc(proj, "experiments", "--format", "json")
    assert res.returncode == 0
    assert {r["experiment"] for r in json.loads(res.stdout)} == {"tiny", "grid"}


def test_tags_must_be_strings(tmp_path):
    (tmp_path / "experiments.yaml").write_text(EXPERIMENTS.replace("tags: [smoke, tirg]", "tags: {a: 1}"))
    res = dwc(tmp_path, "queue", "tiny")
    assert res.returncode == 2 and "experiments.yaml:4" in res.stderr and "tags" in res.stderr


def test_log_tail(proj, reg):
    (a,) = control.queue_experiment(reg, proj, "tiny")
    (Path(a["run_dir"]) / "train.log").write_text("".join(f"line {i}\n" for i in range(100)))
    assert control.log_tail(reg.get(a["id"]), 3) == ["line 97", "line 98", "line 99"]
    res = dwc(proj, "logs", str(a["id"]), "-n", "2")
    assert res.stdout.splitlines() == ["line 98", "line 99"]


def test_follow_log_yields_new_lines_until_the_run_ends(proj, reg):
    (a,) = control.queue_experiment(reg, proj, "tiny")
    log = Path(a["run_dir"]) / "train.log"
    log.write_text("first\n")
    follower = start(proj, "logs", str(a["id"]), "-f")
    try:
        time.sleep(2.0)
        with open(log, "a") as fh:
            fh.write("second\nthird\n")
        time.sleep(1.0)
        assert follower.poll() is None  # still following: the run has not ended
        reg.set_status(a["id"], "done", "done")
        out, _ = follower.communicate(timeout=20)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0
    assert out.splitlines() == ["first", "second", "third"]


# ------------------------------------------------------------------------------------------ workers and locks
def test_second_worker_on_a_held_gpu_exits_2_naming_the_holder(proj):
    env = {"DWC_FAKE_GPUS": "3"}
    first = start(proj, "worker", "--gpus", "0,1", env=env, merge_stderr=True)
    try:
        (w,) = wait_for(lambda: control.live_workers(proj), timeout=30, what="the worker to register")
        assert w["pid"] == first.pid and w["gpus"] == ["0", "1"]
        res = dwc(proj, "worker", "--gpus", "1,2", env=env)
        assert res.returncode == 2
        assert "GPU 1" in res.stderr and f"pid {first.pid}" in res.stderr
        res = dwc(proj, "worker", "--gpus", "5", env=env)
        assert res.returncode == 2 and "does not show" in res.stderr
        res = dwc(proj, "gpus", env=env)
        assert res.returncode == 0 and f"{os.uname().nodename}-{first.pid}" in res.stdout
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert control.live_workers(proj) == []
    assert not list((proj / "runs" / "workers").glob("*.json"))


def test_workers_marks_dead_ones_and_removes_their_files(proj):
    folder = proj / "runs" / "workers"
    folder.mkdir(parents=True)
    dead = {
        "name": "ghost-1",
        "host": os.uname().nodename,
        "pid": 999999,
        "gpus": ["0"],
        "started": time.time(),
    }
    (folder / "ghost-1.json").write_text(json.dumps(dead))
    res = dwc(proj, "workers", "--format", "json")
    assert res.returncode == 0
    (row,) = json.loads(res.stdout)
    assert row["state"].startswith("dead") and row["pid"] == 999999
    assert not (folder / "ghost-1.json").exists()


def test_detached_worker_writes_its_files_and_stops_on_sigterm(proj):
    res = dwc(proj, "worker", "--cpu", "--detach")
    assert res.returncode == 0, res.stderr
    pid = int(res.stdout.strip())
    name = f"{os.uname().nodename}-{pid}"
    folder = proj / "runs" / "workers"
    try:
        info = json.loads((folder / f"{name}.json").read_text())
        assert info["pid"] == pid and info["log"].endswith(f"{name}.log")
        assert [w["pid"] for w in control.live_workers(proj)] == [pid]
        assert "started on 1 CPU slot" in (folder / f"{name}.log").read_text()
        assert os.getsid(pid) not in (os.getsid(0), pid)  # a new session it does not lead (double fork)
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 20
    while (folder / f"{name}.json").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert not (folder / f"{name}.json").exists()
    assert "stopped" in (folder / f"{name}.log").read_text()


# ------------------------------------------------------------------------------------- concurrent metric writers
def _writer(path: str, run_id: int, seconds: float, out) -> None:
    reg = Registry(path)
    n, errors = 0, []
    step = 0
    t_end = time.time() + seconds
    while time.time() < t_end:
        rows = [{"step": step + i, "split": "train", "name": "loss", "value": 1.0} for i in range(20)]
        try:
            reg.log_metrics(run_id, rows)
            reg.heartbeat(run_id, step=step)
            n += len(rows)
        except Exception as exc:  # noqa: BLE001 — the test reports it
            errors.append(repr(exc))
        step += 20
    out.put((run_id, n, errors))


def test_eight_concurrent_metric_writers_never_see_database_is_locked(proj, reg):
    rows = control.queue_experiment(reg, proj, "grid") + control.queue_experiment(
        reg, proj, "tiny", seeds=[1, 2]
    )
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(reg.path), r["id"], 2.0, out)) for r in rows[:8]]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert all(not errors for _, _, errors in results), results
    for run_id, n, _ in results:
        assert n > 0 and len(reg.metrics(run_id)) == n


def test_run_queue_says_no_worker_will_take_it_and_run_without_name_lists(proj):
    res = dwc(proj, "run", "tiny", "--queue")
    assert res.returncode == 0 and "no worker is running" in res.stderr and "dwc worker" in res.stderr
    res = dwc(proj, "run")
    assert res.returncode == 0 and "tiny" in res.stdout and "grid" in res.stdout and "queued 1" in res.stdout


@pytest.mark.parametrize(
    "args, says",
    [
        (["--cpu", "--gpus", "0"], "exclude each other"),
        (["--slots", "2"], "needs --cpu"),
        (["--cpu", "--slots-per-gpu", "2"], "with --cpu use --slots"),
        (["--cpu", "--slots", "0"], "at least 1"),
    ],
)
def test_worker_bad_options_are_usage_errors(proj, args, says):
    res = dwc(proj, "worker", *args)
    assert res.returncode == 2 and says in res.stderr and "Traceback" not in res.stderr


def test_purge_removes_temp_files_of_killed_writes_but_never_a_live_writers(proj, reg):
    a, b, c = control.queue_experiment(reg, proj, "tiny", seeds=[1, 2, 3])
    reg.set_status(a["id"], "failed", "killed during a checkpoint write")
    reg.set_status(c["id"], "running", "trains")
    dead = 2**22 + 17  # above pid_max: no such process
    orphan = Path(a["run_dir"]) / f".last.pt.tmp{dead}"
    orphan.write_bytes(b"x" * 50_000)
    old_style = Path(a["run_dir"]) / f".best.pt.tmp{dead}-abcd1234"
    old_style.write_bytes(b"y" * 10)
    live = Path(b["run_dir"]) / f".metrics.jsonl.tmp{os.getpid()}-0000aaaa"  # a writer alive right now
    live.write_bytes(b"z")
    running = Path(c["run_dir"]) / f".last.pt.tmp{dead}"  # a running run's directory is never touched
    running.write_bytes(b"w")
    assert {(t.run_id, t.path) for t in control.orphan_temps(reg)} == {
        (a["id"], orphan),
        (a["id"], old_style),
    }
    res = dwc(proj, "purge")
    assert res.returncode == 2 and "2 temp file(s)" in res.stderr and orphan.exists()
    res = dwc(proj, "purge", "--yes")
    assert res.returncode == 0 and "purged 0 run(s) and 2 temp file(s)" in res.stderr, res.stderr
    assert not orphan.exists() and not old_style.exists() and live.exists() and running.exists()
    assert (Path(a["run_dir"])).is_dir()  # the run itself stays


def test_multi_node_runs_are_for_slurm_only(proj, reg):
    """trainer.nodes > 1: a local worker never claims it (a Slurm worker would); `dwc run` refuses it, exit 2."""
    (multi,) = control.queue_experiment(reg, proj, "tiny", overrides=["trainer.nodes=2"])
    (single,) = control.queue_experiment(reg, proj, "tiny", seeds=[5])
    w = Worker(proj, cpu=True, cpu_slots=2)
    w.registry = reg
    assert [c[0] for c in w._candidates()] == [single["id"]]
    assert reg.get(multi["id"])["status"] == "queued"
    res = dwc(proj, "run", "tiny", "--set", "trainer.nodes=2")
    assert res.returncode == 2 and "trainer.nodes = 2" in res.stderr and "dwc worker --slurm" in res.stderr
    assert len(reg.runs()) == 2  # nothing created


def test_gpus_without_a_gpu_says_so_in_one_line(proj):
    res = dwc(proj, "gpus", env={"DWC_FAKE_GPUS": "", "CUDA_VISIBLE_DEVICES": "", "COLUMNS": "60"})
    assert res.returncode == 0 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("no GPU: "), res.stderr


# ------------------------------------------------------------------- show / logs / cancel see a dead process
def _dead_pid() -> int:
    """The pid of a process that has exited (and been waited for): nothing runs under it now."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def _running_here(reg, run_id: int, pid: int) -> None:
    import socket

    reg.set_status(run_id, "running", "running", pid=pid, pgid=pid, host=socket.gethostname())


def test_show_logs_and_cancel_see_a_run_whose_process_died_unrecorded(proj, reg):
    """Trainer and worker both killed: the row still says running. `dwc show`, `dwc logs` and `dwc cancel`
    reconcile it as `dwc runs` does, and `dwc logs -f` ends instead of following a dead run forever."""
    a, b, c = control.queue_experiment(reg, proj, "tiny", seeds=[1, 2, 3])
    dead = _dead_pid()
    _running_here(reg, a["id"], dead)
    res = dwc(proj, "show", str(a["id"]))
    assert res.returncode == 0, res.stderr
    assert "status lost" in " ".join(res.stdout.split())
    assert reg.get(a["id"])["status"] == "lost" and f"process {dead}" in reg.get(a["id"])["error"]

    _running_here(reg, b["id"], dead)
    (Path(b["run_dir"]) / "train.log").write_text("epoch 1 step 2 loss 0.9\n")
    t0 = time.time()
    res = dwc(proj, "logs", str(b["id"]), "-f", timeout=60)
    assert res.returncode == 0, res.stderr
    assert time.time() - t0 < 30
    assert res.stdout.splitlines() == ["epoch 1 step 2 loss 0.9"]
    said = " ".join(res.stderr.split())
    assert f"run {b['id']} is lost: process {dead}" in said and f"dwc resume {b['id']}" in said
    assert reg.get(b["id"])["status"] == "lost"

    _running_here(reg, c["id"], dead)
    res = dwc(proj, "cancel", str(c["id"]))
    assert res.returncode == 2 and "already lost" in res.stderr, res.stderr
    assert reg.get(c["id"])["status"] == "lost"  # what happened to it, not "cancelled"


def test_logs_follow_ends_when_the_followed_trainer_dies_meanwhile(proj, reg):
    """The process dies while `dwc logs -f` follows it: the follower reconciles every few seconds and ends,
    saying the run is lost."""
    (a,) = control.queue_experiment(reg, proj, "tiny")
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _running_here(reg, a["id"], trainer.pid)
        log = Path(a["run_dir"]) / "train.log"
        log.write_text("first\n")
        follower = start(proj, "logs", str(a["id"]), "-f")
        time.sleep(2.0)
        with open(log, "a") as fh:
            fh.write("second\n")
        time.sleep(1.0)
        assert follower.poll() is None  # the process is alive: still following
        assert reg.get(a["id"])["status"] == "running"
        trainer.kill()
        trainer.wait()
        t0 = time.time()
        try:
            out, errs = follower.communicate(timeout=30)
        finally:
            if follower.poll() is None:
                follower.kill()
        assert time.time() - t0 < 15  # a reconcile every 3 s, a second to linger
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert follower.returncode == 0, errs
    assert out.splitlines() == ["first", "second"]
    assert f"run {a['id']} is lost" in " ".join(errs.split())
    assert reg.get(a["id"])["status"] == "lost"


def test_show_and_logs_leave_a_read_only_registry_as_it_is(proj, reg, monkeypatch):
    from dwc_tui.cli.app import State

    monkeypatch.setattr(State, "readonly_noted", False)  # the note is printed once per process
    (a,) = control.queue_experiment(reg, proj, "tiny")
    _running_here(reg, a["id"], _dead_pid())
    (Path(a["run_dir"]) / "train.log").write_text("a line\n")
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode, **kw: mode != os.W_OK and real_access(path, mode, **kw)
    )
    res = invoke(proj, "show", str(a["id"]))
    assert res.exit_code == 0, res.output
    assert "read-only" in res.output and "status running" in " ".join(res.output.split())
    res = invoke(proj, "logs", str(a["id"]))
    assert res.exit_code == 0 and "a line" in res.output, res.output
    assert reg.get(a["id"])["status"] == "running"  # nothing was written
    monkeypatch.undo()
    assert invoke(proj, "show", str(a["id"])).exit_code == 0
    assert reg.get(a["id"])["status"] == "lost"  # writable again: reconciled


# --------------------------------------------------------------------------------- workers on real tiny runs
def _worker_proc(project: Path, *args: str) -> subprocess.Popen:
    return start(project, "worker", *args, merge_stderr=True)


@pytest.mark.slow
def test_worker_max_runs_starts_n_runs_then_exits(proj, reg):
    a, b, c = control.queue_experiment(reg, proj, "tiny", seeds=[1, 2, 3])
    w = _worker_proc(proj, "--cpu", "--max-runs", "2")  # no --once: --max-runs alone ends it
    out = finish(w, what="the worker", timeout=400)
    assert w.returncode == 0, out
    rows = {r["id"]: r for r in reg.runs()}
    assert [rows[r["id"]]["status"] for r in (a, b, c)] == ["done", "done", "queued"], out
    assert rows[a["id"]]["worker"] == rows[b["id"]]["worker"] and rows[c["id"]]["worker"] is None
    assert out.count("started on CPU") == 2 and "stopped" in out
    assert control.live_workers(proj) == []  # its files are gone


# a process that holds a run's lock as its trainer would, and lives on
STAND_IN_TRAINER = """\
import sys, time
from dwc_core.runs.locks import run_lock
lock = run_lock(sys.argv[1], int(sys.argv[2])).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_sigint_to_a_worker_stops_it_and_leaves_its_run_training(proj, reg):
    """Ctrl-C in the worker's terminal is SIGTERM's twin: the worker stops claiming and exits 0, the run it
    follows (here a stand-in trainer holding the run lock, adopted from a dead worker) goes on, still running."""
    a, b = control.queue_experiment(reg, proj, "tiny", seeds=[1, 2])
    argv = [sys.executable, "-c", STAND_IN_TRAINER, a["run_dir"], str(a["id"])]
    trainer = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    w = None
    try:
        assert trainer.stdout.readline().strip() == "locked"
        _running_here(reg, a["id"], trainer.pid)
        reg.update(a["id"], heartbeat=time.time(), worker="gone-1")  # its worker died
        control.set_hold(reg, [b["id"]], True)  # nothing else for it to take meanwhile
        w = _worker_proc(proj, "--cpu")
        wait_for(
            lambda: any(e["kind"] == "adopted" for e in reg.events(a["id"])), timeout=60, what="adoption"
        )
        w.send_signal(signal.SIGINT)
        out = finish(w, what="the worker", timeout=30)
        assert w.returncode == 0, out
        assert "SIGINT: stop claiming" in out and f"runs [{a['id']}] go on" in out, out
        assert "Traceback" not in out and "KeyboardInterrupt" not in out
        assert trainer.poll() is None  # the run's process lives on
        assert reg.get(a["id"])["status"] == "running"
        control.set_hold(reg, [b["id"]], False)
        time.sleep(1.0)
        assert reg.get(b["id"])["status"] == "queued"  # the stopped worker took nothing more
        assert control.live_workers(proj) == []
    finally:
        if w is not None and w.poll() is None:
            w.kill()
        trainer.kill()
        trainer.wait()


@pytest.mark.slow
def test_foreground_run_says_a_worker_is_running_and_offers_queue(proj, reg):
    w = _worker_proc(proj, "--cpu")
    try:
        (live,) = wait_for(lambda: control.live_workers(proj), timeout=30, what="the worker to register")
        res = dwc(proj, "run", "tiny", timeout=400)
        assert res.returncode == 0, res.stderr
        said = " ".join(res.stderr.split())
        assert f"note: a worker is running ({live['name']})" in said
        assert "trains here in the foreground anyway" in said and "`dwc run tiny --queue`" in said
        (row,) = reg.runs()
        assert row["status"] == "done" and row["worker"].startswith("cli:")  # trained here, not by the worker
    finally:
        w.send_signal(signal.SIGTERM)
        out = finish(w, what="the worker", timeout=60)
    assert w.returncode == 0, out
    assert "started on CPU" not in out  # the worker never took the foreground run


# ---------------------------------------------------------------------------------- dwc gpus through NVML
# A stand-in for nvidia-ml-py: the few NVML calls runs/gpus.py makes, answering for two fixed devices.
FAKE_PYNVML = """\
from types import SimpleNamespace

NVML_TEMPERATURE_GPU = 0
_DEVICES = [
    {"name": b"Fake GPU A", "used": 1024 * 2**20, "total": 16384 * 2**20, "util": 7, "temp": 40},
    {"name": "Fake GPU B", "used": 12288 * 2**20, "total": 81920 * 2**20, "util": 93, "temp": 71},
]
_open = False


def nvmlInit():
    global _open
    _open = True


def nvmlShutdown():
    global _open
    _open = False


def nvmlDeviceGetCount():
    assert _open, "nvmlInit first"
    return len(_DEVICES)


def nvmlDeviceGetHandleByIndex(i):
    return _DEVICES[i]


def nvmlDeviceGetName(h):
    return h["name"]


def nvmlDeviceGetMemoryInfo(h):
    return SimpleNamespace(used=h["used"], total=h["total"], free=h["total"] - h["used"])


def nvmlDeviceGetUtilizationRates(h):
    return SimpleNamespace(gpu=h["util"], memory=0)


def nvmlDeviceGetTemperature(h, sensor):
    return h["temp"]
"""


def test_gpus_shows_nvml_memory_and_utilisation_and_the_run_holding_each_gpu(proj, reg, tmp_path):
    """`dwc gpus` with NVML (a fake pynvml ahead of the real one on the path): one row per device with its memory
    and utilisation; GPU 1, whose lock a worker holds, names that worker and the run it trains there; GPU 0 no
    one (a finished run that once used it is not a holder)."""
    import socket

    from dwc_core.runs.locks import FileLock

    fake = tmp_path / "fake_nvml"
    fake.mkdir()
    (fake / "pynvml.py").write_text(FAKE_PYNVML)
    env = {"PYTHONPATH": os.pathsep.join([str(fake), *filter(None, [os.environ.get("PYTHONPATH")])])}
    holder = f"{socket.gethostname()}-424242"
    training, finished, elsewhere, in_slurm = control.queue_experiment(reg, proj, "tiny", seeds=[1, 2, 3, 4])
    reg.set_status(training["id"], "running", "running", pid=os.getpid(), host=socket.gethostname())
    reg.update(training["id"], gpus="1", worker=holder, heartbeat=time.time())
    reg.set_status(finished["id"], "done", "done")
    reg.update(finished["id"], gpus="0")
    # GPU 0 of another machine sharing the registry, and a Slurm job on a compute node's GPU 0: not this GPU 0
    reg.set_status(elsewhere["id"], "running", "running", pid=1, host="another-host")
    reg.update(elsewhere["id"], gpus="0", heartbeat=time.time())
    reg.set_status(in_slurm["id"], "running", "running", host=socket.gethostname())
    reg.update(in_slurm["id"], gpus="0", slurm_job="77", heartbeat=time.time())
    folder = proj / "runs" / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / "gpu-1.lock", what=f"worker {holder}").acquire()
    try:
        res = dwc(proj, "gpus", "--format", "json", env=env)
        assert res.returncode == 0, res.stderr
        rows = {r["gpu"]: r for r in json.loads(res.stdout)}
        assert rows == {
            "0": {"gpu": "0", "name": "Fake GPU A", "memory": "1024/16384 MiB", "util %": 7, "worker": None,
                  "runs": None},
            "1": {"gpu": "1", "name": "Fake GPU B", "memory": "12288/81920 MiB", "util %": 93, "worker": holder,
                  "runs": str(training["id"])},
        }  # fmt: skip
        assert res.stderr == ""  # NVML answered: no note
        res = dwc(proj, "gpus", env={**env, "COLUMNS": "200"})
        assert res.returncode == 0, res.stderr
        lines = {
            line.split()[0]: line for line in res.stdout.splitlines() if line.split()[:1] in (["0"], ["1"])
        }
        assert "1024/16384 MiB" in lines["0"] and " 7 " in f"{lines['0']} " and holder not in lines["0"]
        assert "12288/81920 MiB" in lines["1"] and " 93 " in lines["1"] and holder in lines["1"]
        assert lines["1"].rstrip().endswith(str(training["id"]))  # the runs column, last
    finally:
        lock.release()
    res = dwc(proj, "gpus", "--format", "json", env=env)  # the lock released: GPU 1 has no worker now
    assert res.returncode == 0 and json.loads(res.stdout)[1]["worker"] is None, res.stderr


@pytest.mark.parametrize(
    "args", [["--help"], ["runs"], ["workers"], ["worker", "--help"], ["queue", "--help"], ["gpus", "--help"]]
)
def test_only_dwc_gpus_imports_pynvml(proj, reg, args):
    """nvidia-ml-py is imported by `dwc gpus` alone, not by the listings beside it (a registry with a run in it, so
    `dwc runs` reconciles and lists); pynvml is in helpers.HEAVY, so every import-hygiene check covers it too."""
    (row,) = control.queue_experiment(reg, proj, "tiny")
    reg.set_status(row["id"], "running", "running", pid=os.getpid(), host=os.uname().nodename)
    assert "pynvml" in HEAVY
    assert heavy_modules_after(args, proj) == []
