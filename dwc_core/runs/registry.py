"""The run registry: one SQLite file (WAL) indexing runs, their metrics, events, evaluations and per-query results.

Built on sqlite-utils for schema management and queries. Every state change is a short ``BEGIN IMMEDIATE``
transaction (so concurrent writers wait on the busy timeout instead of failing), and schema migrations are applied
once, in order, before anything else touches the file. Torch-free.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dwc_core.errors import RegistryError, RunLocked, RunNotFound, UsageError
from dwc_core.runs.locks import describe_holder, run_lock_holder

if TYPE_CHECKING:
    import sqlite_utils

BUSY_TIMEOUT_S = float(os.environ.get("DWC_BUSY_TIMEOUT_S", 30.0))
STATUSES = ("queued", "starting", "running", "done", "failed", "cancelled", "lost")
ACTIVE = ("starting", "running")
FINISHED = ("done", "failed", "cancelled", "lost")
JSON_COLUMNS = ("config", "variant", "versions", "gpus", "progress", "last_metrics", "best_metrics", "tags")


# --------------------------------------------------------------------------------------------------- migrations
def _m001_initial(db: sqlite_utils.Database) -> None:
    db["runs"].create(
        {
            "id": int,
            "experiment": str,
            "status": str,
            "config": str,
            "variant": str,
            "seed": int,
            "priority": int,
            "created": float,
            "claimed": float,
            "started": float,
            "ended": float,
            "worker": str,
            "host": str,
            "pid": int,
            "pgid": int,
            "gpus": str,
            "device": str,
            "heartbeat": float,
            "epoch": int,
            "epochs": int,
            "step": int,
            "total_steps": int,
            "progress": str,
            "best_metric": str,
            "best_value": float,
            "best_epoch": int,
            "best_metrics": str,
            "last_metrics": str,
            "git_commit": str,
            "git_dirty": int,
            "versions": str,
            "run_dir": str,
            "exit_code": int,
            "error": str,
            "cancel_requested": int,
            "resumes": int,
            "deleted": int,
            "skipped_queries": int,
        },
        pk="id",
        not_null={"experiment", "status", "config", "created"},
        defaults={"priority": 0, "cancel_requested": 0, "resumes": 0, "deleted": 0, "epoch": 0, "step": 0},
    )
    db["runs"].create_index(["status", "priority"])
    db["metrics"].create(
        {
            "id": int,
            "run_id": int,
            "step": int,
            "epoch": float,
            "split": str,
            "name": str,
            "value": float,
            "time": float,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["metrics"].create_index(["run_id", "split", "name", "step"], unique=True)
    db["events"].create(
        {"id": int, "run_id": int, "time": float, "kind": str, "message": str},
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["events"].create_index(["run_id", "time"])
    db["evaluations"].create(
        {
            "id": int,
            "run_id": int,
            "epoch": int,
            "step": int,
            "kind": str,
            "split": str,
            "checkpoint": str,
            "protocol": str,
            "metrics": str,
            "num_queries": int,
            "gallery_size": int,
            "skipped_queries": int,
            "is_best": int,
            "time": float,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
        defaults={"is_best": 0},
    )
    db["evaluations"].create_index(["run_id", "epoch"])
    db["query_results"].create(
        {
            "id": int,
            "run_id": int,
            "evaluation_id": int,
            "eval_set": str,
            "qidx": int,
            "ref_id": str,
            "text": str,
            "target_ids": str,
            "topk_ids": str,
            "topk_scores": str,
            "target_rank": int,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id"), ("evaluation_id", "evaluations", "id")],
    )
    db["query_results"].create_index(["evaluation_id", "eval_set", "qidx"], unique=True)


def _m002_queue(db: sqlite_utils.Database) -> None:
    """Queue columns: hold flag, tags (JSON list, copied from the frozen config by a trigger), the CPU share a
    worker gave the run, and when it was soft-deleted."""
    runs = db["runs"]
    runs.add_column("hold", int, not_null_default=0)
    runs.add_column("tags", str)
    runs.add_column("cpu_threads", int)
    runs.add_column("data_workers", int)
    runs.add_column("deleted_at", float)
    db.execute("UPDATE runs SET tags = COALESCE(json_extract(config, '$.tags'), '[]')")
    db.execute(
        "CREATE TRIGGER runs_tags_on_insert AFTER INSERT ON runs BEGIN "
        "UPDATE runs SET tags = COALESCE(json_extract(NEW.config, '$.tags'), '[]') WHERE id = NEW.id; END"
    )
    runs.create_index(["status", "hold", "priority"], if_not_exists=True)


def _m003_run_identity(db: sqlite_utils.Database) -> None:
    """Every run gets a unique id (recorded in its checkpoints) and a from-scratch flag for resume."""
    db["runs"].add_column("uid", str)
    db["runs"].add_column("from_scratch", int, not_null_default=0)
    for (run_id,) in db.execute("SELECT id FROM runs WHERE uid IS NULL").fetchall():
        db.execute("UPDATE runs SET uid = ? WHERE id = ?", (new_uid(), run_id))


def new_uid() -> str:
    return secrets.token_hex(8)


def _m004_slurm(db: sqlite_utils.Database) -> None:
    """Runs handed to Slurm: job id, Slurm's state/reason/nodes, re-submissions; what the head node has ingested
    from each run directory's report files (byte offsets, last sequence number, local → registry evaluation ids)."""
    runs = db["runs"]
    for col in ("slurm_job", "slurm_state", "slurm_reason", "slurm_nodes"):
        runs.add_column(col, str)
    runs.add_column("slurm_requeues", int, not_null_default=0)
    db["ingest_state"].create(
        {"run_id": int, "events_pos": int, "metrics_pos": int, "last_seq": int, "heartbeat": float},
        pk="run_id",
        defaults={"events_pos": 0, "metrics_pos": 0, "last_seq": 0},
    )
    db["ingest_evals"].create(
        {"run_id": int, "local_id": int, "evaluation_id": int}, pk=("run_id", "local_id")
    )


MIGRATIONS = [
    ("001_initial", _m001_initial),
    ("002_queue", _m002_queue),
    ("003_run_identity", _m003_run_identity),
    ("004_slurm", _m004_slurm),
]


def _apply_migrations(conn: sqlite3.Connection) -> None:
    """Apply pending migrations once, under BEGIN IMMEDIATE so that two processes starting together cannot both
    apply one (sqlite-utils' own Migrations checks what is pending outside any lock). sqlite-utils is imported
    only when something is pending, which keeps read-only commands fast."""
    conn.execute("CREATE TABLE IF NOT EXISTS _dwc_migrations (name TEXT PRIMARY KEY, applied REAL)")
    if {row[0] for row in conn.execute("SELECT name FROM _dwc_migrations")} >= {n for n, _ in MIGRATIONS}:
        return
    import sqlite_utils

    conn.execute("BEGIN IMMEDIATE")
    try:
        done = {row[0] for row in conn.execute("SELECT name FROM _dwc_migrations")}
        db = sqlite_utils.Database(conn)
        for name, fn in MIGRATIONS:
            if name not in done:
                fn(db)
                conn.execute("INSERT INTO _dwc_migrations (name, applied) VALUES (?, ?)", (name, time.time()))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# ------------------------------------------------------------------------------------------------------- registry
def _encode(fields: dict) -> None:
    """JSON-encode the JSON columns among ``fields``, in place."""
    for key in JSON_COLUMNS:
        if key in fields and not isinstance(fields[key], str | type(None)):
            fields[key] = json.dumps(fields[key], sort_keys=True)


def _decode(row: dict | None) -> dict | None:
    if row is None:
        return None
    for key in JSON_COLUMNS:
        if key in row and isinstance(row[key], str):
            with suppress(ValueError):
                row[key] = json.loads(row[key])
    return row


def registry_error(exc: sqlite3.Error, path: Path) -> RegistryError:
    """A one-line explanation (with the way out) of a SQLite failure on the registry file."""
    text = str(exc)
    low = text.lower()
    # a full disk can also surface as an I/O error (the WAL index cannot grow)
    if "i/o error" in low and _free_bytes(path) < 2**20:
        low = "full"
    if "locked" in low or "busy" in low:
        msg = (
            f"{path} is locked by another process (it held a write lock for more than {BUSY_TIMEOUT_S:.0f} s); "
            f"try again when it finishes (`fuser {path}` shows who holds it)."
        )
    elif "malformed" in low or "not a database" in low or "corrupt" in low:
        msg = (
            f'{path} is damaged ({text}). Recover it: sqlite3 {path} ".recover" | sqlite3 {path}.recovered, then '
            f"move {path}.recovered to {path}; run directories (config, logs, checkpoints) are untouched."
        )
    elif "full" in low:
        msg = (
            f"cannot write {path}: the disk is full ({text}). Free some space; runs that could not record their "
            "end are reconciled by the next `dwc runs`."
        )
    elif "readonly" in low or "read-only" in low:
        msg = f"{path} is read-only ({text}); this command needs to write to it. Listing and show work read-only."
    else:
        msg = f"{path}: the run registry is unavailable: {text}."
    return RegistryError(msg)


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(Path(path).parent).free
    except OSError:
        return 1 << 62


# The one rule for which runs a worker may take (Registry.claim, the local worker's candidates, the Slurm worker):
# queued, not held (`dwc hold`, or a foreground `dwc run` keeping its own runs), not soft-deleted.
CLAIMABLE = "status = 'queued' AND hold = 0 AND deleted = 0"
CLAIMABLE_ANY_HOLD = "status = 'queued' AND deleted = 0"


class Registry:
    """Access to ``runs/registry.db``. Cheap to open; open one per process (connections are not shared)."""

    def __init__(self, path: str | os.PathLike, create: bool = True):
        self.path = Path(path)
        if not self.path.exists() and not create:
            raise RegistryError(
                f"{self.path}: no registry here yet (no run has been queued in this project)."
            )
        self.readonly = self.path.exists() and not (
            os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)
        )
        try:
            conn = self._open_readonly() if self.readonly else self._open_writable()
        except sqlite3.DatabaseError as exc:
            raise registry_error(exc, self.path) from None
        except OSError as exc:
            raise RegistryError(f"{self.path}: cannot create the run registry: {exc.strerror}.") from None
        self.conn = conn
        conn.row_factory = sqlite3.Row

    def _open_writable(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        _apply_migrations(conn)
        return conn

    def _open_readonly(self) -> sqlite3.Connection:
        """A registry on a read-only file or folder: readable, every write refused. ``mode=ro`` needs the WAL
        index (-shm) to exist or be creatable; on a read-only mount without one, the file is opened immutable."""
        uri = self.path.resolve().as_uri()
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn

    @property
    def db(self) -> sqlite_utils.Database:
        """A sqlite-utils view of the registry (schema inspection, ad-hoc queries)."""
        import sqlite_utils

        return sqlite_utils.Database(self.conn)

    def close(self) -> None:
        self.conn.close()

    # --------------------------------------------------------------------------------------------- primitives
    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction (BEGIN IMMEDIATE … COMMIT)."""
        if self.readonly:
            raise RegistryError(
                f"{self.path} is read-only (file or folder not writable, e.g. a read-only mount): this command "
                "needs to write to it. Listing, show and compare work read-only; run writing commands where the "
                "project is writable."
            )
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            # SQLite may have rolled back already (e.g. disk full): keep the first error
            with suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error:
            with suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise

    def _rows(self, sql: str, params: Iterable = ()) -> list[dict]:
        return [_decode(dict(r)) for r in self.conn.execute(sql, list(params))]

    # ---------------------------------------------------------------------------------------------------- runs
    def create_run(
        self,
        experiment: str,
        config: dict,
        runs_dir: str | os.PathLike,
        variant: dict | None = None,
        priority: int = 0,
    ) -> dict:
        """Queue a run: a row with status ``queued``, its frozen config and a unique id (``uid``, recorded in its
        checkpoints); creates its run directory. A directory is never reused: if ``<id>-<experiment>`` already exists
        (the registry was emptied or replaced beside old runs), the run gets a fresh name and a warning event."""
        now = time.time()
        uid = new_uid()
        with self.write() as c:
            cur = c.execute(
                "INSERT INTO runs (experiment, status, config, variant, seed, priority, created, epochs, uid) "
                "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                (
                    experiment,
                    json.dumps(config, sort_keys=True),
                    json.dumps(variant or {}, sort_keys=True),
                    int(config.get("trainer", {}).get("seed", 0)),
                    priority,
                    now,
                    int(config.get("trainer", {}).get("epochs", 0)),
                    uid,
                ),
            )
            run_id = int(cur.lastrowid)
            run_dir = Path(runs_dir) / f"{run_id}-{experiment}"
            taken = run_dir.exists()
            if taken:
                run_dir = Path(runs_dir) / f"{run_id}-{experiment}-{uid[:6]}"
            c.execute("UPDATE runs SET run_dir = ? WHERE id = ?", (str(run_dir.resolve()), run_id))
            self._event(c, run_id, "queued", f"queued {experiment}")
            if taken:
                self._event(
                    c, run_id, "warning",
                    f"{Path(runs_dir) / f'{run_id}-{experiment}'} already exists but is not this run's (the registry "
                    f"was emptied or replaced beside older runs); this run uses {run_dir.name} and leaves it alone",
                )  # fmt: skip
        run_dir.mkdir(parents=True, exist_ok=False)
        (run_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return self.get(run_id)

    def get(self, run_id: int) -> dict:
        rows = self._rows("SELECT * FROM runs WHERE id = ?", [run_id])
        if not rows:
            raise RunNotFound(f"no run with id {run_id} in {self.path} (`dwc runs` lists them).")
        return rows[0]

    def runs(
        self,
        experiments: list[str] | None = None,
        statuses: list[str] | None = None,
        include_deleted: bool = False,
        limit: int | None = None,
    ) -> list[dict]:
        where, params = [], []
        if not include_deleted:
            where.append("deleted = 0")
        if experiments:
            where.append(f"experiment IN ({', '.join('?' for _ in experiments)})")
            params += experiments
        if statuses:
            where.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params += statuses
        sql = "SELECT * FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return self._rows(sql, params)

    def claim(
        self, worker: str, run_id: int | None = None, host: str | None = None, held_ok: bool = False
    ) -> dict | None:
        """Atomically move one claimable run (the given one, or the next by priority) to ``starting``; None when
        there is none (or the given one is no longer claimable). Claimable (:data:`CLAIMABLE`): queued, not held,
        not deleted — the one rule every claim path (``dwc run``, local and Slurm workers) goes through. Only the
        foreground ``dwc run``, which holds its own runs while they wait, passes ``held_ok``. A run whose run lock
        is held (a trainer of it is still alive on this host) is never claimed: the given one raises
        :class:`RunLocked` naming the holder, the next-by-priority pick skips it."""
        host = host or socket.gethostname()
        if run_id is not None:
            self.check_not_training(run_id)
        rule = CLAIMABLE_ANY_HOLD if held_ok else CLAIMABLE
        with self.write() as c:
            if run_id is None:
                for row in c.execute(
                    f"SELECT id, run_dir FROM runs WHERE {rule} ORDER BY priority DESC, id"
                ).fetchall():
                    if not (row[1] and run_lock_holder(row[1]) is not None):
                        run_id = int(row[0])
                        break
                if run_id is None:
                    return None
            cur = c.execute(
                "UPDATE runs SET status = 'starting', worker = ?, host = ?, claimed = ?, cancel_requested = 0 "
                f"WHERE id = ? AND {rule}",
                (worker, host, time.time(), run_id),
            )
            if cur.rowcount != 1:
                return None
            self._event(c, run_id, "starting", f"claimed by {worker} on {host}")
        return self.get(run_id)

    def check_not_training(self, run_id: int) -> None:
        """Raise :class:`RunLocked` if a training process of this run holds its run lock (on this host)."""
        row = self.get(run_id)
        holder = run_lock_holder(row["run_dir"]) if row.get("run_dir") else None
        if holder is not None:
            raise RunLocked(
                f"run {run_id} is being trained right now by {describe_holder(holder)} (it holds "
                f"{Path(row['run_dir']) / '.run.lock'}); wait for it to end or `dwc cancel {run_id}` it first."
            )

    def update(self, run_id: int, **fields: Any) -> None:
        """Set columns of a run row (JSON columns are encoded)."""
        if not fields:
            return
        _encode(fields)
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.write() as c:
            c.execute(f"UPDATE runs SET {cols} WHERE id = ?", (*fields.values(), run_id))

    def set_status(
        self, run_id: int, status: str, message: str = "", only_from: tuple = (), **fields: Any
    ) -> bool:
        """Change a run's status (and columns) with an event; with ``only_from``, only from those statuses."""
        assert status in STATUSES, status
        now = time.time()
        if status in FINISHED:
            fields.setdefault("ended", now)
        if status == "running":
            fields.setdefault("heartbeat", now)
        _encode(fields)
        cols = ", ".join(["status = ?", *(f"{k} = ?" for k in fields)])
        sql = f"UPDATE runs SET {cols} WHERE id = ?"
        params: list[Any] = [status, *fields.values(), run_id]
        if only_from:
            sql += f" AND status IN ({', '.join('?' for _ in only_from)})"
            params += list(only_from)
        with self.write() as c:
            changed = c.execute(sql, params).rowcount == 1
            if changed:
                self._event(c, run_id, status, message or status)
        return changed

    def heartbeat(self, run_id: int, **progress: Any) -> None:
        fields: dict[str, Any] = {"heartbeat": time.time()}
        for key in ("epoch", "step", "total_steps"):
            if key in progress:
                fields[key] = progress.pop(key)
        if progress:
            fields["progress"] = json.dumps(progress, sort_keys=True)
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.write() as c:
            c.execute(f"UPDATE runs SET {cols} WHERE id = ?", (*fields.values(), run_id))

    def request_cancel(self, run_id: int) -> None:
        row = self.get(run_id)
        if row["status"] == "done":
            raise UsageError(
                f"run {run_id} is done; there is nothing to cancel (`dwc run {row['experiment']}` trains it again)."
            )
        if row["status"] in FINISHED:
            raise UsageError(f"run {run_id} is already {row['status']}; there is nothing to cancel.")
        if row["status"] == "queued":
            self.set_status(run_id, "cancelled", "cancelled before it started", only_from=("queued",))
        else:
            self.update(run_id, cancel_requested=1)
            self.event(run_id, "cancel", "cancellation requested")

    def requeue(self, run_id: int, reason: str = "resume", from_scratch: bool = False) -> None:
        """Queue a failed / cancelled / lost run again (resume from its last checkpoint in the same run directory;
        with ``from_scratch``, its trainer clears the recorded history and starts at epoch 0). A ``done`` run is
        refused (train the experiment again instead), and so is a run whose trainer still holds its run lock."""
        row = self.get(run_id)
        if row["status"] == "done":
            raise UsageError(
                f"run {run_id} is done; `dwc run {row['experiment']}` trains the experiment again as a new run."
            )
        if row["status"] not in FINISHED:
            raise UsageError(
                f"run {run_id} is {row['status']}; only a failed, cancelled or lost run can be resumed."
            )
        self.check_not_training(run_id)
        with self.write() as c:
            c.execute(
                "UPDATE runs SET status = 'queued', ended = NULL, error = NULL, exit_code = NULL, pid = NULL, "
                "pgid = NULL, cancel_requested = 0, resumes = resumes + 1, from_scratch = ? WHERE id = ?",
                (int(from_scratch), run_id),
            )
            self._event(c, run_id, "queued", reason + (" (from scratch)" if from_scratch else ""))

    def unknown_run_dirs(self, runs_dir: str | os.PathLike) -> list[Path]:
        """Run directories (``<id>-<experiment>``) under ``runs_dir`` that no run of this registry owns: the
        registry was emptied or replaced beside older runs. They are never reused (see :meth:`create_run`)."""
        known = {str(Path(r[0]).resolve()) for r in self.conn.execute("SELECT run_dir FROM runs") if r[0]}
        try:
            entries = list(Path(runs_dir).iterdir())
        except OSError:
            return []
        return sorted(
            p
            for p in entries
            if p.is_dir()
            and p.name.split("-", 1)[0].isdigit()
            and "-" in p.name
            and str(p.resolve()) not in known
        )

    def clear_history(self, run_id: int) -> dict[str, int]:
        """Forget what a run recorded while training (metrics, epoch evaluations and their per-query results, best
        and progress columns), for a restart from scratch; re-evaluations (``dwc eval``) are kept."""
        with self.write() as c:
            return self.clear_history_in(c, run_id)

    @staticmethod
    def clear_history_in(c: sqlite3.Connection, run_id: int) -> dict[str, int]:
        """:meth:`clear_history` inside an open write transaction (also how ingestion applies a files sink's
        ``clear`` operation); clears the ``from_scratch`` flag. Applying it twice changes nothing more."""
        ids = [
            r[0]
            for r in c.execute("SELECT id FROM evaluations WHERE run_id = ? AND kind = 'epoch'", (run_id,))
        ]
        for eid in ids:
            c.execute("DELETE FROM query_results WHERE evaluation_id = ?", (eid,))
            c.execute("DELETE FROM evaluations WHERE id = ?", (eid,))
        metrics = c.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,)).rowcount
        c.execute(
            "UPDATE runs SET epoch = 0, step = 0, best_value = NULL, best_epoch = NULL, best_metric = NULL, "
            "best_metrics = NULL, last_metrics = NULL, from_scratch = 0 WHERE id = ?",
            (run_id,),
        )
        return {"metrics": metrics, "evaluations": len(ids)}

    def soft_delete(self, run_id: int, deleted: bool = True) -> None:
        self.update(run_id, deleted=int(deleted))

    # ------------------------------------------------------------------------------------------------- events
    @staticmethod
    def _event(c: sqlite3.Connection, run_id: int, kind: str, message: str) -> None:
        c.execute(
            "INSERT INTO events (run_id, time, kind, message) VALUES (?, ?, ?, ?)",
            (run_id, time.time(), kind, message),
        )

    def event(self, run_id: int, kind: str, message: str) -> None:
        with self.write() as c:
            self._event(c, run_id, kind, message)

    def events(self, run_id: int) -> list[dict]:
        return self._rows("SELECT time, kind, message FROM events WHERE run_id = ? ORDER BY id", [run_id])

    # ------------------------------------------------------------------------------------------------ metrics
    def log_metrics(self, run_id: int, rows: list[dict]) -> None:
        """Insert metric rows (step, epoch, split, name, value[, time]); a repeated (split, name, step) replaces."""
        if not rows:
            return
        now = time.time()
        with self.write() as c:
            c.executemany(
                "INSERT OR REPLACE INTO metrics (run_id, step, epoch, split, name, value, time) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        int(r["step"]),
                        float(r.get("epoch", 0)),
                        r["split"],
                        r["name"],
                        float(r["value"]),
                        float(r.get("time", now)),
                    )
                    for r in rows
                ],
            )

    def delete_metrics_after(self, run_id: int, step: int) -> int:
        """Drop metric rows written after ``step`` (used on resume from a checkpoint taken at ``step``)."""
        with self.write() as c:
            return c.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, step)).rowcount

    def metrics(self, run_id: int, split: str | None = None, name: str | None = None) -> list[dict]:
        sql, params = "SELECT step, epoch, split, name, value, time FROM metrics WHERE run_id = ?", [run_id]
        if split:
            sql += " AND split = ?"
            params.append(split)
        if name:
            sql += " AND name = ?"
            params.append(name)
        return self._rows(sql + " ORDER BY step, id", params)

    # -------------------------------------------------------------------------------------------- evaluations
    def add_evaluation(self, run_id: int, **fields: Any) -> int:
        for key in ("protocol", "metrics"):
            if key in fields and not isinstance(fields[key], str):
                fields[key] = json.dumps(fields[key], sort_keys=True)
        fields.setdefault("time", time.time())
        cols = ", ".join(["run_id", *fields])
        marks = ", ".join("?" for _ in range(len(fields) + 1))
        with self.write() as c:
            cur = c.execute(f"INSERT INTO evaluations ({cols}) VALUES ({marks})", (run_id, *fields.values()))
            return int(cur.lastrowid)

    def evaluations(self, run_id: int, kind: str | None = None) -> list[dict]:
        sql, params = "SELECT * FROM evaluations WHERE run_id = ?", [run_id]
        if kind:
            sql += " AND kind = ?"
            params.append(kind)
        rows = self._rows(sql + " ORDER BY id", params)
        for r in rows:
            for key in ("protocol", "metrics"):
                if isinstance(r.get(key), str):
                    r[key] = json.loads(r[key])
        return rows

    def delete_evaluations_after(self, run_id: int, epoch: int) -> None:
        with self.write() as c:
            ids = [
                r[0]
                for r in c.execute(
                    "SELECT id FROM evaluations WHERE run_id = ? AND kind = 'epoch' AND epoch > ?",
                    (run_id, epoch),
                )
            ]
            for eid in ids:
                c.execute("DELETE FROM query_results WHERE evaluation_id = ?", (eid,))
                c.execute("DELETE FROM evaluations WHERE id = ?", (eid,))

    def mark_best(self, run_id: int, evaluation_id: int) -> None:
        with self.write() as c:
            c.execute("UPDATE evaluations SET is_best = 0 WHERE run_id = ? AND kind = 'epoch'", (run_id,))
            c.execute("UPDATE evaluations SET is_best = 1 WHERE id = ?", (evaluation_id,))

    # ---------------------------------------------------------------------------------------- query results
    def add_query_results(self, run_id: int, evaluation_id: int, rows: list[dict]) -> None:
        with self.write() as c:
            c.executemany(
                "INSERT OR REPLACE INTO query_results (run_id, evaluation_id, eval_set, qidx, ref_id, text, "
                "target_ids, topk_ids, topk_scores, target_rank) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        evaluation_id,
                        r["eval_set"],
                        int(r["qidx"]),
                        str(r["ref_id"]),
                        r["text"],
                        json.dumps(r["target_ids"]),
                        json.dumps(r["topk_ids"]),
                        json.dumps([round(float(s), 5) for s in r["topk_scores"]]),
                        r["target_rank"],
                    )
                    for r in rows
                ],
            )

    def prune_query_results(self, run_id: int, keep: Iterable[int]) -> None:
        """Keep per-query rows only for the given evaluations (the best and the last epoch) of a run."""
        keep = [int(k) for k in keep]
        with self.write() as c:
            c.execute(
                f"DELETE FROM query_results WHERE run_id = ? AND evaluation_id IN (SELECT id FROM evaluations "
                f"WHERE run_id = ? AND kind = 'epoch' AND id NOT IN ({', '.join('?' for _ in keep) or 'NULL'}))",
                (run_id, run_id, *keep),
            )

    def query_results(
        self, evaluation_id: int, eval_set: str | None = None, limit: int | None = None
    ) -> list[dict]:
        sql, params = "SELECT * FROM query_results WHERE evaluation_id = ?", [evaluation_id]
        if eval_set:
            sql += " AND eval_set = ?"
            params.append(eval_set)
        sql += " ORDER BY eval_set, qidx"
        if limit:
            sql += f" LIMIT {int(limit)}"
        rows = self._rows(sql, params)
        for r in rows:
            for key in ("target_ids", "topk_ids", "topk_scores"):
                r[key] = json.loads(r[key])
        return rows

    def evaluations_with_query_results(self, run_id: int) -> set[int]:
        """Ids of the run's evaluations that kept per-query results (best and last epoch, re-evaluations)."""
        rows = self.conn.execute(
            "SELECT DISTINCT evaluation_id FROM query_results WHERE run_id = ?", (run_id,)
        )
        return {int(r[0]) for r in rows}
