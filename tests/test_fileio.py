"""dwc_core.fileio: atomic writes leave the old file or the new one, never a torn one, and never a temp file
behind; the data is fsync'ed before the rename."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from dwc_core import fileio


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if fileio.TMP_MARK in p.name)


def test_write_text_and_bytes_replace_the_file_with_usual_permissions(tmp_path):
    path = tmp_path / "status.json"
    fileio.atomic_write_text(path, '{"a": 1}')
    assert path.read_text() == '{"a": 1}'
    fileio.atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    fileio.atomic_write_text(path, "#!/bin/sh\n", mode=0o755)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert _leftovers(tmp_path) == []


def test_temp_file_is_hidden_beside_the_target_names_the_pid_and_is_unique(tmp_path):
    a, b = fileio.temp_path(tmp_path / "last.pt"), fileio.temp_path(tmp_path / "last.pt")
    assert a.parent == tmp_path and a != b
    assert a.name.startswith(f".last.pt.tmp{os.getpid()}-")
    assert a.match(".*.pt.tmp*")  # what fileio.temp_files finds


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failure_inside_the_block_keeps_the_old_file_and_removes_the_temp(tmp_path, exc):
    path = tmp_path / "best.pt"
    path.write_bytes(b"old")
    with pytest.raises(type(exc)), fileio.atomic_path(path) as tmp:
        tmp.write_bytes(b"half-writ")
        raise exc
    assert path.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_failing_rename_keeps_the_old_file_and_removes_the_temp(tmp_path, monkeypatch):
    path = tmp_path / "meta.json"
    path.write_text("old")

    def broken(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fileio.os, "replace", broken)
    with pytest.raises(OSError, match="Input/output"):
        fileio.atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_data_is_fsynced_before_the_rename_and_the_directory_on_request(tmp_path, monkeypatch):
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def replace(src, dst):
        calls.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    monkeypatch.setattr(fileio.os, "replace", replace)
    fileio.atomic_write_text(tmp_path / "a", "x", fsync_dir=True)
    assert calls == ["file", "replace", "dir"]
    calls.clear()
    with fileio.atomic_path(tmp_path / "b") as tmp:  # a writer that wants a name (torch.save, np.memmap)
        tmp.write_bytes(b"y")
    assert calls == ["file", "replace"] and (tmp_path / "b").read_bytes() == b"y"
    calls.clear()
    fileio.atomic_write_text(tmp_path / "c", "z", fsync=False)
    assert calls == ["replace"]


def test_concurrent_writers_never_show_a_reader_a_torn_file(tmp_path):
    path = tmp_path / "heartbeat.json"
    size = 200_000
    fileio.atomic_write_bytes(path, b"a" * size)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(byte: bytes) -> None:
        try:
            for _ in range(40):
                fileio.atomic_write_bytes(path, byte * size, fsync=False)
        except BaseException as exc:  # noqa: BLE001 — reported by the test below
            errors.append(exc)

    seen = set()

    def reader() -> None:
        while not stop.is_set():
            data = path.read_bytes()
            seen.add((len(data), data[:1], data[-1:]))
            if len(data) != size or data.count(data[:1]) != size:
                errors.append(AssertionError(f"torn read: {len(data)} bytes"))
                return

    threads = [threading.Thread(target=writer, args=(b,)) for b in (b"x", b"y")]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    r.join()
    assert errors == []
    assert all(n == size for n, _, _ in seen)
    assert path.read_bytes() in (b"x" * size, b"y" * size)
    assert _leftovers(tmp_path) == []
