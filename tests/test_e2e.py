"""End to end: `dwc run` trains a tiny experiment in a subprocess; kills, cancels and resumes leave the registry
right."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from helpers import dwc, shipped_project, start, tiny_experiments, wait_for, write_project

from dwc_core.runs.registry import Registry

pytestmark = pytest.mark.slow

TINY = tiny_experiments(more="  long:\n    extends: tiny\n    dataset: {num_train: 960}\n")


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    return write_project(tmp_path, TINY)


def test_run_compare_show(proj):
    res = dwc(proj, "run", "tiny")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "done" in res.stdout
    reg = Registry(proj / "runs" / "registry.db")
    (row,) = reg.runs()
    assert row["status"] == "done" and row["exit_code"] == 0
    # the default device is the first GPU where there is one (the suite also runs on GPU machines)
    expected = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu ("
    assert row["versions"]["torch"] and row["device"].startswith(expected)
    run_dir = Path(row["run_dir"])
    for name in ("config.json", "train.log", "last.pt", "best.pt", "metrics.jsonl"):
        assert (run_dir / name).is_file(), name
    evals = reg.evaluations(row["id"])
    assert [e["epoch"] for e in evals] == [0, 1, 2]  # the untrained model is evaluated as epoch 0
    assert evals[0]["metrics"]["R@1"] >= 0 and evals[-1]["gallery_size"] > 48
    best = [e for e in evals if e["is_best"]]
    assert len(best) == 1 and best[0]["epoch"] == row["best_epoch"]
    qr = reg.query_results(best[0]["id"])
    assert len(qr) == 48 and all(len(q["topk_ids"]) == 50 for q in qr)
    losses = reg.metrics(row["id"], split="train", name="loss")
    assert len(losses) >= 10 and len({m["step"] for m in losses}) == len(losses)
    cmp_ = dwc(proj, "compare", "--format", "json")
    assert cmp_.returncode == 0
    (line,) = json.loads(cmp_.stdout)
    assert line["experiment"] == "tiny" and line["R@10"] == round(row["best_metrics"]["R@10"], 2)
    show = dwc(proj, "show", str(row["id"]))
    assert show.returncode == 0 and "config" in show.stdout


def test_sigkill_marks_failed_and_keeps_metrics(proj):
    proc = start(proj, "run", "long")
    reg = Registry(proj / "runs" / "registry.db")
    wait_for(lambda: reg.runs() and reg.get(1)["status"] == "running", what="running")
    wait_for(lambda: len(reg.metrics(1, split="train", name="loss")) >= 3, what="metrics")
    before = len(reg.metrics(1))
    os.kill(reg.get(1)["pid"], signal.SIGKILL)
    out, errs = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + errs
    row = reg.get(1)
    assert row["status"] == "failed" and "SIGKILL" in row["error"]
    assert len(reg.metrics(1)) >= before


def test_ctrl_c_cancels_then_resume_continues_without_duplicates(proj):
    proc = start(proj, "run", "long")
    reg = Registry(proj / "runs" / "registry.db")
    wait_for(lambda: reg.runs() and len(reg.metrics(1, split="train", name="loss")) >= 3, what="metrics")
    proc.send_signal(signal.SIGINT)
    out, errs = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + errs
    row = reg.get(1)
    assert row["status"] == "cancelled"
    assert (Path(row["run_dir"]) / "last.pt").is_file()
    res = dwc(proj, "resume", "1", "--now")
    assert res.returncode == 0, res.stdout + res.stderr
    row = reg.get(1)
    assert row["status"] == "done" and row["resumes"] == 1
    steps = [m["step"] for m in reg.metrics(1, split="train", name="loss")]
    assert steps == sorted(set(steps))  # no duplicated steps
    assert max(steps) == 2 * (960 // 16)
    assert [e["epoch"] for e in reg.evaluations(1)] == [0, 1, 2]


def test_shipped_demo_experiment_learns(tmp_path):
    """The shipped `demo` (DWC, tiny encoders), shrunk: the final test R@10 at least doubles the untrained one and
    gains 15 points. (The full-size timing is bench/demo.py.)"""
    shipped_project(tmp_path)
    res = dwc(tmp_path, "run", "demo", "--set", "dataset.num_train=480", "--set", "dataset.num_test=200",
              "--set", "dataset.image_size=32", "--set", "trainer.epochs=1")  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    evals = Registry(tmp_path / "runs" / "registry.db").evaluations(1, kind="epoch")
    untrained, final = evals[0]["metrics"]["R@10"], evals[-1]["metrics"]["R@10"]
    assert final >= 2 * untrained and final >= untrained + 15, (untrained, final)
