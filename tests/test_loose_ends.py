"""Loose ends of the queue, reporting and CLI: GPU requests checked where runs are queued and claimed, held runs
never claimed by any path, and what a new user meets at the command line (unknown ids, empty projects, pipes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import dwc, write_project

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


@pytest.fixture
def reg(proj: Path) -> Registry:
    r = Registry(proj / "runs" / "registry.db")
    yield r
    r.close()


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
