"""Slurm's view of a run, in words, for listings (CLI and TUI). Torch-free, no I/O.

A run handed to Slurm carries ``slurm_job``, ``slurm_state``, ``slurm_reason``, ``slurm_nodes`` and
``slurm_requeues`` (migration 004_slurm; written by the Slurm worker). ``slurm_state`` starts with Slurm's state
name and may carry the worker's own wording after it ("RUNNING on node1", "PENDING (Priority)"); only the first
word is read here, the reason and nodes come from their own columns.

- :func:`slurm_summary` — "PENDING (Priority)", "RUNNING on node1", "TIMEOUT · requeued 1×": beside our status;
- :func:`slurm_compact` — the same with squeue's short state codes, cut to a width, for a table cell;
- :func:`slurm_line` — everything (job id, state, reason, nodes, requeues) for ``dwc show``;
- :func:`slurm_fields` — the raw columns for machine formats (the state as Slurm's bare state name).
"""

from __future__ import annotations

FIELDS = ("slurm_job", "slurm_state", "slurm_reason", "slurm_nodes", "slurm_requeues")
# squeue's compact state codes (``squeue -t``, column ST)
SHORT = {
    "PENDING": "PD", "RUNNING": "R", "SUSPENDED": "S", "COMPLETING": "CG", "COMPLETED": "CD",
    "CONFIGURING": "CF", "CANCELLED": "CA", "FAILED": "F", "TIMEOUT": "TO", "PREEMPTED": "PR",
    "NODE_FAIL": "NF", "REVOKED": "RV", "SPECIAL_EXIT": "SE", "OUT_OF_MEMORY": "OOM", "BOOT_FAIL": "BF",
    "DEADLINE": "DL", "REQUEUED": "RQ", "REQUEUE_HOLD": "RH", "REQUEUE_FED": "RF", "RESIZING": "RS",
    "SIGNALING": "SI", "STAGE_OUT": "SO", "STOPPED": "ST", "RESV_DEL_HOLD": "RD",
}  # fmt: skip
NO_REASON = ("", "None", "(null)")
# Slurm end states that say nothing beyond our own status (done / cancelled)
QUIET_END_STATES = ("COMPLETED", "CANCELLED")


def slurm_state(row: dict) -> str | None:
    """Slurm's bare state name of the run's job ("PENDING"), or None when the run has no Slurm job/state."""
    if not row.get("slurm_job"):
        return None
    text = str(row.get("slurm_state") or "").strip()
    return text.split()[0] if text else None


def _reason(row: dict, state: str) -> str:
    reason = str(row.get("slurm_reason") or "").strip()
    if reason in NO_REASON or reason == state:
        return ""
    return reason


def _requeues(row: dict) -> int:
    try:
        return int(row.get("slurm_requeues") or 0)
    except (TypeError, ValueError):
        return 0


def _detail(row: dict, state: str) -> str:
    """What follows the state: the nodes of a running job, else Slurm's reason."""
    nodes = str(row.get("slurm_nodes") or "").strip()
    if state in ("RUNNING", "COMPLETING") and nodes:
        return f"on {nodes}"
    reason = _reason(row, state)
    if not reason:
        return ""
    if reason.split()[0] == state:  # sacct's "CANCELLED by 0": the state already says the first word
        return reason[len(state) :].strip()
    return f"({reason})"


def slurm_summary(row: dict) -> str | None:
    """Slurm's state of the run in a few words ("PENDING (Priority)", "RUNNING on node1",
    "TIMEOUT · requeued 2×"); None when the run was never handed to Slurm."""
    if not row.get("slurm_job"):
        return None
    state = slurm_state(row) or "submitted"
    text = f"{state} {_detail(row, state)}".strip()
    n = _requeues(row)
    return f"{text} · requeued {n}×" if n else text


def slurm_compact(row: dict, width: int | None = None, quiet_when_settled: bool = True) -> str | None:
    """The summary with squeue's short codes ("PD Priority", "R node[01-04]", "TO ↻2"), cut to ``width``
    characters with "…". With ``quiet_when_settled``, None for a job that ended COMPLETED / CANCELLED without
    re-submissions (our status already says done / cancelled)."""
    if not row.get("slurm_job"):
        return None
    state = slurm_state(row) or ""
    n = _requeues(row)
    if quiet_when_settled and state in QUIET_END_STATES and not n:
        return None
    code = SHORT.get(state, state or "submitted")
    detail = _detail(row, state).removeprefix("on ")
    if detail.startswith("(") and detail.endswith(")"):
        detail = detail[1:-1]
    text = f"{code} {detail}".strip() + (f" ↻{n}" if n else "")
    if width is not None and len(text) > width:
        text = text[: max(0, width - 1)] + "…"
    return text


def slurm_line(row: dict) -> str | None:
    """Everything Slurm said about the run's job, for ``dwc show``; None when it has no Slurm job."""
    if not row.get("slurm_job"):
        return None
    state = slurm_state(row) or "–"
    reason = _reason(row, state) or "–"
    nodes = str(row.get("slurm_nodes") or "").strip() or "–"
    return f"slurm job {row['slurm_job']}  state {state}  reason {reason}  nodes {nodes}  requeues {_requeues(row)}"


def slurm_fields(row: dict) -> dict:
    """The raw Slurm columns for json/csv (nulls stay null; ``slurm_state`` as Slurm's bare state name)."""
    return {
        "slurm_job": row.get("slurm_job"),
        "slurm_state": slurm_state(row),
        "slurm_reason": row.get("slurm_reason"),
        "slurm_nodes": row.get("slurm_nodes"),
        "slurm_requeues": _requeues(row) if row.get("slurm_job") else None,
    }
