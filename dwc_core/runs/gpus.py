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


def gpu_request_problem(trainer: dict, experiment: str = "") -> str | None:
    """Why a run cannot get the GPUs it asks for on this host (one paragraph naming both counts), or None.

    ``trainer.device: cuda`` needs ``trainer.gpus`` visible GPUs; ``auto`` with some GPUs but fewer than
    ``trainer.gpus`` is refused too (the processes would not all get one); ``cpu`` never needs a GPU.
    """
    device, wanted = trainer.get("device", "auto"), int(trainer.get("gpus", 1))
    if device == "cpu":
        return None
    have = len(visible_gpus())
    if device == "auto" and (have == 0 or wanted <= have):
        return None
    if wanted <= have:
        return None
    what = f"{experiment}: " if experiment else ""
    shown = f" ({FAKE_ENV}={os.environ[FAKE_ENV]})" if os.environ.get(FAKE_ENV, "").strip() else ""
    if "CUDA_VISIBLE_DEVICES" in os.environ and not shown:
        shown = f" (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']})"
    return (
        f"{what}trainer.gpus = {wanted} with trainer.device = {device}, but this machine shows {have} GPU(s)"
        f"{shown}. Lower trainer.gpus to at most {have}"
        + (", or " if have else ": there is no GPU here; ")
        + "use trainer.device: cpu to run the processes on the CPU."
    )


def check_gpu_request(trainer: dict, experiment: str = "") -> None:
    """Refuse (ConfigError, exit 2), before anything launches, a run that asks this host for more GPUs than it
    shows (torch-free); see :func:`gpu_request_problem`."""
    from dwc_core.errors import ConfigError

    nodes = int(trainer.get("nodes", 1))
    if nodes > 1:  # one machine trains here; several nodes are what a Slurm job (srun → torchrun) gives
        raise ConfigError(
            f"{experiment + ': ' if experiment else ''}trainer.nodes = {nodes} asks for a multi-node job, which only "
            "a Slurm worker starts: queue it (`dwc queue`) for `dwc worker --slurm`, or set trainer.nodes: 1 to "
            "train on this machine. Nothing was launched."
        )
    problem = gpu_request_problem(trainer, experiment)
    if problem:
        head, _, rest = problem.partition(". ")
        raise ConfigError(f"{head}. Nothing was launched. {rest}")


def gpu_stats() -> tuple[list[dict], str | None]:
    """Memory and utilisation of each GPU this host shows, through NVML (``nvidia-ml-py``, imported only here).

    Returns (rows, None) or ([], a one-line reason: the package is missing, or no NVIDIA driver/GPU is present).
    Rows: index, name, memory used / total (MiB), utilisation %, temperature. Fake GPUs (tests) have no stats.
    """
    try:
        import pynvml
    except ImportError:
        return [], "GPU statistics need the nvidia-ml-py package (pip install nvidia-ml-py)."
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 — NVMLError subclasses differ by driver version
        return [], f"no NVIDIA driver or GPU is available here (NVML: {exc})."
    rows = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            row = {"index": str(i), "name": _text(pynvml.nvmlDeviceGetName(h))}
            row["memory_used_mib"] = round(mem.used / 2**20)
            row["memory_total_mib"] = round(mem.total / 2**20)
            try:
                row["util_pct"] = pynvml.nvmlDeviceGetUtilizationRates(h).gpu
            except Exception:  # noqa: BLE001 — not supported on every device (MIG slices)
                row["util_pct"] = None
            try:
                row["temp_c"] = pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)
            except Exception:  # noqa: BLE001
                row["temp_c"] = None
            rows.append(row)
    finally:
        pynvml.nvmlShutdown()
    if not rows:
        return [], "NVML reports no GPU on this machine."
    return rows, None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
