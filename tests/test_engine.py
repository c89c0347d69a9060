"""The trainer and evaluator beyond the happy path: schedules, EMA, faults, reproducibility, model selection,
resume after SIGKILL, and re-evaluation under another protocol."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from helpers import dwc, start, tiny_experiments, wait_for, write_project

from dwc_core.engine.train import EMA, _oom_message, lr_lambda
from dwc_core.runs.registry import Registry

TINY = tiny_experiments()


def trainer_cfg(**kw) -> dict:
    base = {"epochs": 4, "warmup_steps": 0, "lr_decay_epochs": [], "schedule": "constant", "gamma": 0.1}
    return {**base, **kw}


def test_schedules():
    f = lr_lambda(trainer_cfg(), steps_per_epoch=10)
    assert [f(s) for s in (0, 15, 39)] == [1.0, 1.0, 1.0]
    f = lr_lambda(trainer_cfg(schedule="step", lr_decay_epochs=[2, 3]), steps_per_epoch=10)
    assert f(19) == 1.0 and math.isclose(f(20), 0.1) and math.isclose(f(30), 0.01)
    f = lr_lambda(trainer_cfg(schedule="cosine"), steps_per_epoch=10)
    assert f(0) == 1.0 and math.isclose(f(20), 0.5) and f(40) < 1e-9
    f = lr_lambda(trainer_cfg(warmup_steps=4), steps_per_epoch=10)
    assert [f(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_ema_average_and_swap():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update()  # 0.5·0 + 0.5·1
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update()  # 0.5·0.5 + 0.5·2
    assert math.isclose(ema.shadow[0].item(), 1.25)
    ema.swap_in()
    assert math.isclose(model.weight.item(), 1.25)
    ema.swap_out()
    assert model.weight.item() == 2.0


def test_ema_restart_keeps_the_average_as_live_weights():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(4.0)
    ema.update()  # shadow 2.0
    ema.swap_in()
    ema.keep()
    assert model.weight.item() == 2.0 and ema.shadow[0].item() == 2.0
    with torch.no_grad():
        model.weight.fill_(6.0)
    ema.update()  # restarted from 2.0: 0.5·2 + 0.5·6
    assert ema.shadow[0].item() == 4.0


def test_oom_message_names_batch_size():
    class T:
        tcfg = {"batch_size": 256}

    msg = _oom_message(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), T())
    assert "batch size 256" in msg and "Tried to allocate" in msg and "trainer.batch_size" in msg


# ------------------------------------------------------------------------------------------- subprocess runs
SHORT = ("--set", "trainer.max_steps_per_epoch=8")  # still two epochs (3 evaluations), 16 steps instead of 40


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    return write_project(tmp_path, TINY)


@pytest.mark.slow
def test_same_seed_same_numbers_and_seed_changes_them(proj):
    for seed in ("7", "7", "8"):
        res = dwc(proj, "run", "tiny", "--set", f"trainer.seed={seed}", *SHORT)
        assert res.returncode == 0, res.stderr
    reg = Registry(proj / "runs" / "registry.db")
    losses = [[m["value"] for m in reg.metrics(i, split="train", name="loss")] for i in (1, 2, 3)]
    evals = [[e["metrics"] for e in reg.evaluations(i)] for i in (1, 2, 3)]
    assert losses[0] == losses[1] and evals[0] == evals[1]
    assert losses[0] != losses[2]
    assert reg.get(1)["seed"] == 7 and reg.get(3)["config"]["trainer"]["seed"] == 8


@pytest.mark.slow
def test_non_finite_loss_fails_with_the_step(proj):
    res = dwc(proj, "run", "tiny", "--set", "trainer.lr=1e30", "--set", "trainer.nan_skip=1")
    assert res.returncode == 1
    row = Registry(proj / "runs" / "registry.db").get(1)
    assert row["status"] == "failed"
    assert (
        "non-finite loss" in row["error"]
        and "step" in row["error"]
        and "1 bad batches were skipped" in row["error"]
    )
    assert any(
        e["kind"] == "warning" and "non-finite" in e["message"]
        for e in Registry(proj / "runs" / "registry.db").events(1)
    )


@pytest.mark.slow
def test_val_split_selection_records_both_splits(proj):
    # 32 held-out queries on this tiny set: below the default minimum of 50, allowed explicitly
    res = dwc(
        proj,
        "run",
        "tiny",
        "--set",
        "trainer.select_on=val_split",
        "--set",
        "trainer.val_min_queries=30",
        *SHORT,
    )
    assert res.returncode == 0, res.stderr
    reg = Registry(proj / "runs" / "registry.db")
    evals = reg.evaluations(1)
    assert sorted({(e["epoch"], e["split"]) for e in evals}) == [
        (e, s) for e in (0, 1, 2) for s in ("test", "val")
    ]
    val = {e["epoch"]: e["metrics"]["mean"] for e in evals if e["split"] == "val" and e["epoch"] > 0}
    row = reg.get(1)
    assert row["best_metric"] == "val/mean" and row["best_epoch"] == max(val, key=val.get)
    assert row["last_metrics"]["epoch"] == 2  # the last epoch is always recorded as well


@pytest.mark.slow
def test_sigkill_then_resume_from_last_checkpoint(proj):
    text = TINY.replace("num_train: 320", "num_train: 960").replace(
        "epochs: 2", "epochs: 3"
    )  # 60 steps/epoch
    (proj / "experiments.yaml").write_text(text)
    proc = start(proj, "run", "tiny")
    db = proj / "runs" / "registry.db"

    def in_epoch_2() -> bool:  # epoch 1 is checkpointed and epoch 2 has reported some losses
        if not (db.exists() and (proj / "runs" / "1-tiny" / "last.pt").exists()):
            return False
        return any(m["epoch"] > 1.2 for m in Registry(db).metrics(1, split="train", name="loss"))

    wait_for(in_epoch_2, timeout=600, what="the run to reach epoch 2")
    reg = Registry(db)
    os.kill(reg.get(1)["pid"], signal.SIGKILL)
    proc.communicate(timeout=60)
    assert reg.get(1)["status"] == "failed"
    kept = [m["step"] for m in reg.metrics(1, split="train", name="loss") if m["step"] <= 60]
    res = dwc(proj, "resume", "1", "--now")
    assert res.returncode == 0, res.stdout + res.stderr
    row = reg.get(1)
    assert row["status"] == "done"
    steps = [m["step"] for m in reg.metrics(1, split="train", name="loss")]
    assert steps == sorted(set(steps)) and max(steps) == 3 * 60  # complete, no duplicates
    assert [s for s in steps if s <= 60] == kept  # rows up to the checkpoint were not lost
    assert [e["epoch"] for e in reg.evaluations(1)] == [0, 1, 2, 3]
    assert any(e["kind"] == "resume" for e in reg.events(1))
    # metrics.jsonl was trimmed like the registry: each (split, name, step) once, the same rows as the registry
    lines = (Path(row["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    in_file = [(r["split"], r["name"], r["step"]) for r in map(json.loads, lines)]
    in_registry = [(m["split"], m["name"], m["step"]) for m in reg.metrics(1)]
    assert len(in_file) == len(set(in_file)) and sorted(in_file) == sorted(in_registry)


@pytest.mark.slow
def test_eval_reproduces_best_and_records_other_protocols(proj):
    assert dwc(proj, "run", "tiny", *SHORT).returncode == 0
    reg = Registry(proj / "runs" / "registry.db")
    row = reg.get(1)
    res = dwc(proj, "eval", "1", "--format", "json")
    assert res.returncode == 0, res.stderr
    ev = json.loads(res.stdout)
    best = {k: v for k, v in row["best_metrics"].items() if k != "epoch"}
    assert ev["kind"] == "reeval" and ev["metrics"] == pytest.approx(best, abs=1e-9)
    res = dwc(proj, "eval", "1", "--checkpoint", "last", "--set", "eval.ks=[1,2,3]", "--format", "json")
    ev2 = json.loads(res.stdout)
    assert set(ev2["metrics"]) == {"R@1", "R@2", "R@3", "mean"} and ev2["protocol"]["overrides"] == [
        "eval.ks=[1,2,3]"
    ]
    assert len(reg.query_results(ev2["id"])) == 48
    bad = dwc(proj, "eval", "1", "--set", "model.embed_dim=3")
    assert bad.returncode == 2 and "only options of dataset, eval" in bad.stderr
    missing = dwc(proj, "eval", "1", "--checkpoint", "/nope.pt")
    assert missing.returncode == 2 and "no checkpoint" in missing.stderr
    meaningless = dwc(proj, "eval", "1", "--set", "eval.ks=[1,5,500]")  # the gallery holds 96 images
    assert meaningless.returncode == 2 and "Recall@500" in meaningless.stderr and "96" in meaningless.stderr
    # another run's weights by path: allowed, never silently
    state = torch.load(Path(row["run_dir"]) / "last.pt", weights_only=True)
    state["run_uid"] = "someone-else"
    torch.save(state, proj / "other.pt")
    res = dwc(proj, "eval", "1", "--checkpoint", str(proj / "other.pt"), "--format", "json")
    assert res.returncode == 0, res.stderr
    assert "checkpoint of another run (uid someone-else)" in res.stderr
    assert json.loads(res.stdout)["protocol"]["checkpoint_run_uid"] == "someone-else"
    assert "belongs to another run (uid someone-else" in reg.events(1)[-1]["message"]
    # a corrupt best.pt and no last.pt: the message names the file and points only to what exists
    run_dir = Path(row["run_dir"])
    (run_dir / "last.pt").unlink()
    (run_dir / "best.pt").write_bytes((run_dir / "best.pt").read_bytes()[:1000])
    res = dwc(proj, "eval", "1")
    assert res.returncode == 2 and str(run_dir / "best.pt") in res.stderr, res.stderr
    assert "--checkpoint last" not in res.stderr and "a .pt file by path" in res.stderr


@pytest.mark.slow
def test_eval_of_dwc_with_frozen_random_clip_reproduces_best(proj):
    """Frozen modules stay out of checkpoints; re-building them must give the same weights as in training."""
    text = (
        TINY
        + """\
  tiny-dwc:
    extends: tiny
    model: {name: dwc, embed_dim: 32, clip: {arch: tiny, pretrained: none}, cnn: {arch: tiny, pretrained: none},
            text: {word_dim: 16}}
    trainer: {epochs: 1}
"""
    )
    (proj / "experiments.yaml").write_text(text)
    assert dwc(proj, "run", "tiny-dwc").returncode == 0
    row = Registry(proj / "runs" / "registry.db").get(1)
    state = torch.load(Path(row["run_dir"]) / "best.pt", weights_only=True)
    assert not any(k.startswith("clip.") for k in state["model"])  # the frozen CLIP is not saved
    res = dwc(proj, "eval", "1", "--format", "json")
    assert res.returncode == 0, res.stderr
    best = {k: v for k, v in row["best_metrics"].items() if k != "epoch"}
    assert json.loads(res.stdout)["metrics"] == pytest.approx(best, abs=1e-9)


@pytest.mark.slow
def test_time_budget_cuts_training_evaluates_and_finishes(proj):
    res = dwc(proj, "run", "tiny", "--set", "trainer.epochs=1000", "--set", "trainer.time_budget_min=0.05")
    assert res.returncode == 0, res.stderr
    reg = Registry(proj / "runs" / "registry.db")
    row = reg.get(1)
    assert row["status"] == "done"
    events = [e for e in reg.events(1) if e["kind"] == "budget"]
    assert len(events) == 1 and "time budget of 0.05 min" in events[0]["message"]
    last_epoch = reg.evaluations(1)[-1]["epoch"]
    assert 1 <= last_epoch < 1000 and row["last_metrics"]["epoch"] == last_epoch
    train_seconds = sum(m["value"] for m in reg.metrics(1, split="train", name="epoch_seconds"))
    assert 3.0 <= train_seconds < 3.0 + 10  # the budget, plus at most one step's overshoot (generous)


@pytest.mark.slow
def test_a_budget_spent_before_the_first_step_still_trains_one_epoch_with_steps(proj):
    """A budget shorter than the loader's start-up: the first epoch still takes a step, is evaluated as the last,
    and no epoch of zero steps follows (it would re-evaluate the same weights and replace the epoch's timing)."""
    res = dwc(proj, "run", "tiny", "--set", "trainer.epochs=50", "--set", "trainer.time_budget_min=0.00001")
    assert res.returncode == 0, res.stderr
    reg = Registry(proj / "runs" / "registry.db")
    assert reg.get(1)["status"] == "done"
    assert [e["epoch"] for e in reg.evaluations(1)] == [0, 1]
    (timing,) = reg.metrics(1, split="train", name="epoch_seconds")
    assert timing["step"] == 1  # one step, then the budget is looked at
    assert [m["step"] for m in reg.metrics(1, split="train", name="loss")] == [1]  # the step's loss is logged
    assert [e["message"] for e in reg.events(1) if e["kind"] == "budget"] == [
        "time budget of 1e-05 min reached during epoch 1 at step 1; evaluated and stopped"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["swap", "restart"])
def test_ema_runs_evaluate_and_save_the_average(proj, mode):
    res = dwc(proj, "run", "tiny", "--set", "trainer.ema=0.9", "--set", f"trainer.ema_mode={mode}", *SHORT)
    assert res.returncode == 0, res.stdout + res.stderr
    reg = Registry(proj / "runs" / "registry.db")
    row = reg.get(1)
    assert row["status"] == "done"
    res = dwc(proj, "eval", "1", "--format", "json")  # best.pt holds the evaluated (EMA) weights
    best = {k: v for k, v in row["best_metrics"].items() if k != "epoch"}
    assert json.loads(res.stdout)["metrics"] == pytest.approx(best, abs=1e-9)
