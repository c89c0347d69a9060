"""What a training process tells the world: one reporting interface, two sinks.

- **registry** (local runs, the default): the process writes its run row, events, evaluations and metrics straight
  into ``runs/registry.db``.
- **files** (runs started by the Slurm worker, whose compute nodes must never open SQLite over a network
  filesystem): the process writes append-only report files into its run directory and the head node's worker
  ingests them (``dwc_core.runs.ingest``). Chosen with ``--sink files`` on the training process or
  ``DWC_REPORT_SINK=files`` (with ``DWC_RUN_DIR`` naming the run directory).

The files of a run directory (every ``*.jsonl`` line is one complete JSON object; a torn last line is ignored until
it is complete, and a writer starting after a crash first ends a torn line so that its own lines stay whole):

- ``run.json``       the run row as the worker submitted it (config, run_dir, ...): what the trainer reads
- ``events.jsonl``   numbered operations (``seq``): status changes, row updates, events, evaluations, per-query
                     results, best-epoch marks, the truncation done on resume and the clear of a restart from
                     scratch
- ``metrics.jsonl``  metric rows (step, epoch, split, name, value, time), one per line (written by both sinks)
- ``heartbeat.json`` the latest heartbeat and progress, replaced atomically
- ``status.json``    the final status (done / failed / cancelled), replaced atomically
- ``cancel``         present = cancellation requested

The training loop itself only appends to in-memory buffers (never waits on SQLite or the filesystem); a background
thread flushes them every few seconds, writes the heartbeat and reads cancellation requests.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from dwc_core.errors import ConfigError
from dwc_core.fileio import atomic_write_bytes, atomic_write_text
from dwc_core.runs.registry import FINISHED, Registry

SINK_ENV = "DWC_REPORT_SINK"
RUN_DIR_ENV = "DWC_RUN_DIR"
SINKS = ("registry", "files")

RUN_FILE = "run.json"
EVENTS_FILE = "events.jsonl"
METRICS_FILE = "metrics.jsonl"
HEARTBEAT_FILE = "heartbeat.json"
STATUS_FILE = "status.json"
CANCEL_FILE = "cancel"


def sink_kind() -> str:
    kind = os.environ.get(SINK_ENV, "registry") or "registry"
    if kind not in SINKS:
        raise ConfigError(f"{SINK_ENV}={kind!r} is not a reporting sink; allowed: {', '.join(SINKS)}.")
    return kind


def open_sink(registry_path: Path, run_id: int) -> Registry | FileSink:
    """The sink this process reports to: the registry, or the run directory's files (see the module doc)."""
    if sink_kind() == "files":
        run_dir = os.environ.get(RUN_DIR_ENV)
        if not run_dir:
            raise ConfigError(f"{SINK_ENV}=files needs the run directory in {RUN_DIR_ENV} (or --run-dir).")
        return FileSink(Path(run_dir), run_id)
    return Registry(registry_path)


# ------------------------------------------------------------------------------------------------ file helpers
def append_lines(path: Path, lines: list[str]) -> None:
    """Append complete lines with one write (O_APPEND); if the file ends in a torn line, end it first."""
    if not lines:
        return
    data = "".join(line + "\n" for line in lines).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as fh:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    data = b"\n" + data  # isolate the torn fragment as its own (ignored) line
        os.write(fd, data)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, sort_keys=True))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def last_seq(path: Path) -> int:
    """The highest ``seq`` among the complete lines of an events file (0 when there is none)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    best = 0
    for line in data.split(b"\n")[:-1]:  # the part after the last newline is torn (or empty)
        try:
            best = max(best, int(json.loads(line)["seq"]))
        except (ValueError, KeyError, TypeError):
            continue
    return best


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _ops(path: Path) -> list[dict]:
    """The complete operations of an events file, in order (torn or unreadable lines skipped)."""
    out = []
    data = _read_bytes(path)
    for line in data[: data.rfind(b"\n") + 1].split(b"\n"):
        try:
            op = json.loads(line)
        except ValueError:
            continue
        if isinstance(op, dict) and "seq" in op:
            out.append(op)
    return out


# ------------------------------------------------------------------------------------------------ the file sink
_SEQ: dict[str, int] = {}
_SEQ_LOCK = threading.Lock()


class FileSink:
    """The registry methods a training process calls, recorded as append-only files in its run directory."""

    def __init__(self, run_dir: Path, run_id: int):
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.path = self.run_dir / EVENTS_FILE
        row = read_json(self.run_dir / RUN_FILE)
        if not isinstance(row, dict) or "config" not in row:
            raise ConfigError(
                f"{self.run_dir / RUN_FILE}: missing or unreadable; a run reporting to files needs the run row "
                "written there by the worker that submitted it."
            )
        self._row = row

    def _op(self, op: str, **fields: Any) -> int:
        with _SEQ_LOCK:  # one counter per events file in this process, whichever sink object writes
            key = str(self.path.resolve())
            seq = _SEQ.get(key) or last_seq(self.path)
            seq += 1
            _SEQ[key] = seq
            append_lines(self.path, [json.dumps({"seq": seq, "time": time.time(), "op": op, **fields})])
        return seq

    # the registry's interface, as the trainer uses it
    def get(self, run_id: int) -> dict:
        return dict(self._row)

    def set_status(
        self, run_id: int, status: str, message: str = "", only_from: tuple = (), **fields: Any
    ) -> bool:
        self._op("status", status=status, message=message or status, fields=fields)
        if status in FINISHED:
            write_json_atomic(
                self.run_dir / STATUS_FILE,
                {"status": status, "message": message, "time": time.time(), **fields},
            )
        return True

    def update(self, run_id: int, **fields: Any) -> None:
        if fields:
            self._op("update", fields=fields)

    def event(self, run_id: int, kind: str, message: str) -> None:
        self._op("event", kind=kind, message=message)

    def add_evaluation(self, run_id: int, **fields: Any) -> int:
        """Returns a local evaluation id (the op's sequence number); the ingester maps it to a registry id."""
        fields.setdefault("time", time.time())
        return self._op("evaluation", fields=fields)

    def mark_best(self, run_id: int, evaluation_id: int) -> None:
        self._op("best", eval=evaluation_id)

    def add_query_results(self, run_id: int, evaluation_id: int, rows: list[dict]) -> None:
        self._op("query_results", eval=evaluation_id, rows=rows)

    def prune_query_results(self, run_id: int, keep: list[int]) -> None:
        self._op("prune", keep=[int(k) for k in keep])

    def delete_metrics_after(self, run_id: int, step: int) -> int:
        """On resume: metric lines already in metrics.jsonl after ``step`` are superseded (the ingester drops
        them up to the recorded offset). Returns how many such lines there are."""
        path = self.run_dir / METRICS_FILE
        offset, later = 0, 0
        if path.exists():
            data = path.read_bytes()
            offset = data.rfind(b"\n") + 1  # the torn tail, if any, is ignored
            for line in data[:offset].split(b"\n"):
                try:
                    later += int(json.loads(line)["step"]) > step
                except (ValueError, KeyError, TypeError):
                    continue
        self._op("truncate", step=int(step), metrics_offset=offset)
        return later

    def delete_evaluations_after(self, run_id: int, epoch: int) -> None:
        self._op("drop_evaluations", epoch=int(epoch))

    def log_metrics(self, run_id: int, rows: list[dict]) -> None:
        """Metric rows are recorded in metrics.jsonl by the Reporter itself."""

    def metrics(self, run_id: int, split: str | None = None, name: str | None = None) -> list[dict]:
        """The metric rows in metrics.jsonl (complete lines), as the registry would list them."""
        out = []
        data = _read_bytes(self.run_dir / METRICS_FILE)
        for line in data[: data.rfind(b"\n") + 1].split(b"\n"):
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if (
                isinstance(r, dict)
                and (split is None or r.get("split") == split)
                and (name is None or r.get("name") == name)
            ):
                out.append(r)
        return out

    def evaluations(self, run_id: int, kind: str | None = None) -> list[dict]:
        """The evaluations this run directory records since its last restart from scratch (local ids = seq)."""
        evals: dict[int, dict] = {}
        for op in _ops(self.path):
            if op.get("op") == "clear":
                evals = {k: v for k, v in evals.items() if v.get("kind") != "epoch"}
            elif op.get("op") == "evaluation":
                evals[int(op["seq"])] = {**(op.get("fields") or {}), "id": int(op["seq"])}
            elif op.get("op") == "drop_evaluations":
                evals = {
                    k: v
                    for k, v in evals.items()
                    if not (v.get("kind") == "epoch" and v.get("epoch", 0) > int(op["epoch"]))
                }
        return [e for e in evals.values() if kind is None or e.get("kind") == kind]

    def clear_history(self, run_id: int) -> dict[str, int]:
        """A restart from scratch: empty metrics.jsonl first, then record a ``clear`` operation, which ingestion
        applies once (the registry's metrics, epoch evaluations and best/progress columns go, ``from_scratch`` is
        reset) before reading metrics.jsonl from its start. In that order a head node reading in between never
        takes the earlier attempt's lines for the new one's."""
        counts = {"metrics": len(self.metrics(run_id)), "evaluations": len(self.evaluations(run_id, "epoch"))}
        path = self.run_dir / METRICS_FILE
        if path.exists():
            atomic_write_bytes(path, b"")
        self._op("clear", **counts)
        return counts

    def heartbeat(self, run_id: int, **progress: Any) -> None:
        write_json_atomic(self.run_dir / HEARTBEAT_FILE, {"time": time.time(), **progress})

    def cancel_requested(self) -> bool:
        return (self.run_dir / CANCEL_FILE).exists()


# ------------------------------------------------------------------------------------------------ the reporter
class Reporter:
    def __init__(
        self,
        registry_path: Path,
        run_id: int,
        run_dir: Path,
        interval: float = 5.0,
        enabled: bool = True,
        sink: str | None = None,
    ):
        self.registry_path = registry_path
        self.run_id = run_id
        self.run_dir = run_dir
        self.interval = interval
        self.enabled = enabled
        self.sink = sink or sink_kind()
        self._lock = threading.Lock()
        self._rows: list[dict] = []
        self._progress: dict = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.cancel_requested = threading.Event()
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._local = threading.local()

    # ------------------------------------------------------------------------------------------- producer side
    def metric(self, step: int, epoch: float, split: str, name: str, value: float) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._rows.append(
                {
                    "step": step,
                    "epoch": epoch,
                    "split": split,
                    "name": name,
                    "value": float(value),
                    "time": time.time(),
                }
            )

    def progress(self, **fields) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._progress.update(fields)

    def flush_now(self) -> None:
        """Write everything buffered, synchronously (at epoch ends and before exit)."""
        if self.enabled:
            self._flush(self._own_sink())

    # ------------------------------------------------------------------------------------------- thread side
    def start(self) -> None:
        if not self.enabled:
            return
        self._thread = threading.Thread(target=self._loop, name="dwc-reporter", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout=60)
            self._thread = None
        self.flush_now()

    def _own_sink(self) -> Registry | FileSink:
        """One sink per thread (SQLite connections are not shared between threads)."""
        reg = getattr(self._local, "sink", None)
        if reg is None:
            if self.sink == "files":
                reg = FileSink(self.run_dir, self.run_id)
            else:
                reg = Registry(self.registry_path)
            self._local.sink = reg
        return reg

    def _flush(self, reg: Registry | FileSink) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
            progress = dict(self._progress)
        if rows:
            reg.log_metrics(self.run_id, rows)
            append_lines(self.run_dir / METRICS_FILE, [json.dumps(r) for r in rows])
        reg.heartbeat(self.run_id, **progress)
        if isinstance(reg, FileSink):
            cancel = reg.cancel_requested()
        else:
            row = reg.conn.execute(
                "SELECT cancel_requested FROM runs WHERE id = ?", (self.run_id,)
            ).fetchone()
            cancel = bool(row and row[0])
        if cancel:
            self.cancel_requested.set()

    def _loop(self) -> None:
        reg = self._own_sink()
        while not self._stop.is_set():
            try:
                self._flush(reg)
            except Exception as exc:  # never let reporting kill training; retry next tick
                self.error = exc
            self._wake.wait(self.interval)
            self._wake.clear()
