"""Reading the registry for the dashboard, incrementally, off the UI thread.

A :class:`Poller` is called from a Textual thread worker, one poll at a time (the app re-arms it after each poll).
It keeps the state it has seen (run rows, loss tails, the focused run's curves) and asks SQLite only for what
changed since the last poll:

* runs: new ids, rows whose ``heartbeat`` moved, rows named by new ``events`` (every status change writes one),
  and every ``FULL_EVERY`` polls all rows' raw columns (catches plain column updates such as soft-deletes; only
  the rows whose raw values changed are then decoded, formatted and sent to the UI);
* metrics: rows with an id above the last one seen (the table's primary key), appended to loss tails and to the
  focused run's curves.

Each poll returns a :class:`Snapshot` of plain data (formatted cells for the rows that changed) which the UI
applies without any SQL. The registry (:class:`dwc_core.runs.registry.Registry`, used read-only) is opened afresh
for each poll, because a thread worker runs on a new thread each time and a sqlite3 connection belongs to the
thread that opened it.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from dwc_core.errors import RegistryError
from dwc_tui.app import rows as fmt

TAIL = 24  # loss points kept per run for the table sparkline
FULL_EVERY = 15  # polls between full re-reads of the runs table
MAX_INCREMENT = 200_000  # more new metric rows than this at once: re-read tails instead of replaying them
LOG_TAIL_BYTES = 16_384
WORKERS_EVERY_S = 3.0  # how often the header's worker count is re-read

# the columns a full re-read compares, raw (the JSON ones as their text; the config, frozen at creation, by its
# length alone): only the rows whose raw values differ from the last ones seen are read whole, decoded and formatted
SIG_COLUMNS = (
    "id, experiment, status, variant, seed, created, started, ended, heartbeat, epoch, epochs, step, total_steps, "
    "progress, best_value, best_epoch, best_metrics, last_metrics, deleted, error, run_dir, worker, host, gpus, "
    "slurm_job, slurm_state, slurm_reason, slurm_nodes, slurm_requeues, pid, length(config)"
)
N_SIG = SIG_COLUMNS.count(",") + 1
RUN_COLUMNS = (
    f"{SIG_COLUMNS}, "
    "json_extract(config, '$.model.name') AS method, json_extract(config, '$.dataset.name') AS dataset"
)
IN_CHUNK = 500  # ids per "id IN (...)" (SQLite allows 999 parameters on old builds)


@dataclass
class Focus:
    """The selected run's live curves (full series; the plot widget downsamples)."""

    run_id: int
    loss: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []))
    recall: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    log_tail: list[str] = field(default_factory=list)
    version: int = 0  # bumps when the curves change


@dataclass
class Snapshot:
    rows: dict[int, dict]  # run id → display row, for the runs that changed (or all, when ``full``)
    removed: set[int]  # ids no longer shown (soft-deleted)
    full: bool
    counts: dict[str, int]
    workers: int
    gpus: list[str]
    focus: Focus | None
    poll_ms: float
    error: str | None = None
    readonly: bool = False  # the registry file or its folder is not writable here (e.g. a read-only mount)


class Poller:
    def __init__(self, registry_path: Path, visible_gpus=None):
        self.registry_path = Path(registry_path)
        self.runs: dict[int, dict] = {}
        # run id → its raw SIG_COLUMNS when last read (full re-reads compare them)
        self._sigs: dict[int, tuple] = {}
        self.tails: dict[int, deque] = {}
        self.max_run_id = 0
        self.max_heartbeat = 0.0
        self.max_event_id = 0
        self.max_metric_id = -1  # -1: not initialised
        self.polls = 0
        self.focus_id: int | None = None
        self.focus: Focus | None = None
        self._log_sig: tuple | None = None
        self._gpus: list[str] | None = None
        self._visible_gpus = visible_gpus
        self._workers = 0
        self._workers_at = float("-inf")
        self._lock = threading.Lock()  # one poll at a time (the app starts the next once one is applied)

    # ---------------------------------------------------------------------------------------------------- api
    def set_focus(self, run_id: int | None) -> None:
        """Called from the UI thread: which run the detail pane shows (loaded at the next poll)."""
        self.focus_id = run_id

    def poll(self) -> Snapshot:
        with self._lock:
            return self._poll()

    def _poll(self) -> Snapshot:
        t0 = time.perf_counter()
        if self._gpus is None:
            self._gpus = self._read_gpus()
        if not self.registry_path.exists():
            return Snapshot({}, set(), True, fmt.counts({}), 0, self._gpus, None, 0.0)
        conn, readonly = open_registry(self.registry_path)
        try:
            full = self.polls % FULL_EVERY == 0
            self.polls += 1
            changed, removed = self._poll_runs(conn, full)
            self._poll_metrics(conn, changed)
            focus = self._poll_focus(conn)
        finally:
            conn.close()
        if full:
            self._reconcile_dead()
        now = time.time()
        shown = {rid: r for rid, r in self.runs.items() if not r["deleted"]}
        # the first snapshot carries every row; later ones what changed (and `removed`)
        first = self.polls == 1
        ids = shown if first else {rid for rid in changed if rid in shown}
        # elapsed / ETA move for active runs even without a new row
        ids = set(ids) | {rid for rid, r in shown.items() if r["status"] in ("running", "starting")}
        rows = {rid: fmt.display_row(shown[rid], list(self.tails.get(rid, ())), now) for rid in ids}
        workers = self._live_workers()
        return Snapshot(
            rows=rows,
            removed=removed,
            full=first,
            counts=fmt.counts(shown),
            workers=workers,
            gpus=self._gpus,
            focus=focus,
            poll_ms=(time.perf_counter() - t0) * 1000,
            readonly=readonly,
        )

    def _live_workers(self) -> int:
        """Live workers of the project (`dwc workers`' count: runs/workers/ files whose holder lives), read every
        WORKERS_EVERY_S. Not on the first poll: the table is drawn before the registry modules load."""
        if self.polls <= 1:
            return self._workers
        now = time.monotonic()
        if now - self._workers_at >= WORKERS_EVERY_S:
            from dwc_core.runs.control import live_workers

            with contextlib.suppress(OSError):  # the folder being written meanwhile: the last count stands
                self._workers = len(live_workers(self.registry_path.parent.parent))
            self._workers_at = now
        return self._workers

    def _reconcile_dead(self) -> None:
        """An active run of this host whose process is gone (trainer and worker killed, nothing recorded) is marked
        lost as `dwc runs` would (the next poll shows it): a dashboard left open never shows a dead run running."""
        from dwc_core.runs.launcher import pid_alive  # not on the start path (it loads the registry module)

        host = socket.gethostname()
        dead = [
            r for r in self.runs.values()
            if r["status"] in ("running", "starting") and r["host"] == host and r.get("pid")
            and not pid_alive(r["pid"])
        ]  # fmt: skip
        if not dead:
            return
        from dwc_core.runs.control import reconcile
        from dwc_core.runs.registry import Registry

        try:
            registry = Registry(self.registry_path, create=False)
            try:
                reconcile(registry)  # a read-only registry is left as it is
            finally:
                registry.close()
        except (RegistryError, sqlite3.Error):
            pass  # shown as it is; the next full poll tries again

    # ----------------------------------------------------------------------------------------------- runs
    def _poll_runs(self, conn: sqlite3.Connection, full: bool) -> tuple[set[int], set[int]]:
        max_event = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
        changed: set[int] = set()
        removed: set[int] = set()
        if full:
            # every row's raw columns (no JSON decoded, no config read): only those that differ are read whole
            raw = conn.cursor()
            raw.row_factory = None
            seen: set[int] = set()
            differ: list[int] = []
            for sig in raw.execute(f"SELECT {SIG_COLUMNS} FROM runs"):
                seen.add(sig[0])
                if self._sigs.get(sig[0]) != sig:
                    differ.append(sig[0])
            for rid in set(self.runs) - seen:  # rows gone from the file (a registry replaced under us)
                removed.add(rid)
                del self.runs[rid]
                self._sigs.pop(rid, None)
            queries = [
                (f"SELECT {RUN_COLUMNS} FROM runs WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                for chunk in (differ[i : i + IN_CHUNK] for i in range(0, len(differ), IN_CHUNK))
            ]
        else:
            queries = [
                (
                    f"SELECT {RUN_COLUMNS} FROM runs WHERE id > ? OR heartbeat > ? "
                    "OR id IN (SELECT run_id FROM events WHERE id > ?)",
                    (self.max_run_id, self.max_heartbeat, self.max_event_id),
                )
            ]
        for sql, params in queries:
            for row in conn.execute(sql, params):
                self._sigs[row[0]] = tuple(row)[:N_SIG]
                r = fmt.decode_run(dict(row))
                rid = r["id"]
                old = self.runs.get(rid)
                if old is not None and not old["deleted"] and r["deleted"]:
                    removed.add(rid)
                self.runs[rid] = r
                if full and old == r:
                    continue  # only rows that differ are re-drawn
                changed.add(rid)
                self.max_run_id = max(self.max_run_id, rid)
                self.max_heartbeat = max(self.max_heartbeat, r["heartbeat"] or 0.0)
        self.max_event_id = max_event
        return changed, removed

    # -------------------------------------------------------------------------------------------- metrics
    def _poll_metrics(self, conn: sqlite3.Connection, changed: set[int]) -> None:
        top = conn.execute("SELECT COALESCE(MAX(id), 0) FROM metrics").fetchone()[0]
        if self.max_metric_id < 0 or top - self.max_metric_id > MAX_INCREMENT or top < self.max_metric_id:
            self.tails = {rid: self._read_tail(conn, rid) for rid in self.runs}
            self.max_metric_id = top
            if self.focus is not None:
                self.focus = None  # reloaded below
            changed.update(self.runs)
            return
        for rid in self.runs.keys() - self.tails.keys():
            self.tails[rid] = self._read_tail(conn, rid)
        if top == self.max_metric_id:
            return
        focus = self.focus
        for _mid, rid, _step, epoch, split, name, value in conn.execute(
            "SELECT id, run_id, step, epoch, split, name, value FROM metrics WHERE id > ? AND id <= ? ORDER BY id",
            (self.max_metric_id, top),
        ):
            if split == "train" and name == "loss":
                self.tails.setdefault(rid, deque(maxlen=TAIL)).append(value)
                changed.add(rid)
            if focus is not None and rid == focus.run_id:
                _add_point(focus, epoch, split, name, value)
        self.max_metric_id = top

    @staticmethod
    def _read_tail(conn: sqlite3.Connection, rid: int) -> deque:
        vals = [
            v
            for (v,) in conn.execute(
                "SELECT value FROM metrics WHERE run_id = ? AND split = 'train' AND name = 'loss' "
                "ORDER BY step DESC LIMIT ?",
                (rid, TAIL),
            )
        ]
        return deque(reversed(vals), maxlen=TAIL)

    # ----------------------------------------------------------------------------------------------- focus
    def _poll_focus(self, conn: sqlite3.Connection) -> Focus | None:
        rid = self.focus_id
        if rid is None or rid not in self.runs:
            self.focus = None
            return None
        if self.focus is None or self.focus.run_id != rid:
            focus = Focus(rid)
            for epoch, split, name, value in conn.execute(
                "SELECT epoch, split, name, value FROM metrics WHERE run_id = ? AND id <= ? "
                "AND ((split = 'train' AND name = 'loss') OR split = 'test') ORDER BY step, id",
                (rid, self.max_metric_id),
            ):
                _add_point(focus, epoch, split, name, value)
            self.focus = focus
            self._log_sig = None
        focus = self.focus
        self._read_log(focus, self.runs[rid].get("run_dir"))
        return Focus(
            focus.run_id,
            (list(focus.loss[0]), list(focus.loss[1])),
            {k: (list(x), list(y)) for k, (x, y) in focus.recall.items()},
            list(focus.log_tail),
            focus.version,
        )

    def _read_log(self, focus: Focus, run_dir: str | None) -> None:
        if not run_dir:
            return
        path = Path(run_dir) / "train.log"
        try:
            st = path.stat()
        except OSError:
            focus.log_tail = []
            return
        sig = (focus.run_id, st.st_size, st.st_mtime_ns)
        if sig == self._log_sig:
            return
        self._log_sig = sig
        focus.log_tail = read_tail_lines(path, 40)

    def _read_gpus(self) -> list[str]:
        try:
            if self._visible_gpus is not None:
                return list(self._visible_gpus())
            from dwc_core.runs.gpus import visible_gpus

            return visible_gpus()
        except Exception:  # GPU discovery must never break the dashboard
            return []


# ----------------------------------------------------------------------------------------------- helpers
def _add_point(focus: Focus, epoch: float, split: str, name: str, value: float) -> None:
    if split == "train" and name == "loss":
        focus.loss[0].append(float(epoch))
        focus.loss[1].append(float(value))
    elif split == "test" and (name.startswith("R@") or name.startswith("avg/R@") or name == "mean"):
        xs, ys = focus.recall.setdefault(name, ([], []))
        xs.append(float(epoch))
        ys.append(float(value))
    else:
        return
    focus.version += 1


def read_tail_lines(path: Path, n: int) -> list[str]:
    """The last ``n`` lines of a (possibly large, possibly growing) text file."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - LOG_TAIL_BYTES))
            data = fh.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").replace("\r", "\n").splitlines()
    if size > LOG_TAIL_BYTES and lines:
        lines = lines[1:]  # first one is probably cut
    return [ln for ln in lines if ln.strip()][-n:]


def open_read(path: Path) -> sqlite3.Connection:
    """The registry's connection for the current thread, after checking that this dwc knows its schema."""
    return open_registry(path)[0]


def open_registry(path: Path) -> tuple[sqlite3.Connection, bool]:
    """:func:`open_read`'s connection, and whether the registry is read-only here (opened for reading only)."""
    from dwc_core.runs.registry import Registry

    reg = Registry(path, create=False)
    return check_schema(reg.conn, path), reg.readonly


def check_schema(conn: sqlite3.Connection, path: Path) -> sqlite3.Connection:
    """`conn`, once this dwc knows every schema change its registry has; otherwise it is closed and a clear
    RegistryError raised."""
    from dwc_core.runs.registry import MIGRATIONS

    try:
        names = {n for (n,) in conn.execute("SELECT name FROM _dwc_migrations")}
    except sqlite3.Error as exc:
        conn.close()
        raise RegistryError(f"{path}: cannot read the run registry: {exc}.") from None
    newer = sorted(names - {n for n, _ in MIGRATIONS})
    if newer:
        conn.close()
        raise RegistryError(
            f"{path}: this registry was written by a newer version of dwc (schema changes "
            f"{', '.join(newer)} are unknown here). Upgrade dwc on this machine to open it."
        )
    return conn
