"""Process-level set-up of a training/evaluation process: seeding, device, precision, environment capture."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """One seed drives python ``random``, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def pick_device(choice: str) -> torch.device:
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        from dwc_core.errors import ConfigError

        raise ConfigError("trainer.device = cuda, but no CUDA device is visible to this process.")
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def effective_precision(choice: str, device: torch.device) -> str:
    if choice == "fp16" and device.type != "cuda":
        from dwc_core.errors import ConfigError

        raise ConfigError(
            "trainer.precision = fp16 needs a CUDA device (CPU kernels such as the LSTM have no fp16 autocast). "
            "Use bf16 or fp32 on CPU, or auto."
        )
    if choice != "auto":
        return choice
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def autocast_factory(precision: str, device: torch.device):
    """A zero-argument callable returning the autocast context of the run's precision."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16

    def factory():
        return torch.autocast(device_type=device.type, dtype=dtype)

    return factory


def _git(project: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(project), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state(project: Path) -> tuple[str | None, int | None]:
    """(commit, dirty flag) of the git work tree holding the project, or (None, None) outside git."""
    commit = _git(project, "rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git(project, "status", "--porcelain", "--untracked-files=no")
    return commit, int(bool(status))


def versions() -> dict:
    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "platform": platform.platform(),
        "argv": sys.argv,
    }
    # from the installed distributions: importing torchvision/open_clip only to read a version costs seconds
    for name, dist in (("torchvision", "torchvision"), ("open_clip", "open_clip_torch"), ("numpy", "numpy")):
        try:
            out[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def hostname() -> str:
    return socket.gethostname()
