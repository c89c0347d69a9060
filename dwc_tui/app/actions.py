"""What the TUI can do to runs, in one place: queue, cancel, resume, delete/restore, workers.

Each function runs on a worker thread (never on the UI thread), opens its own registry connection and returns a
one-line message for the user, or raises :class:`dwc_core.errors.DwcError` with the same message the CLI gives.
They go through ``dwc_core.runs.control``, the verbs the CLI uses too, so the two never disagree.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from dwc_core.errors import RegistryError, UsageError
from dwc_core.runs import control


@contextmanager
def _registry(registry_path: Path, create: bool = False):
    from dwc_core.runs.registry import Registry

    reg = Registry(registry_path, create=create)
    try:
        yield reg
    except sqlite3.OperationalError as exc:
        if "readonly" in str(exc) or "read-only" in str(exc):
            raise RegistryError(
                f"{registry_path}: the run registry is read-only here ({exc}); the dashboard can show runs "
                "but not change them. Check the file's permissions or open it as its owner."
            ) from None
        raise RegistryError(f"{registry_path}: the registry refused the change: {exc}.") from None
    finally:
        reg.close()


# ------------------------------------------------------------------------------------------------ experiments
def experiment_names(experiments_file: Path) -> list[tuple[str, str]]:
    from dwc_core.config.experiments import ExperimentsFile

    ef = ExperimentsFile.load(experiments_file)
    return [(n, ef.description(n)) for n in ef.names()]


def preview(experiments_file: Path, name: str, overrides: list[str]) -> list[dict]:
    """The runs queueing ``name`` with ``overrides`` would create (validated; ConfigError as the CLI words it)."""
    from dwc_core.config.experiments import ExperimentsFile

    specs = ExperimentsFile.load(experiments_file).resolve(name, overrides)
    return [{"experiment": s.experiment, "variant": s.variant, "seed": s.seed} for s in specs]


def queue(project: Path, experiments_file: Path, name: str, overrides: list[str]) -> list[int]:
    with _registry(control.registry_path(project), create=True) as reg:
        rows = control.queue_experiment(reg, project, name, overrides, experiments_file=experiments_file)
    return [int(r["id"]) for r in rows]


# -------------------------------------------------------------------------------------------------- runs
def cancel(registry_path: Path, ids: list[int]) -> str:
    with _registry(registry_path) as reg:
        return "; ".join(control.cancel(reg, rid) for rid in ids)


def resume(registry_path: Path, ids: list[int]) -> str:
    with _registry(registry_path) as reg:
        for rid in ids:
            control.resume(reg, rid)
    return f"{_ids(ids)} re-queued: a worker continues from last.pt"


def delete(registry_path: Path, ids: list[int], restore: bool = False) -> str:
    with _registry(registry_path) as reg:
        (control.restore if restore else control.remove)(reg, ids)
    return f"{_ids(ids)} {'restored' if restore else 'deleted (hidden from lists; files kept)'}"


def live_workers(project: Path) -> int:
    return len(control.live_workers(project))


def start_worker(project: Path, gpus: list[str]) -> str:
    """Start `dwc worker --detach` in its own session (it outlives the dashboard)."""
    cmd = [sys.executable, "-m", "dwc_tui.cli", "--project", str(project), "worker", "--detach"]
    cmd += ["--gpus", ",".join(gpus)] if gpus else ["--cpu"]
    res = subprocess.run(
        cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, start_new_session=True, timeout=120
    )
    if res.returncode != 0:
        raise UsageError(
            (res.stderr or res.stdout).strip().removeprefix("error:").strip() or "the worker did not start"
        )
    return (
        (res.stderr or res.stdout).strip().splitlines()[-1]
        if (res.stderr or res.stdout).strip()
        else "worker started"
    )


# ---------------------------------------------------------------------------------------------------- misc
def _ids(ids: list[int]) -> str:
    return ("run " if len(ids) == 1 else "runs ") + ", ".join(str(i) for i in ids)
