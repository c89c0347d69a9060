"""What a training process tells the world: batched metric writes, heartbeat/progress, cancellation requests.

The training loop only appends to in-memory buffers (never waits on SQLite); a background thread with its own
registry connection flushes them every few seconds, writes the heartbeat and reads cancellation requests.
Metrics are also appended to ``<run_dir>/metrics.jsonl`` so results survive the loss of the registry file.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from dwc_core.runs.registry import Registry


class Reporter:
    def __init__(
        self, registry_path: Path, run_id: int, run_dir: Path, interval: float = 5.0, enabled: bool = True
    ):
        self.registry_path = registry_path
        self.run_id = run_id
        self.run_dir = run_dir
        self.interval = interval
        self.enabled = enabled
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
            self._flush(self._own_registry())

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

    def _own_registry(self) -> Registry:
        reg = getattr(self._local, "registry", None)
        if reg is None:
            reg = Registry(self.registry_path)
            self._local.registry = reg
        return reg

    def _flush(self, reg: Registry) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
            progress = dict(self._progress)
        if rows:
            reg.log_metrics(self.run_id, rows)
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
                for r in rows:
                    fh.write(json.dumps(r) + "\n")
        reg.heartbeat(self.run_id, **progress)
        row = reg.conn.execute("SELECT cancel_requested FROM runs WHERE id = ?", (self.run_id,)).fetchone()
        if row and row[0]:
            self.cancel_requested.set()

    def _loop(self) -> None:
        reg = self._own_registry()
        while not self._stop.is_set():
            try:
                self._flush(reg)
            except Exception as exc:  # never let reporting kill training; retry next tick
                self.error = exc
            self._wake.wait(self.interval)
            self._wake.clear()
