"""`dwc cancel` is honoured within 10 s in every long phase, not only between training steps: the decoded-image
cache build and an evaluation (by signal, and by the registry flag alone). (The compile phase went with
``trainer.compile``, removed after the H100 measurement.)

Phases are made to last with the test-only ``DWC_TEST_PHASE_DELAY`` (a sleep at each of the phase's checks).
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from helpers import dwc, start

from dwc_core.runs.registry import Registry

pytestmark = pytest.mark.slow

LIMIT_S = 10.0

YAML = """\
experiments:
  tiny:
    dataset: {{name: synthetic, num_train: {num_train}, num_test: 48, image_size: 32}}
    model: {{name: tirg, embed_dim: 32, cnn: {{arch: tiny}}, text: {{word_dim: 16, hidden: 32}}}}
    trainer: {{epochs: 1, batch_size: 16, num_workers: 0, log_every: 1, heartbeat_s: 0.5, device: cpu{trainer}}}
    eval: {{batch_size: 8}}
"""


def _start(tmp_path, env_extra: dict, num_train: int = 160, trainer: str = "") -> subprocess.Popen:
    (tmp_path / "experiments.yaml").write_text(YAML.format(num_train=num_train, trainer=trainer))
    return start(tmp_path, "run", "tiny", env=env_extra, merge_stderr=True)


def _progress(row: dict) -> dict:
    progress = row.get("progress") or {}
    return json.loads(progress) if isinstance(progress, str) else progress


def _phase(row: dict) -> str | None:
    return _progress(row).get("phase")


def _wait_for_phase(tmp_path, proc, phase: str, timeout: float = 240.0, epoch: int | None = None) -> dict:
    db = tmp_path / "runs" / "registry.db"
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        if db.exists():
            rows = Registry(db).runs()
            running = rows and rows[0]["status"] == "running" and _phase(rows[0]) == phase
            if running and (epoch is None or rows[0]["epoch"] == epoch):
                return rows[0]
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the run never reached phase {phase!r}")


def _cancel_and_time(tmp_path, proc, run_id: int, by_signal: bool = True) -> float:
    reg = Registry(tmp_path / "runs" / "registry.db")
    t0 = time.time()
    if by_signal:
        res = dwc(tmp_path, "cancel", str(run_id), timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
    else:  # the registry flag alone (what a cancel from another host amounts to): read by the heartbeat thread
        reg.request_cancel(run_id)
    while time.time() - t0 < 60 and reg.get(run_id)["status"] not in ("cancelled", "failed", "done"):
        time.sleep(0.05)
    elapsed = time.time() - t0
    out, _ = proc.communicate(timeout=60)
    row = reg.get(run_id)
    assert row["status"] == "cancelled", (row["status"], row["error"], out)
    assert proc.returncode == 130, out
    return elapsed


def _group_gone(pgid: int, wait_s: float = 5.0) -> bool:
    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_cancel_during_the_cache_build(tmp_path):
    proc = _start(tmp_path, {"DWC_TEST_PHASE_DELAY": "cache=1.0"}, num_train=600)
    row = _wait_for_phase(tmp_path, proc, "cache")
    assert _cancel_and_time(tmp_path, proc, row["id"]) < LIMIT_S
    cache_dirs = list((tmp_path / "runs" / ".cache").rglob("images_*"))
    assert not any(p.suffix == ".u8" for p in cache_dirs)  # no half-built cache left as if complete
    assert not list((tmp_path / "runs" / ".cache").rglob("*.tmp*"))  # nor its temp file


@pytest.mark.parametrize("by_signal", [True, False], ids=["dwc-cancel", "registry-flag"])
def test_cancel_during_an_evaluation(tmp_path, by_signal):
    proc = _start(tmp_path, {"DWC_TEST_PHASE_DELAY": "eval=0.5"})
    row = _wait_for_phase(tmp_path, proc, "eval")
    assert _cancel_and_time(tmp_path, proc, row["id"], by_signal=by_signal) < LIMIT_S
    reg = Registry(tmp_path / "runs" / "registry.db")
    assert reg.evaluations(row["id"]) == []  # the interrupted evaluation recorded nothing


@pytest.mark.parametrize("epoch", [0, 1])
def test_an_evaluation_interrupted_by_a_cancel_runs_first_on_resume(tmp_path, epoch):
    """The stop arrives while epoch 0 (untrained) or the last epoch is evaluated: the resumed run evaluates that
    epoch before anything else, so that every epoch is recorded exactly once."""
    proc = _start(tmp_path, {"DWC_TEST_PHASE_DELAY": "eval=0.5"})
    row = _wait_for_phase(tmp_path, proc, "eval", epoch=epoch)
    _cancel_and_time(tmp_path, proc, row["id"])
    reg = Registry(tmp_path / "runs" / "registry.db")
    assert [e["epoch"] for e in reg.evaluations(row["id"])] == ([0] if epoch else [])
    res = dwc(tmp_path, "resume", str(row["id"]), "--now", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    after = reg.get(row["id"])
    assert after["status"] == "done", after["error"]
    assert [e["epoch"] for e in reg.evaluations(row["id"], kind="epoch")] == [0, 1]
    assert after["best_epoch"] == 1
    events = " ".join(e["message"] for e in reg.events(row["id"]))
    assert f"the evaluation of epoch {epoch} was interrupted and runs first" in events


def test_cancel_of_a_two_process_run_during_the_cache_build(tmp_path):
    """Data parallel (2 gloo processes under torchrun): rank 0 builds the cache while rank 1 waits in a barrier —
    a cancel must still end the run `cancelled` within the limit, with every process of it gone."""
    proc = _start(tmp_path, {"DWC_TEST_PHASE_DELAY": "cache=1.0"}, num_train=600, trainer=", gpus: 2")
    row = _wait_for_phase(tmp_path, proc, "cache")
    time.sleep(1.0)  # rank 1 is in its barrier by now
    assert _cancel_and_time(tmp_path, proc, row["id"]) < LIMIT_S
    assert _group_gone(row["pgid"]), "a rank (or torchrun) outlived the cancel"
