"""Which GPUs this host has, torch-free (workers and pre-launch checks must not import torch).

Order of truth: ``DWC_FAKE_GPUS`` (tests only: a count, so CPU machines can exercise multi-GPU scheduling),
then ``CUDA_VISIBLE_DEVICES`` when set, then ``nvidia-smi -L``. Utilisation and memory (``dwc gpus``) come from
NVML through ``nvidia-ml-py``, imported only where asked for.
"""

from __future__ import annotations

import os
import shutil
import subprocess

FAKE_ENV = "DWC_FAKE_GPUS"


def visible_gpus() -> list[str]:
    """Ids of the GPUs a process started from here could use, as CUDA_VISIBLE_DEVICES would name them."""
    fake = os.environ.get(FAKE_ENV)
    if fake is not None and fake.strip() != "":
        return [str(i) for i in range(int(fake))]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [x.strip() for x in env.split(",") if x.strip()]
        # "-1" or an empty value hides every GPU (CUDA stops at the first invalid id)
        out = []
        for x in ids:
            if x.startswith("-"):
                break
            out.append(x)
        return out
    return [str(i) for i in range(_nvidia_smi_count())]


def _nvidia_smi_count() -> int:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        res = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return 0
    if res.returncode != 0:
        return 0
    return sum(1 for line in res.stdout.splitlines() if line.startswith("GPU "))


def gpu_count() -> int:
    return len(visible_gpus())
