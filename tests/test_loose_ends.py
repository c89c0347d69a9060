"""Loose ends of the queue, reporting and CLI: GPU requests checked where runs are queued and claimed, held runs
never claimed by any path, and what a new user meets at the command line (unknown ids, empty projects, pipes)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import dwc, dwc_argv, read_to_end, write_project

from dwc_core.runs import control
from dwc_core.runs.registry import Registry
from dwc_core.runs.worker import Worker

EXPERIMENTS = """\
experiments:
  tiny:
    description: a tiny TIRG
    dataset: {name: synthetic, num_train: 64, num_test: 16, image_size: 32}
    model: {name: tirg, embed_dim: 32, cnn: {arch: tiny}, text: {word_dim: 16, hidden: 32}}
    trainer: {epochs: 1, batch_size: 16, max_steps_per_epoch: 2, num_workers: 0}
    eval: {ks: [1, 5, 10]}
  wide:
    extends: tiny
    trainer: {gpus: 4, device: cuda}
"""


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    return write_project(tmp_path, EXPERIMENTS)


# ------------------------------------------------------------------------------------------- GPU requests
def test_queue_warns_when_this_machine_cannot_meet_trainer_gpus(proj):
    res = dwc(proj, "queue", "wide", env={"DWC_FAKE_GPUS": "2"})
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stderr.split())
    assert "warning:" in text and "trainer.gpus = 4" in text and "shows 2 GPU(s)" in text
    assert "Queued anyway" in text and res.stdout.strip() == "1"
    assert "warning:" not in dwc(proj, "queue", "tiny", env={"DWC_FAKE_GPUS": "2"}).stderr


def test_local_worker_fails_a_run_that_can_never_fit_its_gpus(proj, reg, monkeypatch):
    monkeypatch.setenv("DWC_FAKE_GPUS", "2")
    (wide,) = control.queue_experiment(reg, proj, "wide")
    (tiny,) = control.queue_experiment(reg, proj, "tiny")
    w = Worker(proj, gpus=["0", "1"])
    w.registry = reg
    cands = w._candidates()
    assert [c[0] for c in cands] == [tiny["id"]]  # the one-GPU run is still scheduled
    row = reg.get(wide["id"])
    assert row["status"] == "failed" and row["exit_code"] == 2
    assert "trainer.gpus = 4" in row["error"] and "shows 2 GPU(s)" in row["error"]
    assert "no live worker has 4" in row["error"]
    assert w._candidates() == cands  # failed once, not again


def test_worker_leaves_an_oversized_run_to_a_live_worker_that_can_take_it(proj, reg, monkeypatch):
    monkeypatch.setenv("DWC_FAKE_GPUS", "2")
    (wide,) = control.queue_experiment(reg, proj, "wide")
    monkeypatch.setattr(
        control, "live_workers", lambda project: [{"name": "big-1", "host": "big", "gpus": list("0123")}]
    )
    w = Worker(proj, gpus=["0", "1"])
    w.registry = reg
    assert w._candidates() == [(wide["id"], 4)]
    assert w._candidates(fitting_only=True) == []
    assert reg.get(wide["id"])["status"] == "queued"


def test_worker_leaves_an_oversized_run_that_fits_the_machine_for_another_worker(proj, reg, monkeypatch):
    monkeypatch.setenv("DWC_FAKE_GPUS", "4")
    (wide,) = control.queue_experiment(reg, proj, "wide")
    w = Worker(proj, gpus=["0", "1"])
    w.registry = reg
    w._candidates()
    assert reg.get(wide["id"])["status"] == "queued"


# ----------------------------------------------------------------------------------------------- held runs
def test_no_claim_path_takes_a_held_run(proj, reg, monkeypatch):
    monkeypatch.setenv("DWC_FAKE_GPUS", "1")
    held, free = control.queue_experiment(reg, proj, "tiny", seeds=[1, 2])
    control.set_hold(reg, [held["id"]], True)
    # Registry.claim (the Slurm worker's path): next pick and a given id
    assert reg.claim("slurm-w", run_id=held["id"]) is None
    assert reg.claim("slurm-w")["id"] == free["id"]
    assert reg.claim("slurm-w") is None
    assert reg.get(held["id"])["status"] == "queued"
    # the local worker
    w = Worker(proj, cpu=True)
    w.registry = reg
    assert w._candidates() == [] and w.claim(held["id"]) is None
    # the foreground `dwc run` holds its own runs while they wait, and says so
    assert reg.claim("cli:1", run_id=held["id"], held_ok=True)["status"] == "starting"


def test_slurm_worker_skips_held_runs(proj, reg):
    from dwc_core.runs.slurm import SlurmWorker

    (row,) = control.queue_experiment(reg, proj, "tiny", hold=True)
    sw = SlurmWorker.__new__(SlurmWorker)
    sw.registry = reg
    assert sw._claimable() is False
    control.set_hold(reg, [row["id"]], False)
    assert sw._claimable() is True


# ------------------------------------------------------------------------------------------------- dwc show
def test_show_reads_everything_before_printing(proj, reg, monkeypatch):
    import sqlite3

    from helpers import invoke

    (row,) = control.queue_experiment(reg, proj, "tiny")

    def broken(self, *a, **k):
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(Registry, "metrics", broken)
    res = invoke(proj, "show", str(row["id"]))
    assert res.exit_code == 3, res.output
    assert res.output.startswith("error:") and "is damaged" in res.output
    assert "╭" not in res.output and "tiny #" not in res.output  # no panel printed before the failure


def test_show_says_why_no_commit_was_recorded(proj, reg):
    from helpers import invoke

    queued, ran = control.queue_experiment(reg, proj, "tiny", seeds=[1, 2])
    reg.update(ran["id"], versions={"python": "3.11", "torch": "2"}, git_commit=None)
    text = " ".join(invoke(proj, "show", str(ran["id"])).output.split())
    assert "git not a git repository" in text and "git –" not in text
    text = " ".join(invoke(proj, "show", str(queued["id"])).output.split())
    assert "not recorded yet" in text
    reg.update(ran["id"], git_commit="abc123", git_dirty=1)
    assert "git abc123 (dirty)" in " ".join(invoke(proj, "show", str(ran["id"])).output.split())


# ------------------------------------------------------------------------------------ a new user's first steps
def test_empty_project_names_no_run_and_creates_nothing(proj):
    for args in (
        ["show", "1"],
        ["browse", "1"],
        ["logs", "1"],
        ["cancel", "1"],
        ["hold", "1"],
        ["eval", "1"],
    ):
        res = dwc(proj, *args)
        assert res.returncode == 2, (args, res.stderr)
        assert "no run has been queued in this project yet" in res.stderr and "Traceback" not in res.stderr
    for args in (["compare"], ["purge"], ["queue", "--failed", "tiny"]):
        res = dwc(proj, *args)
        assert res.returncode == 0 and "Traceback" not in res.stderr, (args, res.stderr)
    res = dwc(proj, "queue", "nope")
    assert res.returncode == 2 and "no experiment named 'nope'" in res.stderr
    assert not (proj / "runs").exists()  # an unknown name, a lookup: nothing was created


def test_commands_outside_a_project_refuse_and_create_nothing(tmp_path):
    for args in (["worker", "--cpu", "--once"], ["workers"], ["tui"], ["show", "1"], ["queue", "tiny"]):
        res = dwc(tmp_path, *args, timeout=60)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert "not a dwc project" in res.stderr and "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["runs"], ["runs", "--format", "json"], ["show", "1"], ["--help"]])
def test_a_reader_that_stops_early_is_no_error(proj, reg, args):
    control.queue_experiment(reg, proj, "tiny", seeds=list(range(1, 201)), hold=True)
    p = subprocess.Popen(dwc_argv(proj, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(10)  # `| head -c 10`
    p.stdout.close()
    stderr = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def _answer_prompt(project: Path, args: list[str], keys: bytes) -> tuple[int, str]:
    import os
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: the dwc command on a terminal
        os.execv(sys.executable, dwc_argv(project, *args))
    out, deadline = b"", time.time() + 60
    while b"[y/N]" not in out and time.time() < deadline:
        if select.select([fd], [], [], 1)[0]:
            out += os.read(fd, 4096)
    os.write(fd, keys)
    out += read_to_end(fd, deadline)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_ctrl_c_at_a_prompt_is_an_interruption_and_ctrl_d_a_no(proj, reg):
    (row,) = control.queue_experiment(reg, proj, "tiny")
    control.remove(reg, [row["id"]])
    code, text = _answer_prompt(proj, ["purge"], b"\x03")
    assert code == 130 and "interrupted" in text and "Traceback" not in text and "Aborted" not in text
    code, text = _answer_prompt(proj, ["purge"], b"\x04")
    assert code == 0 and "nothing was deleted" in text
    assert reg.get(row["id"])["deleted"] == 1  # still there, soft-deleted


def test_queue_asks_before_repeating_a_finished_run_on_a_terminal(proj, reg):
    (done,) = control.queue_experiment(reg, proj, "tiny")
    reg.set_status(done["id"], "done", "done")

    def answer(keys: bytes) -> tuple[int, str]:
        code, text = _answer_prompt(proj, ["queue", "tiny"], keys)
        return code, " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())  # a terminal: without its colours

    code, said = answer(b"n\n")
    asked = f"identical runs already finished ({done['id']}); queue them again? [y/N]"
    assert code == 0 and asked in said, said
    assert "nothing was queued" in said and "Traceback" not in said
    assert [r["id"] for r in reg.runs()] == [done["id"]]  # no: nothing changed
    code, said = answer(b"y\n")
    assert code == 0 and "queued run 2 (tiny)" in said and "nothing was queued" not in said, said
    rows = reg.runs()
    assert [(r["id"], r["status"]) for r in rows] == [(done["id"], "done"), (2, "queued")]
    assert rows[1]["config"] == reg.get(done["id"])["config"]  # the same run again, as asked


def test_small_verbs_say_what_they_did(proj, reg):
    a, b = control.queue_experiment(reg, proj, "tiny", seeds=[1, 2])
    res = dwc(proj, "cancel", str(a["id"]), "--grace", "-1")
    assert res.returncode == 2 and "--grace -1" in res.stderr and reg.get(a["id"])["status"] == "queued"
    dwc(proj, "cancel", str(a["id"]))
    res = dwc(proj, "resume", str(a["id"]))
    assert (
        res.returncode == 0 and "no last.pt yet" in res.stderr and "continues from last.pt" not in res.stderr
    )
    control.remove(reg, [b["id"]])
    res = dwc(proj, "restore", str(a["id"]), str(b["id"]))
    assert res.returncode == 0
    assert f"restored {b['id']}" in res.stderr and f"nothing to restore: {a['id']}" in res.stderr
    assert [e["kind"] for e in reg.events(a["id"])].count("restored") == 0
    res = dwc(proj, "experiments", "--format", "csv")
    lines = res.stdout.splitlines()
    assert lines[0] == "experiment,description,tags,grid,seeds,runs"
    # rm took the queued run b out of the queue; restore put it back (a, resumed, is queued as well)
    assert lines[1].startswith("tiny,") and lines[1].endswith(",1,1,queued 2")


def test_data_check_of_the_synthetic_set_refuses_a_root(proj):
    res = dwc(proj, "data", "check", "synthetic", "--root", "/nonexistent")
    assert res.returncode == 2 and "--root /nonexistent" in res.stderr and "generated" in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
