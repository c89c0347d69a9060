"""Issue 8 (fast part): guards, messages and exit codes for what a new user and a fault-injection pass broke.
Each test reproduces one case first. The end-to-end cases that train are in test_hardening_e2e.py."""

from __future__ import annotations

import errno
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import dwc, invoke, write_project

from dwc_core.config.checks import check_eval_sizes
from dwc_core.config.experiments import ExperimentsFile, default_config
from dwc_core.data.types import EvalSet, Query
from dwc_core.errors import ConfigError, DiskFull, RunLocked, RunNotFound, UsageError
from dwc_core.runs import launcher
from dwc_core.runs.locks import run_lock
from dwc_core.runs.registry import Registry

GOOD = """\
experiments:
  demo:
    dataset: {name: synthetic, num_train: 64, num_test: 32, image_size: 32}
    model: {name: tirg, embed_dim: 32, cnn: {arch: tiny}, text: {word_dim: 16, hidden: 32}}
    trainer: {epochs: 1, num_workers: 0}
  fiq:
    dataset: {name: fashioniq, root: /nonexistent/fashioniq}
    model: {name: tirg}
"""


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    return write_project(tmp_path, GOOD)


def registry_with_run(project: Path, status: str | None = None) -> tuple[Registry, dict]:
    reg = Registry(project / "runs" / "registry.db")
    run = reg.create_run("demo", default_config(), project / "runs")
    if status:
        reg.set_status(run["id"], status, status)
    return reg, reg.get(run["id"])


# ------------------------------------------------------------------------------------- 14, 4, 16: exit codes
@pytest.mark.parametrize("args", [["show", "999"], ["eval", "999"], ["cancel", "999"], ["resume", "999"]])
def test_unknown_run_id_exits_2(proj, args):
    registry_with_run(proj)
    res = invoke(proj, *args)
    assert res.exit_code == 2, res.output
    assert "no run with id 999" in res.output


def test_registry_get_unknown_is_run_not_found(proj):
    reg, _ = registry_with_run(proj)
    with pytest.raises(RunNotFound) as info:
        reg.get(999)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("command", ["resume", "cancel"])
def test_resume_or_cancel_of_a_done_run_exits_2(proj, command):
    reg, run = registry_with_run(proj, "done")
    res = invoke(proj, command, str(run["id"]))
    assert res.exit_code == 2, res.output
    assert f"run {run['id']} is done" in res.output and "dwc run demo" in res.output
    row = reg.get(run["id"])
    assert row["status"] == "done" and row["resumes"] == 0 and not row["cancel_requested"]


def test_registry_guards_for_done_runs(proj):
    reg, run = registry_with_run(proj, "done")
    with pytest.raises(UsageError, match="is done"):
        reg.requeue(run["id"])
    with pytest.raises(UsageError, match="is done"):
        reg.request_cancel(run["id"])


def test_user_input_is_not_read_as_markup(proj):
    res = invoke(proj, "run", "[red]x")
    assert res.exit_code == 2
    assert "no experiment named '[red]x'" in res.output


def test_outside_any_project_says_so(tmp_path):
    res = invoke(tmp_path, "show", "1")
    assert res.exit_code == 2
    assert "not a dwc project" in res.output and "experiments.yaml" in res.output


# ------------------------------------------------------------------------------------------ 9, 8, 10: registry
def test_locked_registry_is_one_line_exit_3(proj):
    reg, run = registry_with_run(proj)
    reg.close()
    holder = sqlite3.connect(proj / "runs" / "registry.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        res = dwc(proj, "cancel", str(run["id"]), env={"DWC_BUSY_TIMEOUT_S": "0.5"})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert res.returncode == 3, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(" ".join(lines)) < 400 and "is locked" in res.stderr and "registry.db" in res.stderr


def _corrupt_pages(path: Path) -> None:
    """Overwrite every page after the first with garbage (the header stays valid: SQLite opens the file, then
    finds the damage when it reads a table)."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for i in range(page, len(data)):
        data[i] = (i * 37) % 251
    path.write_bytes(bytes(data))


def test_malformed_registry_exits_3_with_recover_hint_and_no_table(proj):
    reg, _ = registry_with_run(proj)
    for _ in range(20):
        reg.create_run("demo", default_config(), proj / "runs")
    reg.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    reg.close()
    _corrupt_pages(proj / "runs" / "registry.db")
    res = dwc(proj, "runs")
    assert res.returncode == 3, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert '.recover"' in res.stderr and "sqlite3" in res.stderr


def _bind_readonly(src: Path, dst: Path) -> bool:
    dst.mkdir()
    res = subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(dst)], capture_output=True)
    return res.returncode == 0


def test_read_only_project_lists_and_shows_but_refuses_writes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "experiments.yaml").write_text(GOOD)
    reg, run = registry_with_run(src)  # queued: cancelling it needs a write
    reg.close()
    ro = tmp_path / "ro"
    if not _bind_readonly(src, ro):
        pytest.skip("cannot bind-mount read-only here (needs root)")
    try:
        assert not os.access(ro / "runs" / "registry.db", os.W_OK)
        listing = dwc(ro, "runs", "--format", "json")
        assert listing.returncode == 0, listing.stderr
        assert [r["id"] for r in json.loads(listing.stdout)] == [run["id"]]
        assert listing.stderr.count("read-only") == 1
        show = dwc(ro, "show", str(run["id"]), "--format", "json")
        assert show.returncode == 0 and json.loads(show.stdout)["run"]["status"] == "queued"
        write = dwc(ro, "cancel", str(run["id"]))
        assert write.returncode == 3 and "read-only" in write.stderr and "Traceback" not in write.stderr
        write = dwc(ro, "eval", str(run["id"]))  # refused before it evaluates anything
        assert write.returncode == 3 and "read-only" in write.stderr and "Traceback" not in write.stderr
        write = dwc(ro, "run", "demo", "--queue")
        assert (
            write.returncode in (2, 3)
            and "read-only" in write.stderr.lower()
            and "Traceback" not in write.stderr
        )
    finally:
        _umount(ro)


# ----------------------------------------------------------------------------------------- 1: locks, liveness
def test_claim_and_requeue_refuse_a_run_whose_lock_is_held(proj):
    reg, run = registry_with_run(proj)
    lock = run_lock(run["run_dir"], run["id"]).acquire()
    try:
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
            reg.claim("w1", run_id=run["id"])
        assert reg.claim("w1") is None  # the next-by-priority pick skips it
        reg.set_status(run["id"], "lost", "lost")  # what a stale heartbeat used to do to a live trainer
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
            reg.requeue(run["id"])
    finally:
        lock.release()
    reg.requeue(run["id"])
    assert reg.get(run["id"])["status"] == "queued"


def test_live_trainer_with_a_stale_heartbeat_is_stalled_not_lost(proj):
    reg, run = registry_with_run(proj)
    reg.set_status(run["id"], "running", "running", pid=os.getpid(), host=socket.gethostname())
    reg.update(run["id"], heartbeat=time.time() - 1000)
    for _ in range(2):
        assert launcher.reap_lost(reg, socket.gethostname()) == []
    assert reg.get(run["id"])["status"] == "running"
    assert [e["kind"] for e in reg.events(run["id"])].count("stalled") == 1
    # a run whose heartbeat is stale on another host, with nobody alive to vouch for it, is still lost
    other, _ = registry_with_run(proj)
    other.set_status(2, "running", "running", pid=1, host="elsewhere")
    other.update(2, heartbeat=time.time() - 1000)
    assert launcher.reap_lost(reg, socket.gethostname()) == [2]


def test_a_failure_the_trainer_could_not_record_is_reconciled_from_train_log(proj):
    reg, run = registry_with_run(proj)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    reg.set_status(run["id"], "running", "running", pid=dead.pid, host=socket.gethostname())
    log = Path(run["run_dir"]) / "train.log"
    log.write_text(
        "\n=== 2026-11-23 10:00:00 start run 1 ===\n[10:00:05] failed: disk full at /x/best.pt: 0.1 MB free\n"
        "[10:00:05] could not record the failure in the registry (OperationalError: database or disk is full)\n"
    )
    launcher.reap_lost(reg, socket.gethostname())
    row = reg.get(run["id"])
    assert row["status"] == "failed" and row["error"].startswith("disk full at /x/best.pt")


# ---------------------------------------------------------------------------------- 2: run dirs, checkpoints
def test_emptied_registry_never_reuses_an_old_run_dir(proj):
    reg, old = registry_with_run(proj)
    (Path(old["run_dir"]) / "last.pt").write_bytes(b"old weights")
    reg.close()
    (proj / "runs" / "registry.db").write_bytes(b"")  # `: > runs/registry.db`
    for suffix in ("-wal", "-shm"):
        (proj / "runs" / f"registry.db{suffix}").unlink(missing_ok=True)
    reg = Registry(proj / "runs" / "registry.db")
    new = reg.create_run("demo", default_config(), proj / "runs")
    assert new["id"] == old["id"] and new["run_dir"] != old["run_dir"]
    assert not (Path(new["run_dir"]) / "last.pt").exists()
    assert (Path(old["run_dir"]) / "last.pt").read_bytes() == b"old weights"
    warnings = [e["message"] for e in reg.events(new["id"]) if e["kind"] == "warning"]
    assert warnings and "emptied or replaced" in warnings[0]
    assert new["uid"] and new["uid"] != old["uid"]


def test_checkpoint_of_another_run_or_config_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    from dwc_core.engine import checkpoint

    path = tmp_path / "last.pt"
    cfg = default_config()
    checkpoint.save_atomic(
        {"model": {"w": torch.zeros(2)}, "run_uid": "aaaa", "config_hash": checkpoint.config_hash(cfg)}, path
    )
    assert checkpoint.load(path, run_uid="aaaa", cfg_hash=checkpoint.config_hash(cfg))["run_uid"] == "aaaa"
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.load(path, run_uid="bbbb")
    assert "aaaa" in info.value.message and "bbbb" in info.value.message and str(path) in info.value.message
    other = default_config()
    other["trainer"]["seed"] = 7
    with pytest.raises(checkpoint.CheckpointError, match="another config"):
        checkpoint.load(path, run_uid="aaaa", cfg_hash=checkpoint.config_hash(other))


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_unreadable_checkpoint_names_the_file(tmp_path, damage):
    torch = pytest.importorskip("torch")
    from dwc_core.engine import checkpoint

    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"model": {"w": torch.randn(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.load(path)
    assert str(path) in info.value.message
    assert ("empty" if damage == "empty" else "corrupt") in info.value.message


# ----------------------------------------------------------------------------------------- 7, 5: disk, temps
def test_enospc_in_the_checkpoint_writer_is_disk_full_and_leaves_no_temp(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from dwc_core.engine import checkpoint

    def full(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFull, match=f"disk full at {tmp_path / 'best.pt'}"):
        checkpoint.save_atomic({"model": {}}, tmp_path / "best.pt")
    assert list(tmp_path.iterdir()) == []


def _umount(path: Path) -> None:
    """Unmount; lazily if something (a connection not yet collected) still holds a file there."""
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode == 0


def test_checkpoint_on_a_full_tmpfs_is_disk_full(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from dwc_core.engine import checkpoint

    small = tmp_path / "small"
    if not _tmpfs(small, "6m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        big = {
            "model": {"w": torch.zeros(3 * 2**20 // 4)}
        }  # 3 MB: the free-space check (3 MB + 4 MB) refuses it
        with pytest.raises(DiskFull, match="disk full at .*needs about 3.0 MB"):
            checkpoint.save_atomic(big, small / "best.pt")
        monkeypatch.setattr(
            checkpoint, "check_free_space", lambda *a: None
        )  # the write itself runs out of space
        with pytest.raises(DiskFull, match=f"disk full at {small / 'best.pt'}"):
            checkpoint.save_atomic({"model": {"w": torch.zeros(8 * 2**20 // 4)}}, small / "best.pt")
        assert list(small.iterdir()) == []
    finally:
        _umount(small)


def test_orphan_checkpoint_temps_are_found_and_removed(tmp_path):
    from dwc_core.fileio import remove_files, temp_files

    for name in (".last.pt.tmp123", ".best.pt.tmp456", "last.pt", "train.log"):
        (tmp_path / name).write_bytes(b"x" * 10)
    removed = temp_files(tmp_path)
    assert remove_files(removed) == 20
    assert sorted(p.name for p, _ in removed) == [".best.pt.tmp456", ".last.pt.tmp123"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "train.log"]


def test_metrics_file_is_trimmed_like_the_registry(tmp_path):
    pytest.importorskip("torch")
    from dwc_core.engine.train import trim_metrics_file

    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "split": "train", "name": "loss", "value": 1.0} for s in (10, 20, 30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4')  # a torn last line
    assert trim_metrics_file(path, 20) == 2
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [10, 20]
    assert trim_metrics_file(path, -1) == 2 and path.read_text() == ""


# ------------------------------------------------------------------------------------- 12, 13, 15: config
def test_missing_dataset_root_exits_2_and_creates_nothing(proj):
    res = invoke(proj, "run", "fiq")
    assert res.exit_code == 2, res.output
    assert "/nonexistent/fashioniq" in res.output
    assert not (proj / "runs" / "registry.db").exists()


def test_unusable_cache_dir_names_the_option(proj):
    res = invoke(proj, "run", "demo", "--set", "dataset.cache_dir=/proc/nope")
    assert res.exit_code == 2, res.output
    assert "dataset.cache_dir" in res.output and "/proc/nope" in res.output
    assert not (proj / "runs" / "registry.db").exists()


def _eval_set(n_gallery: int, ks=(1, 5, 10, 50)) -> EvalSet:
    gallery = [f"g{i}" for i in range(n_gallery)]
    return EvalSet(
        name="test", queries=[Query(ref="g0", text="t", target="g1")], gallery=gallery, ks=list(ks)
    )


def test_recall_cutoff_not_below_the_gallery_is_an_error():
    cfg = default_config()
    with pytest.raises(ConfigError) as info:
        check_eval_sizes(cfg, {"test": _eval_set(20)})
    assert "20 images" in info.value.message and "Recall@50" in info.value.message
    check_eval_sizes(cfg, {"test": _eval_set(51)})
    cfg["eval"]["ks"] = [1, 5, 10, 500]
    with pytest.raises(ConfigError, match="eval.ks"):
        check_eval_sizes(cfg, {"test": _eval_set(100)})


def test_tiny_validation_split_is_an_error_unless_allowed():
    cfg = default_config()
    cfg["trainer"]["val_fraction"] = 0.001
    with pytest.raises(ConfigError, match="only 1 validation queries"):
        check_eval_sizes(cfg, {"test": _eval_set(100)}, val_queries=1)
    cfg["trainer"]["val_min_queries"] = 1
    check_eval_sizes(cfg, {"test": _eval_set(100)}, val_queries=1)


def test_a_gallery_below_k_names_the_option_that_sizes_that_split():
    """A small val split's gallery is raised by trainer.val_fraction, not dataset.num_test; a real dataset's by
    pointing dataset.root at the whole split."""
    cfg = default_config()
    with pytest.raises(ConfigError) as info:
        check_eval_sizes(cfg, {"val": _eval_set(30)})
    assert "trainer.val_fraction" in info.value.message and "num_test" not in info.value.message
    with pytest.raises(ConfigError) as info:
        check_eval_sizes(cfg, {"test": _eval_set(30)})
    assert "dataset.num_test" in info.value.message
    cfg["dataset"] = {"name": "shoes", "root": "/data/shoes"}
    with pytest.raises(ConfigError) as info:
        check_eval_sizes(cfg, {"test": _eval_set(30)})
    assert "dwc data check shoes" in info.value.message and "num_test" not in info.value.message


@pytest.mark.parametrize(
    ("section", "text", "expected"),
    [
        ("model", "model: {name: tirgg, embed_dim: 256}", "model.name = 'tirgg' is not a known method. Did you mean 'tirg'"),
        ("dataset", "dataset: {name: synthtic, num_train: 5}", "dataset.name = 'synthtic' is not a known dataset"),
    ],
)  # fmt: skip
def test_unknown_name_is_reported_alone(section, text, expected):
    other = "model: {name: tirg}" if section == "dataset" else "dataset: {name: synthetic}"
    yaml_text = f"experiments:\n  a:\n    {text}\n    {other}\n"
    with pytest.raises(ConfigError) as info:
        ExperimentsFile(yaml_text).resolve("a")
    assert expected in info.value.message
    assert "embed_dim" not in info.value.message and "num_train" not in info.value.message


# ------------------------------------------------------------------------------------------------- 18
def test_models_builds_nothing_unless_counts_are_asked_for(proj):
    res = invoke(proj, "models")
    assert res.exit_code == 0 and "tirg" in res.output
    assert not (proj / "runs" / ".cache").exists()


def test_full_disk_under_the_registry_is_one_line_exit_3(tmp_path):
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "2m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        (disk / "experiments.yaml").write_text(GOOD)
        reg, run = registry_with_run(disk)
        reg.close()
        with open(disk / "filler", "wb") as fh, pytest.raises(OSError):  # fill the disk to the last block
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        res = dwc(disk, "cancel", str(run["id"]))
        assert res.returncode == 3, res.stdout + res.stderr
        assert "disk is full" in res.stderr and "Traceback" not in res.stderr
        (disk / "filler").unlink()
        res = dwc(disk, "cancel", str(run["id"]))
        assert res.returncode == 0, res.stderr
        after = Registry(disk / "runs" / "registry.db")
        assert after.get(run["id"])["status"] == "cancelled"
        after.close()
    finally:
        _umount(disk)


def test_run_reports_run_dirs_an_emptied_registry_does_not_know(proj):
    for _ in range(2):
        res = dwc(proj, "run", "demo", "--queue")
        assert res.returncode == 0 and "not in this registry" not in res.stderr
    (proj / "runs" / "registry.db").write_bytes(b"")  # `: > runs/registry.db` (no process has it open)
    res = dwc(proj, "run", "demo", "--queue")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stderr.split())
    assert "2 run directories" in text and "emptied or replaced" in text
    reg = Registry(proj / "runs" / "registry.db")
    assert [p.name for p in reg.unknown_run_dirs(proj / "runs")] == ["1-demo", "2-demo"]
    assert Path(reg.get(1)["run_dir"]).name.startswith("1-demo-")


def test_library_warnings_of_dwc_eval_go_to_train_log(tmp_path, capsys):
    pytest.importorskip("torch")
    import logging
    import warnings

    from dwc_core.engine.reeval import library_warnings_to

    log = tmp_path / "train.log"
    with library_warnings_to(log):
        for _ in range(2):
            logging.warning("No pretrained weights loaded")
            warnings.warn("a library deprecation", UserWarning, stacklevel=1)
    text = log.read_text()
    assert text.count("No pretrained weights loaded") == 1 and text.count("py.warnings") == 1
    captured = capsys.readouterr()
    assert "pretrained" not in captured.err + captured.out
