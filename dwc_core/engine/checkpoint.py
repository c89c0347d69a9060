"""Checkpoints: written atomically (temp file + rename) after a free-space check, loaded with ``weights_only=True``.

Every checkpoint of a run records the run's unique id (``run_uid``) and its config hash; :func:`load` refuses one
that belongs to another run or config, and names the file in every failure (missing, empty, truncated, corrupt).
A write that runs out of space raises :class:`DiskFull` ("disk full at <path>") and leaves no temp file behind;
temp files of writes that were killed are removed at the next start of the run (:func:`dwc_core.fileio.temp_files`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from dwc_core.errors import DiskFull, TrainingError
from dwc_core.fileio import NO_SPACE, RESERVE_BYTES, atomic_path, megabytes, require_free_space


class CheckpointError(TrainingError):
    """A checkpoint cannot be used: unreadable, or it belongs to another run / config."""

    exit_code = 2


def config_hash(config: dict) -> str:
    """A short hash of the frozen config sections that define what is trained."""
    sections = {k: config.get(k) for k in ("dataset", "model", "trainer")}
    return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()[:16]


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    # RNG states are CPU byte tensors whatever the checkpoint was loaded onto (map_location=cuda moves them)
    torch.set_rng_state(state["torch"].cpu())
    if (
        "cuda" in state and torch.cuda.is_available()
    ):  # as many GPUs as both machines have (a resume may move)
        for i, gpu_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(gpu_state.cpu(), i)


def tensor_bytes(obj) -> int:
    """The bytes of all tensors in a nested dict/list (what ``torch.save`` will mostly write)."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def check_free_space(path: Path, needed: int) -> None:
    """Raise :class:`DiskFull` if the filesystem holding ``path`` has less than ``needed`` + a reserve free."""
    require_free_space(path, needed, "the checkpoint", "`dwc resume` the run")


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """Write ``obj`` to ``path`` via a temp file and a rename: ``path`` is either the old or the new checkpoint,
    never a torn one. Out of space (before or during the write) → :class:`DiskFull`, temp file removed."""
    path = Path(path)
    check_free_space(path, tensor_bytes(obj))
    try:
        with atomic_path(path) as tmp:  # removed again if the write fails
            torch.save(obj, tmp)
    except BaseException as exc:
        if _is_enospc(exc, path):
            free = shutil.disk_usage(path.parent).free
            raise DiskFull(
                f"disk full at {path}: writing the checkpoint failed with {megabytes(free)} free ({_short(exc)}). Free "
                "some space, then `dwc resume` the run."
            ) from None
        raise


def _is_enospc(exc: BaseException, path: Path) -> bool:
    if isinstance(exc, OSError) and exc.errno in NO_SPACE:
        return True
    if isinstance(exc, RuntimeError):  # torch's zip writer reports a short write as "unexpected pos …"
        try:
            return shutil.disk_usage(path.parent).free < RESERVE_BYTES
        except OSError:
            return False
    return False


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def load(
    path: str | os.PathLike, map_location="cpu", run_uid: str | None = None, cfg_hash: str | None = None
):
    """Load a checkpoint; any failure names the file. With ``run_uid`` / ``cfg_hash``, a checkpoint recording
    another run or config is refused naming both (a checkpoint from before ids were recorded is accepted)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}.") from None
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes; its write was interrupted).")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 — torch raises RuntimeError/EOFError/UnpicklingError/... on a bad file
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({_short(exc)}).") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a dwc checkpoint (no model weights in it).")
    got_uid, got_hash = state.get("run_uid"), state.get("config_hash")
    if run_uid and got_uid and got_uid != run_uid:
        raise CheckpointError(
            f"checkpoint {path} belongs to another run (run uid {got_uid}; this run is uid {run_uid}); refusing to "
            "load another run's weights."
        )
    if cfg_hash and got_hash and got_hash != cfg_hash:
        raise CheckpointError(
            f"checkpoint {path} was written under another config (config hash {got_hash}; this run's is "
            f"{cfg_hash}); refusing to load it."
        )
    return state
