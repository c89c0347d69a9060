"""Workers training tiny runs end to end on CPU slots: claims exactly once under two workers, trainer.gpus: 2 on a
fake 3-GPU worker, killed trainers and workers, cancel, adoption, resume without duplicated steps, a missing
dataset root."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import dwc, finish, loss_steps, start, tiny_experiments, wait_for, write_project

from dwc_core.runs import control, launcher
from dwc_core.runs.registry import Registry

pytestmark = pytest.mark.slow

TINY = tiny_experiments(
    "epochs: 1, batch_size: 16, max_steps_per_epoch: 2, num_workers: 0, heartbeat_s: 0.5, device: cpu",
    data="num_train: 64, num_test: 16",
    more="""\
    eval: {ks: [1, 5, 10], query_results: false}
  many:
    extends: tiny
    seeds: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
  two-gpu:
    extends: tiny
    trainer: {gpus: 2}
  long:
    extends: tiny
    dataset: {num_train: 240}
    trainer: {epochs: 2, batch_size: 8, max_steps_per_epoch: null, log_every: 2}
  medium:
    extends: long
    dataset: {num_train: 120}
  missing-root:
    dataset: {name: shoes, root: /nonexistent/shoes-data}
    model: {name: tirg, embed_dim: 32, cnn: {arch: tiny}, text: {word_dim: 16, hidden: 32}}
""",
)


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    return write_project(tmp_path, TINY)


def worker(project: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return start(project, "worker", *args, env=env, merge_stderr=True)


def queue(project: Path, *args: str) -> list[int]:
    res = dwc(project, "queue", *args)
    assert res.returncode == 0, res.stderr
    return [int(x) for x in res.stdout.split()]


def test_two_workers_twelve_runs_each_claimed_exactly_once(proj):
    ids = queue(proj, "many")
    assert len(ids) == 12
    workers = [worker(proj, "--cpu", "--slots", "2", "--once") for _ in range(2)]
    outs = [finish(w, timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    reg = Registry(proj / "runs" / "registry.db")
    rows = reg.runs()
    assert [r["status"] for r in rows] == ["done"] * 12, [(r["id"], r["status"], r["error"]) for r in rows]
    for r in rows:
        starts = [e for e in reg.events(r["id"]) if e["kind"] == "starting"]
        assert len(starts) == 1, (r["id"], starts)  # claimed once
        log = (Path(r["run_dir"]) / "train.log").read_text()
        assert log.count(f"start run {r['id']} ===") == 1  # started once
        assert r["cpu_threads"] >= 1 and r["data_workers"] == 0
    by_worker = {r["worker"] for r in rows}
    assert len(by_worker) == 2  # both workers took runs
    assert sum(o.count("started on CPU") for o in outs) == 12


def test_two_gpu_run_on_a_fake_three_gpu_worker(proj):
    """trainer.gpus: 2 runs under torchrun with two distinct ids in CUDA_VISIBLE_DEVICES (processes on CPU:
    trainer.device: cpu), and a 1-GPU run takes the third GPU."""
    env = {"DWC_FAKE_GPUS": "3"}
    (big,) = queue(proj, "two-gpu")
    (small,) = queue(proj, "tiny")
    w = worker(proj, "--gpus", "0,1,2", "--once", env=env)
    out = finish(w, timeout=400)
    assert w.returncode == 0, out
    reg = Registry(proj / "runs" / "registry.db")
    b, s = reg.get(big), reg.get(small)
    assert b["status"] == "done" and s["status"] == "done", (b["error"], s["error"], out)
    big_gpus = str(b["gpus"]).split(",")
    assert len(big_gpus) == 2 and len(set(big_gpus)) == 2
    assert {*big_gpus, str(s["gpus"])} == {"0", "1", "2"}
    # the 1-GPU run did not wait for the 2-GPU one: both were claimed before either ended
    assert max(s["claimed"], b["claimed"]) < min(s["ended"], b["ended"])


def test_sigkill_trainer_fails_within_10s_and_cancel_running_run(proj):
    a, b = queue(proj, "long", "--seeds", "1,2")
    w = worker(proj, "--cpu", "--slots", "2")
    reg = Registry(proj / "runs" / "registry.db")
    try:
        for rid in (a, b):
            wait_for(lambda rid=rid: len(loss_steps(reg, rid)) >= 2, timeout=180, what=f"run {rid} training")
        os.kill(reg.get(a)["pid"], signal.SIGKILL)
        t0 = time.time()
        wait_for(lambda: reg.get(a)["status"] == "failed", timeout=10, what="failed after SIGKILL")
        assert time.time() - t0 < 10
        row = reg.get(a)
        assert "SIGKILL" in row["error"] and row["exit_code"] == -signal.SIGKILL
        assert "last lines of train.log" in row["error"] and "start run" in row["error"]  # the log's tail
        res = dwc(proj, "cancel", str(b), "--grace", "60")
        assert res.returncode == 0, res.stderr
        row = reg.get(b)
        assert row["status"] == "cancelled" and (Path(row["run_dir"]) / "last.pt").is_file()
        assert w.poll() is None  # the worker goes on
    finally:
        w.send_signal(signal.SIGTERM)
        out = finish(w, timeout=60)
    assert w.returncode == 0, out
    assert f"run {a} ended (SIGKILL): failed" in out


def test_sigkill_worker_run_finishes_and_is_adopted_then_lost_run_resumes(proj):
    reg = Registry(proj / "runs" / "registry.db")
    (a,) = queue(proj, "long")
    w1 = worker(proj, "--cpu")
    wait_for(lambda: len(loss_steps(reg, a)) >= 2, timeout=180, what="training")
    w1.kill()
    w1.communicate(timeout=30)
    trainer_pid = reg.get(a)["pid"]
    assert trainer_pid and os.path.exists(f"/proc/{trainer_pid}")  # the run outlives its worker
    # the next worker adopts the live run instead of marking it lost, and sees it end
    w2 = worker(proj, "--cpu", "--once")
    out = finish(w2, timeout=300)
    assert w2.returncode == 0, out
    row = reg.get(a)
    assert row["status"] == "done", (row["error"], out)
    assert any(e["kind"] == "adopted" for e in reg.events(a))
    steps = loss_steps(reg, a)
    assert steps == sorted(set(steps)) and max(steps) == 2 * (240 // 8)

    # worker and trainer both killed: the run is lost, then resumes from last.pt without duplicated steps
    (b,) = queue(proj, "medium")
    # slow steps (test-only delay): the run cannot finish between passing the first epoch and the SIGKILL
    w3 = worker(proj, "--cpu", env={"DWC_TEST_PHASE_DELAY": "step=0.5"})
    wait_for(lambda: reg.get(b)["epoch"] >= 1 and max(loss_steps(reg, b), default=0) > 120 // 8 + 2, timeout=240,
             what="past the first epoch")  # fmt: skip
    w3.kill()
    w3.communicate(timeout=30)
    os.kill(reg.get(b)["pid"], signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{reg.get(b)['pid']}"), timeout=10, what="trainer gone")
    res = dwc(proj, "runs", "--format", "json")
    assert res.returncode == 0
    assert reg.get(b)["status"] == "lost"
    res = dwc(proj, "resume", str(b))
    assert res.returncode == 0 and "no worker is running" in res.stderr
    w4 = worker(proj, "--cpu", "--once")
    out = finish(w4, timeout=300)
    row = reg.get(b)
    assert row["status"] == "done" and row["resumes"] == 1, (row["error"], out)
    steps = loss_steps(reg, b)
    assert steps == sorted(set(steps)) and max(steps) == 2 * (120 // 8)
    assert any(e["kind"] == "resume" for e in reg.events(b))


def test_missing_dataset_root_fails_fast_and_the_worker_goes_on(proj):
    (bad,) = queue(proj, "missing-root", "--priority", "1")
    (good,) = queue(proj, "tiny")
    t0 = time.time()
    w = worker(proj, "--cpu", "--once")
    out = finish(w, timeout=300)
    assert w.returncode == 0, out
    reg = Registry(proj / "runs" / "registry.db")
    b = reg.get(bad)
    assert (
        b["status"] == "failed" and "/nonexistent/shoes-data" in b["error"] and "does not exist" in b["error"]
    )
    assert b["ended"] - t0 < 10 and b["pid"] is None  # failed before any process started
    assert reg.get(good)["status"] == "done"


def test_hold_release_and_sigterm_leaves_the_run_training(proj):
    w = worker(proj, "--cpu")
    try:
        wait_for(lambda: control.live_workers(proj), timeout=30, what="worker up")
        res = dwc(proj, "queue", "long", "--hold")
        (rid,) = [int(x) for x in res.stdout.split()]
        assert "no worker" not in res.stderr
        time.sleep(2)
        reg = Registry(proj / "runs" / "registry.db")
        assert reg.get(rid)["status"] == "queued"  # held: the worker leaves it
        assert dwc(proj, "release", str(rid)).returncode == 0
        wait_for(lambda: len(loss_steps(reg, rid)) >= 1, timeout=120, what="released run training")
    finally:
        w.send_signal(signal.SIGTERM)  # stop claiming and exit; the run trains on in its own session
        out = finish(w, timeout=60)
    assert w.returncode == 0 and "go on" in out, out
    assert reg.get(rid)["status"] == "running"
    wait_for(lambda: reg.get(rid)["status"] == "done", timeout=180, what="run done without its worker")
    res = dwc(proj, "logs", str(rid), "-n", "200")
    assert f"start run {rid}" in res.stdout and "done" in res.stdout


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def test_two_slots_per_gpu_share_one_gpu_and_a_third_run_waits(proj):
    """--slots-per-gpu 2 on fake GPU 1: two 1-GPU runs train at once, both with CUDA_VISIBLE_DEVICES=1 in their
    environment; the third waits in the queue until one of them ends, then takes the freed slot on that GPU."""
    # two fake GPUs; slow steps (test-only delay), so that both runs are still training when looked at
    env = {"DWC_FAKE_GPUS": "2", "DWC_TEST_PHASE_DELAY": "step=1.0"}
    a, b, c = queue(proj, "tiny", "--seeds", "1,2,3")
    reg = Registry(proj / "runs" / "registry.db")
    w = worker(proj, "--gpus", "1", "--slots-per-gpu", "2", "--once", env=env)
    try:
        wait_for(lambda: all(reg.get(r)["pid"] for r in (a, b)), timeout=60, what="two runs started")
        seen = {r: _environ(reg.get(r)["pid"]).get("CUDA_VISIBLE_DEVICES") for r in (a, b)}
        assert seen == {a: "1", b: "1"}
        assert all(launcher.pid_alive(reg.get(r)["pid"]) for r in (a, b))  # both training, side by side
        assert reg.get(c)["status"] == "queued" and reg.get(c)["pid"] is None  # no third slot
    finally:
        out = finish(w, timeout=400)
    assert w.returncode == 0, out
    rows = {r: reg.get(r) for r in (a, b, c)}
    assert [rows[r]["status"] for r in (a, b, c)] == ["done"] * 3, [rows[r]["error"] for r in (a, b, c)]
    assert {str(rows[r]["gpus"]) for r in (a, b, c)} == {"1"}
    assert max(rows[a]["claimed"], rows[b]["claimed"]) < min(rows[a]["ended"], rows[b]["ended"])  # overlapped
    assert rows[c]["claimed"] >= min(rows[a]["ended"], rows[b]["ended"])  # waited for a free slot
    assert out.count("started on GPU 1,") == 3 and "GPUs 1 × 2" in out


def test_shell_metacharacters_in_names_paths_and_tags_never_reach_a_shell(tmp_path, monkeypatch):
    """The project folder, the experiment name (hence the run directory), its description and tags carry shell
    syntax; the worker starts the trainer with an argument list: the run trains, nothing named PWNED* appears,
    the trainer's argv is exactly the list train_command builds, and launcher.spawn hands Popen that list
    without shell=True and an environment free of the config's strings."""
    name = "x; touch PWNED1 `touch PWNED2` | touch PWNED3"
    project = tmp_path / "p; touch PWNED4 $(touch PWNED5) && touch PWNED6"
    project.mkdir()
    write_project(
        project,
        TINY.replace(
            "experiments:\n  tiny:\n",
            f'experiments:\n  "{name}":\n    description: "$(touch PWNED7)"\n    tags: ["a;touch PWNED8", "`touch PWNED9`"]\n',
        ).split("\n  many:")[0],
    )
    (rid,) = queue(project, name)
    reg = Registry(project / "runs" / "registry.db")
    w = worker(project, "--cpu", "--once", env={"DWC_TEST_PHASE_DELAY": "step=0.5"})
    try:
        pid = wait_for(lambda: reg.get(rid)["pid"], timeout=60, what="the trainer to start")
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    finally:
        out = finish(w, timeout=300)
    assert w.returncode == 0, out
    row = reg.get(rid)
    assert row["status"] == "done", (row["error"], out)
    expected = launcher.train_command(row, project / "runs" / "registry.db")
    assert isinstance(expected, list) and expected[-1] == str(project / "runs" / "registry.db")
    assert argv == expected
    assert Path(row["run_dir"]).parent == project / "runs" and name in Path(row["run_dir"]).name
    assert f"start run {rid} ===" in (Path(row["run_dir"]) / "train.log").read_text()
    # a shell would have run in the project folder (the trainer's cwd) or the worker's
    assert list(tmp_path.rglob("PWNED*")) == [] and list(Path.cwd().glob("PWNED*")) == []

    calls = []  # what spawn hands to Popen (a shell that execs its command would leave the same argv)

    def popen(args, **kwargs):
        calls.append((args, kwargs))
        return SimpleNamespace(pid=2**22 + 17)  # above pid_max: no such process

    with monkeypatch.context() as m:
        m.setattr(launcher.subprocess, "Popen", popen)
        launcher.spawn(
            reg, row, project / "runs" / "registry.db", gpus="", env_extra={"OMP_NUM_THREADS": "1"}
        )
    ((args, kwargs),) = calls
    assert args == expected and not kwargs.get("shell") and kwargs.get("executable") is None
    assert kwargs["cwd"] == str(project)
    assert not [k for k, v in kwargs["env"].items() if "PWNED" in v and os.environ.get(k) != v]


def test_trainer_exiting_with_a_code_fails_the_run_with_the_code_and_the_log_tail(proj, tmp_path):
    """A trainer that dies with exit code 3 before it can record anything (a broken torch install: a stand-in
    torch module on PYTHONPATH prints a line and exits 3 at import; the worker itself never imports torch): the
    worker marks the run failed with the code and train.log's last lines, and exits 0."""
    broken = tmp_path / "broken_torch"
    broken.mkdir()
    (broken / "torch.py").write_text(
        'print("stand-in torch: this installation is broken", flush=True)\nraise SystemExit(3)\n'
    )
    pythonpath = os.pathsep.join([str(broken), *filter(None, [os.environ.get("PYTHONPATH")])])
    (rid,) = queue(proj, "tiny")
    w = worker(proj, "--cpu", "--once", env={"PYTHONPATH": pythonpath})
    out = finish(w, timeout=120)
    assert w.returncode == 0, out
    row = Registry(proj / "runs" / "registry.db").get(rid)
    assert row["status"] == "failed" and row["exit_code"] == 3, (row["status"], row["error"], out)
    assert row["error"].startswith("training process exited with code 3 without finishing the run")
    tail = row["error"].split("last lines of train.log:\n", 1)[1].splitlines()
    assert tail[0].startswith("=== ") and f"start run {rid} ===" in tail[0]
    assert tail[-1] == "stand-in torch: this installation is broken"
    assert f"run {rid} ended (exit code 3): failed" in out
