"""Ingest a run directory's report files into the registry: incremental, idempotent, torch-free.

A training process started on a cluster never opens the registry; it appends its reports to files in its run
directory (see ``dwc_core.engine.reporting``). The head node calls :func:`ingest` as often as it likes:

- only complete lines are read; a torn last line stays where it is and is read once it is complete;
- what was ingested is remembered in the registry itself (byte offsets and the last operation's sequence number, in
  ``ingest_state``), updated in the same transaction as the rows, so a crash between two passes neither loses nor
  repeats anything, and operations at or below the recorded sequence number are never applied twice;
- metric rows are keyed by (run, split, name, step): re-reading a line replaces the row, never duplicates it;
- the truncation a resumed process records ("metrics after step N are superseded") drops those rows and re-reads the
  metrics written since, so a resume never duplicates a step;
- the "clear" a process restarting from scratch records drops the run's metrics, epoch evaluations and best/progress
  columns and resets its ``from_scratch`` flag, once (by its sequence number), then reads metrics.jsonl from the start.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dwc_core.engine.reporting import EVENTS_FILE, HEARTBEAT_FILE, METRICS_FILE, STATUS_FILE
from dwc_core.runs.registry import ACTIVE, FINISHED, JSON_COLUMNS, Registry

NOT_COPIED = ("pid", "pgid")  # a process id on a compute node means nothing on the head node


@dataclass
class IngestResult:
    ops: int = 0  # operations applied from events.jsonl
    metrics: int = 0  # metric lines read from metrics.jsonl
    bad_lines: int = 0  # complete lines that were not valid JSON (skipped)
    final: dict | None = None  # the last final status (done/failed/cancelled) reported in this pass
    statuses: list[str] = field(default_factory=list)


def read_final(run_dir: Path) -> dict | None:
    """The final status a training process wrote into ``status.json`` (None if it wrote none)."""
    try:
        data = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("status") in FINISHED else None


def job_started_since(run_dir: Path, since: float) -> str | None:
    """The id of the last Slurm job whose batch script started this run at or after ``since`` (its "slurm job N
    started on ..." event in the run directory's events file), None when there is none. Only a job of the run's
    current submission writes that event (an earlier one exits on the attempt token), so this finds the job an
    sbatch created before its answer was lost, even once Slurm no longer lists it."""
    found = None
    for line, _ in _complete_lines(_read(Path(run_dir) / EVENTS_FILE), 0):
        try:
            op = json.loads(line)
        except ValueError:
            continue
        if not isinstance(op, dict) or op.get("op") != "event" or float(op.get("time") or 0) < since:
            continue
        words = str(op.get("message", "")).split()
        if words[:2] == ["slurm", "job"] and len(words) > 4 and words[3:5] == ["started", "on"]:
            found = words[2] if words[2].isdigit() else found
    return found


def _complete_lines(data: bytes, start: int) -> list[tuple[bytes, int]]:
    """(line, offset just after it) for each complete line of ``data`` from ``start``."""
    out = []
    pos = start
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            return out
        out.append((data[pos:nl], nl + 1))
        pos = nl + 1


def _read(path: Path, start: int = 0) -> bytes:
    """The file's bytes from offset ``start`` on (what earlier passes read is not read again)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            return fh.read()
    except FileNotFoundError:
        return b""


def _columns(c: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in c.execute(f"PRAGMA table_info({table})")}


def _encoded(fields: dict, allowed: set[str]) -> dict:
    out = {}
    for k, v in fields.items():
        if k not in allowed or k in NOT_COPIED:
            continue
        if k in JSON_COLUMNS and not isinstance(v, str | type(None)):
            v = json.dumps(v, sort_keys=True)
        out[k] = v
    return out


class _Pass:
    """One ingestion pass inside one write transaction."""

    def __init__(
        self,
        c: sqlite3.Connection,
        run_id: int,
        apply_final: bool,
        metrics_data: bytes,
        state: dict,
        metrics_base: int = 0,
    ):
        self.c = c
        self.run_id = run_id
        self.apply_final = apply_final
        self.metrics_data = metrics_data  # metrics.jsonl from byte ``metrics_base`` on; offsets stay absolute
        self.metrics_base = metrics_base
        self.metrics_end = metrics_base + len(metrics_data)
        self.state = state
        self.result = IngestResult()
        self.run_cols = _columns(c, "runs")
        self.eval_cols = _columns(c, "evaluations")

    # ---------------------------------------------------------------------------------------------- metrics
    def metrics_upto(self, end: int) -> None:
        rows = []
        base = self.metrics_base
        start = max(0, self.state["metrics_pos"] - base)
        for line, _ in _complete_lines(self.metrics_data[: end - base], start):
            try:
                r = json.loads(line)
                rows.append(
                    (self.run_id, int(r["step"]), float(r.get("epoch", 0)), str(r["split"]), str(r["name"]),
                     float(r["value"]), float(r.get("time") or time.time()))
                )  # fmt: skip
            except (ValueError, KeyError, TypeError):
                if line.strip():
                    self.result.bad_lines += 1
        if rows:
            self.c.executemany(
                "INSERT OR REPLACE INTO metrics (run_id, step, epoch, split, name, value, time) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        self.result.metrics += len(rows)
        last = self.metrics_data.rfind(b"\n", 0, end - base)
        if last >= 0:
            self.state["metrics_pos"] = max(self.state["metrics_pos"], base + last + 1)

    # ---------------------------------------------------------------------------------------------- helpers
    def event(self, kind: str, message: str, when: float | None = None) -> None:
        self.c.execute(
            "INSERT INTO events (run_id, time, kind, message) VALUES (?, ?, ?, ?)",
            (self.run_id, when or time.time(), kind, message),
        )

    def update_run(self, fields: dict, where: str = "", params: tuple = ()) -> int:
        fields = _encoded(fields, self.run_cols)
        if not fields:
            return 0
        cols = ", ".join(f"{k} = ?" for k in fields)
        sql = f"UPDATE runs SET {cols} WHERE id = ?" + where
        return self.c.execute(sql, (*fields.values(), self.run_id, *params)).rowcount

    def eval_id(self, local: int | None) -> int | None:
        if local is None:
            return None
        row = self.c.execute(
            "SELECT evaluation_id FROM ingest_evals WHERE run_id = ? AND local_id = ?",
            (self.run_id, int(local)),
        ).fetchone()
        return int(row[0]) if row else None

    # ------------------------------------------------------------------------------------------- operations
    def apply(self, op: dict) -> None:
        kind = op.get("op")
        when = float(op.get("time") or time.time())
        if kind == "status":
            self.status(op["status"], op.get("message") or op["status"], dict(op.get("fields") or {}), when)
        elif kind == "update":
            self.update_run(dict(op.get("fields") or {}))
        elif kind == "event":
            self.event(str(op.get("kind", "info")), str(op.get("message", "")), when)
        elif kind == "evaluation":
            fields = dict(op.get("fields") or {})
            for key in ("protocol", "metrics"):
                if key in fields and not isinstance(fields[key], str):
                    fields[key] = json.dumps(fields[key], sort_keys=True)
            fields = {k: v for k, v in fields.items() if k in self.eval_cols and k not in ("id", "run_id")}
            cols = ", ".join(["run_id", *fields])
            marks = ", ".join("?" for _ in range(len(fields) + 1))
            cur = self.c.execute(
                f"INSERT INTO evaluations ({cols}) VALUES ({marks})", (self.run_id, *fields.values())
            )
            self.c.execute(
                "INSERT OR REPLACE INTO ingest_evals (run_id, local_id, evaluation_id) VALUES (?, ?, ?)",
                (self.run_id, int(op["seq"]), int(cur.lastrowid)),
            )
        elif kind == "best":
            eid = self.eval_id(op.get("eval"))
            if eid is not None:
                self.c.execute(
                    "UPDATE evaluations SET is_best = 0 WHERE run_id = ? AND kind = 'epoch'", (self.run_id,)
                )
                self.c.execute("UPDATE evaluations SET is_best = 1 WHERE id = ?", (eid,))
        elif kind == "query_results":
            eid = self.eval_id(op.get("eval"))
            if eid is not None:
                self.c.executemany(
                    "INSERT OR REPLACE INTO query_results (run_id, evaluation_id, eval_set, qidx, ref_id, text, "
                    "target_ids, topk_ids, topk_scores, target_rank) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (self.run_id, eid, r["eval_set"], int(r["qidx"]), str(r["ref_id"]), r["text"],
                         json.dumps(r["target_ids"]), json.dumps(r["topk_ids"]),
                         json.dumps([round(float(s), 5) for s in r["topk_scores"]]), r["target_rank"])
                        for r in op.get("rows") or []
                    ],
                )  # fmt: skip
        elif kind == "prune":
            keep = [e for e in (self.eval_id(k) for k in op.get("keep") or []) if e is not None]
            self.c.execute(
                f"DELETE FROM query_results WHERE run_id = ? AND evaluation_id IN (SELECT id FROM evaluations "
                f"WHERE run_id = ? AND kind = 'epoch' AND id NOT IN ({', '.join('?' for _ in keep) or 'NULL'}))",
                (self.run_id, self.run_id, *keep),
            )
        elif kind == "drop_evaluations":
            epoch = int(op["epoch"])
            ids = [
                r[0]
                for r in self.c.execute(
                    "SELECT id FROM evaluations WHERE run_id = ? AND kind = 'epoch' AND epoch > ?",
                    (self.run_id, epoch),
                )
            ]
            for eid in ids:
                self.c.execute("DELETE FROM query_results WHERE evaluation_id = ?", (eid,))
                self.c.execute("DELETE FROM evaluations WHERE id = ?", (eid,))
        elif kind == "truncate":
            offset = min(int(op.get("metrics_offset", 0)), self.metrics_end)
            if self.state["metrics_pos"] < offset:
                self.metrics_upto(offset)  # the superseded attempt's lines first...
            self.c.execute(
                "DELETE FROM metrics WHERE run_id = ? AND step > ?", (self.run_id, int(op["step"]))
            )
            self.state["metrics_pos"] = offset  # ...then everything written since is read (again)
        elif kind == "clear":
            # a restart from scratch: the process emptied metrics.jsonl before recording this operation, so every
            # metric line there now belongs to the new attempt and is read from the start
            Registry.clear_history_in(self.c, self.run_id)
            self.state["metrics_pos"] = 0
        else:
            self.event("warning", f"ingest: unknown report operation {kind!r} (seq {op.get('seq')}) skipped")

    def status(self, status: str, message: str, fields: dict, when: float) -> None:
        self.result.statuses.append(status)
        if status in FINISHED:
            self.result.final = {"status": status, "message": message, **fields}
            if not self.apply_final:  # the worker decides (Slurm may re-queue the job): keep it as an event
                self.event("attempt", f"training process ended {status}: {message}", when)
                return
            fields.setdefault("ended", when)
            allowed = (*ACTIVE, "lost")
        else:
            if status == "running":
                fields.setdefault("heartbeat", when)
            allowed = (*ACTIVE, "lost")
        fields["status"] = status
        marks = ", ".join("?" for _ in allowed)
        if self.update_run(fields, f" AND status IN ({marks})", tuple(allowed)):
            self.event(status, message, when)
        else:
            self.event(
                "info", f"training process reported {status} ({message}); the run was no longer active"
            )

    def heartbeat(self, hb: dict) -> None:
        t = float(hb.get("time") or 0)
        if t <= float(self.state.get("heartbeat") or 0):
            return
        self.state["heartbeat"] = t
        progress = {k: v for k, v in hb.items() if k not in ("time", "epoch", "step", "total_steps")}
        fields: dict[str, Any] = {"heartbeat": t, "progress": progress}
        for key in ("epoch", "step", "total_steps"):
            if key in hb:
                fields[key] = hb[key]
        self.update_run(fields, " AND status IN ('starting', 'running')")


def ingest(
    registry: Registry, run_id: int, run_dir: str | Path | None = None, apply_final: bool = True
) -> IngestResult:
    """Read what is new in the run directory's report files into the registry (see the module doc).

    With ``apply_final=False`` a final status reported by the process is recorded as an event and returned in
    ``result.final`` without changing the run's status (the Slurm worker decides: the job may be re-queued)."""
    run_dir = Path(run_dir or registry.get(run_id)["run_dir"])
    with registry.write() as c:
        row = c.execute(
            "SELECT events_pos, metrics_pos, last_seq, heartbeat FROM ingest_state WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        state = (
            {"events_pos": row[0], "metrics_pos": row[1], "last_seq": row[2], "heartbeat": row[3]}
            if row
            else {"events_pos": 0, "metrics_pos": 0, "last_seq": 0, "heartbeat": None}
        )
        events_base = state["events_pos"]
        events = _read(run_dir / EVENTS_FILE, events_base)
        ops: list[tuple[dict | None, int, bool]] = []  # (operation or None, offset after it, blank line)
        metrics_base = state["metrics_pos"]  # the metrics file is read from here, or from an earlier offset
        for line, end in _complete_lines(events, 0):  # that a new truncate/clear operation moves back to
            try:
                op = json.loads(line)
                int(op["seq"])
            except (ValueError, KeyError, TypeError):
                op = None
            if op is not None and op.get("op") == "clear":
                metrics_base = 0
            elif op is not None and op.get("op") == "truncate":
                metrics_base = min(metrics_base, max(0, int(op.get("metrics_offset", 0))))
            ops.append((op, events_base + end, not line.strip()))
        # read after the events: it covers every truncation offset they name
        metrics = _read(run_dir / METRICS_FILE, metrics_base)
        p = _Pass(c, run_id, apply_final, metrics, state, metrics_base)
        for op, end, blank in ops:
            state["events_pos"] = end
            if op is None:
                if not blank:
                    p.result.bad_lines += 1
                continue
            seq = int(op["seq"])
            if seq <= state["last_seq"]:
                continue
            p.apply(op)
            state["last_seq"] = seq
            p.result.ops += 1
        p.metrics_upto(p.metrics_end)
        try:
            hb = json.loads((run_dir / HEARTBEAT_FILE).read_text())
        except (OSError, ValueError):
            hb = None
        if isinstance(hb, dict):
            p.heartbeat(hb)
        c.execute(
            "INSERT OR REPLACE INTO ingest_state (run_id, events_pos, metrics_pos, last_seq, heartbeat) "
            "VALUES (?, ?, ?, ?, ?)",
            (run_id, state["events_pos"], state["metrics_pos"], state["last_seq"], state["heartbeat"]),
        )
    return p.result
