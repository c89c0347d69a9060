"""Atomic file writes: a reader sees the old file or the new one, never a torn or empty one.

A write goes to a temp file in the target's own directory (so the rename never crosses file systems), named
``.<name>.tmp<pid>-<token>``: hidden, naming the writing process, unique per write so that two writers (threads,
processes, hosts on a shared file system) never share one. The temp file is flushed and fsync'ed, then renamed
over the target with ``os.replace``; on any error, or an interruption, it is removed and the error goes on. With
``fsync_dir`` the directory is fsync'ed after the rename, so the rename itself survives a power loss.

:func:`atomic_path` serves writers that want a file name (``torch.save``, ``np.memmap``);
:func:`atomic_write_bytes` / :func:`atomic_write_text` write data they are given. :func:`require_free_space` and
:func:`preallocate` turn a full disk into :class:`~dwc_core.errors.DiskFull` ("disk full at <path>") before a large
write starts (a memory-mapped write into a sparse file on a full disk would die of SIGBUS). Torch-free, stdlib only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from dwc_core.errors import DiskFull

TMP_MARK = ".tmp"  # temp files are ".<name>.tmp<pid>-<token>": glob ".<name>.tmp*" finds a killed write's


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temp file name beside ``path`` (not created)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


#: space kept free beyond a large write, so that the registry and logs can still record what happened
RESERVE_BYTES = 4 * 2**20
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def megabytes(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def require_free_space(path: str | os.PathLike, needed: int, what: str, then: str) -> None:
    """Raise :class:`DiskFull` if the file system that will hold ``path`` has less than ``needed`` bytes plus
    :data:`RESERVE_BYTES` free. ``what`` names the write ("the checkpoint"), ``then`` the way on."""
    path = Path(path)
    free = shutil.disk_usage(path.parent).free
    if free < needed + RESERVE_BYTES:
        raise DiskFull(
            f"disk full at {path}: {megabytes(free)} free, {what} needs about {megabytes(needed)} (plus "
            f"{megabytes(RESERVE_BYTES)} kept for the registry and logs). Free some space, then {then}."
        )


def preallocate(path: str | os.PathLike, size: int, what: str, then: str) -> None:
    """Create ``path`` with ``size`` bytes whose blocks are reserved on disk (``posix_fallocate``; a sparse file
    where the file system cannot), so that writing into it through a memory map cannot run out of space."""
    path = Path(path)
    with open(path, "wb") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as exc:
            if exc.errno in NO_SPACE:
                free = shutil.disk_usage(path.parent).free
                raise DiskFull(
                    f"disk full at {path}: {what} needs {megabytes(size)}, {megabytes(free)} free. Free some "
                    f"space, then {then}."
                ) from None
            f.truncate(size)  # no fallocate here (EOPNOTSUPP, EINVAL): the free-space check stands alone
        except AttributeError:  # a platform without posix_fallocate
            f.truncate(size)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's data to the disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(folder: str | os.PathLike) -> None:
    """Make a rename or creation in ``folder`` durable. A file system that cannot fsync a directory is skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, *, fsync: bool = True, fsync_dir: bool = False, mode: int | None = None
) -> Iterator[Path]:
    """Yield a temp path beside ``path`` to write; when the block ends normally the temp file is fsync'ed
    (``fsync``), given permission bits ``mode`` (if not None) and renamed onto ``path``. When the block (or any
    of that) raises, the temp file is removed and the exception propagates; ``path`` is left as it was."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    if fsync_dir:
        fsync_directory(path.parent)


def atomic_write_bytes(
    path: str | os.PathLike,
    data: bytes,
    *,
    fsync: bool = True,
    fsync_dir: bool = False,
    mode: int | None = None,
) -> None:
    """Replace ``path`` with ``data`` atomically (see the module summary). The file gets the usual permissions
    (0666 less the umask) unless ``mode`` is given."""
    with atomic_path(path, fsync=False, fsync_dir=fsync_dir, mode=mode) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())


def atomic_write_text(
    path: str | os.PathLike,
    text: str,
    *,
    encoding: str = "utf-8",
    fsync: bool = True,
    fsync_dir: bool = False,
    mode: int | None = None,
) -> None:
    """Replace ``path`` with ``text`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode(encoding), fsync=fsync, fsync_dir=fsync_dir, mode=mode)


# ------------------------------------------------------------------------------------- temp files of killed writes
def temp_files(folder: str | os.PathLike, dead_writers_only: bool = False) -> list[tuple[Path, int]]:
    """The temp files of writes in ``folder`` (``.<name>.tmp…``, sorted) with their sizes. Any that exists while
    no write is under way belongs to a write that was killed. ``dead_writers_only`` keeps only those whose writer
    (the pid in the name) is not alive on this host — for a caller that cannot rule out a live writer."""
    out = []
    for p in sorted(Path(folder).glob(f".*{TMP_MARK}*")):
        try:
            if p.is_file() and not (dead_writers_only and _writer_alive(p.name)):
                out.append((p, p.stat().st_size))
        except OSError:
            continue
    return out


def remove_files(files: list[tuple[Path, int]]) -> int:
    """Delete ``(path, size)`` files (those already gone are skipped); returns the bytes freed."""
    freed = 0
    for path, size in files:
        with contextlib.suppress(OSError):
            path.unlink()
            freed += size
    return freed


def _writer_alive(name: str) -> bool:
    """Whether the process named in a temp file's name (``….tmp<pid>`` or ``….tmp<pid>-<token>``) lives here."""
    digits = name.rsplit(TMP_MARK, 1)[-1].split("-", 1)[0]
    if not digits.isdigit():
        return False
    try:
        os.kill(int(digits), 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True
