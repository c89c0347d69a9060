"""Issue 8 (end to end, slow): the fault-injection cases on tiny runs — two trainers on one run, an emptied
registry beside old run dirs, resume without a usable last.pt, a full disk, Ctrl-C during start-up, a gallery
smaller than K."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import dwc, start, tiny_experiments, train, wait_for, write_project

from dwc_core.runs.registry import ACTIVE, Registry

pytestmark = pytest.mark.slow

TINY = tiny_experiments(
    "epochs: 1, batch_size: 16, lr: 1.0e-3, num_workers: 0, log_every: 1, heartbeat_s: 0.5,\n              max_steps_per_epoch: 3",
    more="  long:\n    extends: tiny\n    trainer: {epochs: 2, max_steps_per_epoch: 12}\n",
)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One synthetic-data cache for every test here (generated and decoded once)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def proj(tmp_path: Path, shared_cache: Path) -> Path:
    text = TINY.replace("image_size: 32}", f"image_size: 32, cache_dir: {shared_cache}}}", 1)
    return write_project(tmp_path, text)


def epochs(reg: Registry, run_id: int) -> list[int]:
    return [e["epoch"] for e in reg.evaluations(run_id, kind="epoch")]


def assert_no_duplicate_metrics(reg: Registry, run_id: int) -> None:
    keys = [(m["split"], m["name"], m["step"]) for m in reg.metrics(run_id)]
    assert len(keys) == len(set(keys))
    lines = (Path(reg.get(run_id)["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    file_keys = [(r["split"], r["name"], r["step"]) for r in map(json.loads, lines)]
    assert len(file_keys) == len(set(file_keys)) and sorted(file_keys) == sorted(keys)


# ------------------------------------------------------------------------------------------------------ item 1
def test_second_trainer_and_resume_are_refused_while_a_run_trains(proj):
    proc = start(proj, "run", "long")
    reg = Registry(proj / "runs" / "registry.db")
    wait_for(lambda: reg.runs() and reg.get(1)["status"] == "running", what="running")
    wait_for(lambda: reg.metrics(1, split="train", name="loss"), what="first losses")
    pid = reg.get(1)["pid"]
    # SIGSTOP (as in the report): the stopped trainer still holds its run lock, however long the checks take
    os.kill(pid, signal.SIGSTOP)
    try:
        second = train(proj, 1)
        assert second.returncode == 4, second.stdout + second.stderr
        assert f"pid {pid}" in second.stdout and "already being trained" in second.stdout
        assert reg.get(1)["status"] == "running" and reg.get(1)["pid"] == pid
        # a stale heartbeat: alive on this host, so `stalled`, never `lost`, and never resumed twice
        reg.update(1, heartbeat=time.time() - 1000)
        listing = dwc(proj, "runs", "--format", "json")
        assert listing.returncode == 0 and json.loads(listing.stdout)[0]["status"] == "running"
        assert any(e["kind"] == "stalled" for e in reg.events(1))
        reg.set_status(1, "lost", "marked lost by an older dwc", only_from=ACTIVE)
        again = dwc(proj, "resume", "1")
        assert again.returncode == 2 and f"pid {pid}" in again.stderr, again.stderr
        assert reg.get(1)["status"] == "lost"
    finally:
        os.kill(pid, signal.SIGCONT)
    out, errs = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + errs
    row = reg.get(1)
    assert row["status"] == "done" and row["resumes"] == 0
    assert epochs(reg, 1) == [0, 1, 2]
    assert [e["kind"] for e in reg.events(1)].count("done") == 1
    assert_no_duplicate_metrics(reg, 1)


# ------------------------------------------------------------------------------------------------------ item 2
def test_emptied_registry_new_run_does_not_load_the_old_checkpoint(proj):
    assert dwc(proj, "run", "tiny").returncode == 0
    old_dir = Path(Registry(proj / "runs" / "registry.db").get(1)["run_dir"])
    assert (old_dir / "last.pt").is_file()
    (proj / "runs" / "registry.db").write_bytes(b"")  # `: > runs/registry.db`
    res = dwc(proj, "run", "tiny", "--set", "trainer.seed=7")
    assert res.returncode == 0, res.stdout + res.stderr
    reg = Registry(proj / "runs" / "registry.db")
    row = reg.get(1)
    assert Path(row["run_dir"]) != old_dir and row["config"]["trainer"]["seed"] == 7
    assert row["versions"]["dwc"]  # recorded always (item 18), git state or not
    kinds = [e["kind"] for e in reg.events(1)]
    assert "resume" not in kinds and "warning" in kinds
    assert epochs(reg, 1) == [0, 1]
    log = (Path(row["run_dir"]) / "train.log").read_text()
    assert "resumed" not in log


# ------------------------------------------------------------------------------------------------------ items 3, 5, 6, 8
def test_resume_without_a_usable_last_pt_never_records_an_epoch_twice(proj):
    assert dwc(proj, "run", "tiny").returncode == 0
    reg = Registry(proj / "runs" / "registry.db")
    run_dir = Path(reg.get(1)["run_dir"])
    # a re-evaluation after the epochs (kept by a restart; it also keeps the new epochs from reusing the old ids)
    assert dwc(proj, "eval", "1").returncode == 0
    old_ids = {e["id"] for e in reg.evaluations(1, kind="epoch")}
    (reeval,) = reg.evaluations(1, kind="reeval")
    reeval_rows = reg.query_results(reeval["id"])
    assert old_ids & reg.evaluations_with_query_results(1) and reeval_rows
    # killed before its first last.pt (here: deleted), with epochs already recorded
    reg.set_status(1, "failed", "simulated kill")
    (run_dir / "last.pt").unlink()
    (run_dir / ".last.pt.tmp99999").write_bytes(b"x" * 1000)  # a write that was killed
    res = dwc(proj, "resume", "1", "--now")
    assert res.returncode == 0, res.stdout + res.stderr
    assert epochs(reg, 1) == [0, 1]
    # the old attempt's per-query results went with its evaluations; the re-evaluation's stay
    new_ids = {e["id"] for e in reg.evaluations(1, kind="epoch")}
    assert not new_ids & old_ids
    with_rows = reg.evaluations_with_query_results(1)
    assert not with_rows & old_ids and reeval["id"] in with_rows and with_rows & new_ids
    assert not [r for i in old_ids for r in reg.query_results(i)]
    assert reg.query_results(reeval["id"]) == reeval_rows
    kinds = [e["kind"] for e in reg.events(1)]
    assert "restart" in kinds and "cleanup" in kinds
    assert not (run_dir / ".last.pt.tmp99999").exists()
    assert_no_duplicate_metrics(reg, 1)
    # a truncated last.pt: the run fails naming the file and the way out, and records nothing twice
    reg.set_status(1, "failed", "simulated kill")
    data = (run_dir / "last.pt").read_bytes()
    (run_dir / "last.pt").write_bytes(data[: len(data) // 3])
    res = dwc(proj, "resume", "1", "--now")
    assert res.returncode != 0
    row = reg.get(1)
    assert row["status"] == "failed" and str(run_dir / "last.pt") in row["error"]
    assert "--from-scratch" in row["error"] and "Traceback" not in res.stderr
    assert epochs(reg, 1) == [0, 1]
    res = dwc(proj, "resume", "1", "--from-scratch", "--now")
    assert res.returncode == 0, res.stdout + res.stderr
    assert epochs(reg, 1) == [0, 1] and reg.get(1)["status"] == "done"
    assert_no_duplicate_metrics(reg, 1)


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of ``size`` mounted at ``folder`` for the test (skips where mounting is not allowed)."""
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); tests/test_hardening.py injects ENOSPC instead")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)


# ------------------------------------------------------------------------------------------------------ item 7
def test_disk_full_fails_the_run_with_a_clear_message(tmp_path, shared_cache):
    with small_disk(tmp_path / "disk", "20m") as disk:
        (disk / "experiments.yaml").write_text(TINY)
        (disk / "runs").mkdir()
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        with open(disk / "filler", "wb") as fh:  # leave 6 MB: less than best.pt (~5 MB) plus the 4 MB reserve
            fh.write(b"\0" * (free - 6 * 2**20))
        res = dwc(disk, "run", "tiny", "--set", f"dataset.cache_dir={shared_cache}")
        assert res.returncode == 1, res.stdout + res.stderr
        assert "Traceback" not in res.stderr and "disk full at" in res.stderr
        reg = Registry(disk / "runs" / "registry.db")
        row = reg.get(1)
        assert row["status"] == "failed" and row["error"].startswith("disk full at")
        assert str(Path(row["run_dir"]) / "best.pt") in row["error"]
        assert not (Path(row["run_dir"]) / "best.pt").exists()
        assert not any(e["is_best"] for e in reg.evaluations(1))  # best is marked only once the file exists
        assert not list(Path(row["run_dir"]).glob(".*.tmp*"))
        reg.close()


def test_disk_full_during_the_cache_build_fails_the_run_naming_the_cache(tmp_path):
    """The decoded-image cache is a memory-mapped file: written sparse on a full disk, the trainer died of SIGBUS
    ("killed by SIGBUS", nothing about space). Its blocks are reserved first now: a clear "disk full at" instead."""
    with small_disk(tmp_path / "disk", "8m") as disk:
        (tmp_path / "experiments.yaml").write_text(TINY)
        # the cache (images × 32 × 32 × 3) is more than 8 MB for 1,600 training images + the test gallery
        res = dwc(
            tmp_path, "run", "tiny", "--set", f"dataset.cache_dir={disk}", "--set", "dataset.num_train=1600"
        )
        assert res.returncode == 1, res.stdout + res.stderr
        assert "Traceback" not in res.stderr and "SIGBUS" not in res.stderr
        assert "disk full at" in res.stderr and "decoded-image cache" in res.stderr, res.stderr
        row = Registry(tmp_path / "runs" / "registry.db").get(1)
        assert row["status"] == "failed" and row["error"].startswith("disk full at"), row["error"]
        left = [p.name for p in disk.rglob("*") if p.is_file()]
        # neither a half cache nor its temp file
        assert not [n for n in left if "images" in n or ".tmp" in n], left


# ------------------------------------------------------------------------------------------------------ item 11
def test_ctrl_c_during_start_up_is_a_cancellation(proj):
    proc = start(proj, "run", "tiny")
    path = proj / "runs" / "registry.db"
    wait_for(lambda: path.exists() and Registry(path).runs() and Registry(path).get(1)["pid"], what="spawned")
    proc.send_signal(signal.SIGINT)  # the trainer is still importing torch
    out, errs = proc.communicate(timeout=180)
    assert proc.returncode == 130, out + errs
    row = Registry(path).get(1)
    assert row["status"] == "cancelled", row


# ------------------------------------------------------------------------------------------------------ item 13
def test_gallery_smaller_than_k_exits_2_naming_both(proj):
    res = dwc(proj, "run", "tiny", "--set", "dataset.num_test=10")
    assert res.returncode == 2, res.stdout + res.stderr
    text = " ".join(res.stderr.split())
    assert "gallery holds at most 20 images" in text and "Recall@50" in text
    assert "Traceback" not in res.stderr
    # refused before the run exists (the config alone bounds the synthetic gallery): nothing registered or created
    db = proj / "runs" / "registry.db"
    assert not db.exists() or Registry(db).runs() == []
    assert not [p for p in (proj / "runs").glob("*-tiny*")]
    res = dwc(proj, "queue", "tiny", "--set", "dataset.num_test=10")  # the queue refuses it too
    assert res.returncode == 2 and "Recall@50" in res.stderr and "nothing" not in res.stdout
    assert not db.exists() or Registry(db).runs() == []


# ------------------------------------------------------------------------------------------------------ item 12
def test_queued_run_whose_dataset_vanished_fails_with_the_preflight_message(proj, tmp_path):
    from dwc_core.config.checks import preflight
    from dwc_core.config.experiments import ExperimentsFile
    from dwc_core.errors import DataError

    root = tmp_path / "shoes"
    root.mkdir()
    text = (
        proj / "experiments.yaml"
    ).read_text() + f"  shoes:\n    extends: tiny\n    dataset: {{name: shoes, root: {root}}}\n"
    (proj / "experiments.yaml").write_text(text)
    assert dwc(proj, "run", "shoes", "--queue").returncode == 0  # the root exists when it is queued …
    root.rmdir()  # … and is gone when it starts
    (spec,) = ExperimentsFile.load(proj / "experiments.yaml").resolve("shoes")
    with pytest.raises(DataError) as info:
        preflight(spec.config, proj)
    res = train(proj, 1)
    assert res.returncode == 2, res.stdout + res.stderr
    row = Registry(proj / "runs" / "registry.db").get(1)
    assert row["status"] == "failed" and row["error"] == info.value.message and row["exit_code"] == 2
    assert "Traceback" not in res.stdout + res.stderr


# ------------------------------------------------------------------------------------------------------ item 2
def test_resume_refuses_the_last_pt_of_another_run(proj):
    """Checkpoints record their run's uid and config hash; a resume that finds another run's last.pt in its run dir
    fails naming both uids, and records nothing with those weights."""
    torch = pytest.importorskip("torch")
    from dwc_core.engine import checkpoint

    for _ in range(2):  # the same config twice: only the run uid tells the checkpoints apart
        res = dwc(proj, "run", "tiny")
        assert res.returncode == 0, res.stdout + res.stderr
    reg = Registry(proj / "runs" / "registry.db")
    a, b = reg.get(1), reg.get(2)
    assert a["uid"] and b["uid"] and a["uid"] != b["uid"]
    dir_a, dir_b = Path(a["run_dir"]), Path(b["run_dir"])
    for name in ("last.pt", "best.pt"):  # what the trainer writes into each checkpoint
        state = torch.load(dir_a / name, weights_only=True)
        assert state["run_uid"] == a["uid"] and state["config_hash"] == checkpoint.config_hash(a["config"])
    assert checkpoint.config_hash(a["config"]) == checkpoint.config_hash(b["config"])
    before = reg.evaluations(2)
    best_b = (dir_b / "best.pt").read_bytes()
    losses_b = reg.metrics(2, split="train", name="loss")
    reg.set_status(2, "failed", "simulated kill")  # resumable
    (dir_b / "last.pt").write_bytes((dir_a / "last.pt").read_bytes())
    res = dwc(proj, "resume", "2", "--now")
    assert res.returncode == 2, res.stdout + res.stderr  # refused before training, as `dwc run` would say
    assert "Traceback" not in res.stderr
    err = " ".join(res.stderr.split())
    assert a["uid"] in err and b["uid"] in err and "another run" in err, res.stderr
    row = reg.get(2)
    assert row["status"] == "failed" and row["exit_code"] == 2
    assert a["uid"] in row["error"] and b["uid"] in row["error"]
    assert str(dir_b / "last.pt") in row["error"]
    # nothing recorded from run A's weights: B's evaluations, losses and best.pt are as they were
    assert reg.evaluations(2) == before
    assert reg.metrics(2, split="train", name="loss") == losses_b
    assert (dir_b / "best.pt").read_bytes() == best_b
    assert "resume" not in [e["kind"] for e in reg.events(2)]
    assert "resumed from last.pt" not in (dir_b / "train.log").read_text()


# ------------------------------------------------------------------------------------------------------ item 13
def test_validation_split_below_the_minimum_fails_before_training(proj):
    """select_on: val_split with a val_fraction that holds out fewer queries than trainer.val_min_queries (50 by
    default): the trainer refuses it once the data is loaded, naming both sizes, before a single step."""
    res = dwc(
        proj, "run", "tiny", "--set", "trainer.select_on=val_split", "--set", "trainer.val_fraction=0.05"
    )
    assert res.returncode == 2, res.stdout + res.stderr  # a config error found by the trainer before training
    assert "Traceback" not in res.stderr
    text = " ".join(res.stderr.split())
    # 320 training triplets × 0.05 = 16 held out
    assert "trainer.val_fraction = 0.05 holds out only 16 validation queries (minimum 50)" in text, res.stderr
    assert "trainer.val_min_queries" in text
    # the cause is the split's size, not its gallery (32 images, also below K = 50): no advice about num_test
    assert "num_test" not in text
    reg = Registry(proj / "runs" / "registry.db")
    row = reg.get(1)
    assert row["status"] == "failed" and row["exit_code"] == 2
    assert "only 16 validation queries (minimum 50)" in row["error"]
    # nothing trained or evaluated, no checkpoint written
    assert reg.metrics(1) == [] and reg.evaluations(1) == [] and row["step"] == 0
    assert not (Path(row["run_dir"]) / "last.pt").exists() and not (Path(row["run_dir"]) / "best.pt").exists()


# ------------------------------------------------------------------------------------------------------ item 10
@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` bind-mounted read-only onto itself for the test (same paths; skips where mounting is not
    allowed)."""
    res = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True)
    if res.returncode != 0:
        pytest.skip("cannot bind-mount read-only here (needs root)")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def test_read_only_project_compares_and_browses(tmp_path):
    """A trained project on a read-only mount (its cache under runs/ too): compare, compare --runs and browse read
    the registry read-only, say so once, and exit 0."""
    (tmp_path / "proj").mkdir()
    proj = write_project(tmp_path / "proj", TINY)
    res = dwc(proj, "run", "tiny")
    assert res.returncode == 0, res.stdout + res.stderr
    best = Registry(proj / "runs" / "registry.db").get(1)["best_metrics"]
    with read_only(proj):
        assert not os.access(proj / "runs" / "registry.db", os.W_OK)
        res = dwc(proj, "compare")  # the terminal table
        assert res.returncode == 0 and "tiny" in res.stdout, res.stdout + res.stderr
        assert res.stderr.count("read-only") == 1 and "Traceback" not in res.stderr, res.stderr
        for args in (["compare", "--format", "json"], ["compare", "--runs", "--format", "json"]):
            res = dwc(proj, *args)
            assert res.returncode == 0, res.stdout + res.stderr
            assert res.stderr.count("read-only") == 1 and "Traceback" not in res.stderr, res.stderr
            (row,) = json.loads(res.stdout)
            assert row["experiment"] == "tiny" and row["runs"] == [1] and row["n"] == 1
            assert row["R@10"] == pytest.approx(best["R@10"], abs=0.006)
        res = dwc(proj, "browse", "1", "--limit", "3")
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stderr.count("read-only") == 1 and "Traceback" not in res.stderr, res.stderr
        assert "run 1 tiny" in res.stdout and "48 queries" in res.stdout, res.stdout
        assert res.stdout.count("\n#") == 3 and "target  scene" in res.stdout  # described from the cache
        res = dwc(proj, "browse", "1", "--format", "jsonl")
        assert res.returncode == 0 and len(res.stdout.splitlines()) == 48, res.stderr
        assert res.stderr.count("read-only") == 1


# ------------------------------------------------------------------------------------------------------ item 18
def test_eval_of_a_random_clip_run_keeps_open_clips_warning_in_train_log(proj):
    """DWC with a random-weight open_clip encoder (as the demo): `dwc eval` prints none of open_clip's "No pretrained
    weights loaded"; the warning goes to the run's train.log, once per evaluation."""
    text = (proj / "experiments.yaml").read_text() + (
        "  tiny-dwc:\n    extends: tiny\n"
        "    model: {name: dwc, embed_dim: 32, clip: {arch: tiny, pretrained: none},\n"
        "            cnn: {arch: tiny, pretrained: none}, text: {word_dim: 16}}\n"
        "    trainer: {max_steps_per_epoch: 1}\n"
    )
    (proj / "experiments.yaml").write_text(text)
    res = dwc(proj, "run", "tiny-dwc")
    assert res.returncode == 0, res.stdout + res.stderr
    log = Path(Registry(proj / "runs" / "registry.db").get(1)["run_dir"]) / "train.log"
    warning = "No pretrained weights loaded"
    before = log.read_text().count(warning)
    assert before == 1  # the trainer built the random CLIP too (its output is train.log): once
    res = dwc(proj, "eval", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "pretrained" not in res.stdout + res.stderr and "WARNING" not in res.stderr
    assert log.read_text().count(warning) == 2, log.read_text()[-2000:]
