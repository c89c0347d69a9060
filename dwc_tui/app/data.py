"""One-shot reads for the Run, Compare and Browse screens (called on thread workers, never on the UI thread)."""

from __future__ import annotations

import time
from pathlib import Path

from dwc_tui.app.poller import check_schema


def _registry(registry_path: Path):
    from dwc_core.runs.registry import Registry

    reg = Registry(registry_path, create=False)
    check_schema(reg.conn, registry_path)  # a newer registry gets a clear message
    return reg


def load_run(registry_path: Path, run_id: int) -> dict:
    reg = _registry(registry_path)
    try:
        row = reg.get(run_id)
        evals = reg.evaluations(run_id)
        events = reg.events(run_id)
    finally:
        reg.close()
    checkpoints = []
    run_dir = Path(row["run_dir"]) if row.get("run_dir") else None
    if run_dir is not None and run_dir.is_dir():
        for p in sorted(run_dir.glob("*.pt")):
            st = p.stat()
            checkpoints.append({"file": p.name, "size_mb": st.st_size / 2**20, "modified": st.st_mtime})
    return {"run": row, "evaluations": evals, "events": events, "checkpoints": checkpoints}


def read_log_from(path: Path, offset: int, max_bytes: int = 1 << 20) -> tuple[str, int]:
    """New text of a growing log from ``offset`` (the first read starts at most ``max_bytes`` from the end)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            if size < offset:  # truncated / replaced
                offset = 0
            start = max(offset, size - max_bytes) if offset == 0 else offset
            fh.seek(start)
            data = fh.read(size - start)
    except OSError:
        return "", offset
    return data.decode("utf-8", "replace").replace("\r", "\n"), start + len(data)


def when(ts: float | None) -> str:
    return time.strftime("%m-%d %H:%M:%S", time.localtime(ts)) if ts else "–"


def compare_table(registry_path: Path, run_ids: list[int], which: str = "best"):
    """The compare table of the marked runs (grouped across seeds, only the config keys that differ), from each
    run's best or last evaluation (``which``)."""
    from dwc_core.results.compare import compare_rows

    reg = _registry(registry_path)
    try:
        runs = [reg.get(i) for i in run_ids]
        return compare_rows(reg, runs=runs, only_changed=True, group_by="experiment", which=which)
    finally:
        reg.close()


def browse_view(registry_path: Path, run_id: int, against: int | None, filters: dict):
    """Per-query results of a run (``dwc_core.results.browse.queries``), or the --against view of two runs."""
    from dwc_core.results import browse

    reg = _registry(registry_path)
    try:
        if against is not None:
            return browse.against(reg, run_id, against, k=filters.get("k"))
        return browse.queries(
            reg,
            run_id,
            limit=filters.get("limit", 500),
            **{
                k: v
                for k, v in filters.items()
                if k in ("misses", "hits", "rank_above", "rank_below", "grep", "k")
            },
        )
    finally:
        reg.close()
