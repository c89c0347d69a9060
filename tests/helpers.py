"""What many test modules need, written once: the `dwc` command in a subprocess or in-process, a trainer started
by hand, polling until something holds, tiny projects, and the import-hygiene probe."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HEAVY = ("torch", "torchvision", "open_clip", "textual", "pynvml")  # pynvml: nvidia-ml-py, `dwc gpus` only
ROOT = Path(__file__).resolve().parent.parent  # the repository


def read_to_end(fd: int, deadline: float) -> bytes:
    """What the child on a pseudo-terminal (``pty.fork``) writes until it closes the terminal, or ``deadline``
    (a ``time.time()``) passes."""
    import select

    out = b""
    while time.time() < deadline:
        if not select.select([fd], [], [], 1)[0]:
            continue
        try:
            data = os.read(fd, 4096)
        except OSError:  # the child closed the terminal (EIO on Linux)
            break
        if not data:
            break
        out += data
    return out


def _env(env: dict | None) -> dict | None:
    return {**os.environ, **env} if env else None


def dwc_argv(project: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "dwc_tui.cli", "--project", str(project), *args]


def dwc(
    project: Path, *args: str, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`dwc --project PROJECT ARGS...` in a subprocess, output captured as text, stdin closed."""
    return subprocess.run(
        dwc_argv(project, *args), capture_output=True, text=True, timeout=timeout, env=_env(env),
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def start(project: Path, *args: str, env: dict | None = None, merge_stderr: bool = False) -> subprocess.Popen:
    """`dwc --project PROJECT ARGS...` started in the background (stdout and stderr piped, as text)."""
    return subprocess.Popen(
        dwc_argv(project, *args), stdout=subprocess.PIPE, text=True, env=_env(env),
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
    )  # fmt: skip


def train(project: Path, run_id: int, timeout: float = 180) -> subprocess.CompletedProcess:
    """The training process for one run, started by hand as a worker would."""
    return subprocess.run(
        [sys.executable, "-m", "dwc_core.engine.train", str(run_id), "--registry", str(project / "runs" / "registry.db")],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def invoke(project: Path, *args: str):
    """`dwc --project PROJECT ARGS...` in this process (Typer's CliRunner)."""
    from typer.testing import CliRunner

    from dwc_tui.cli import app

    return CliRunner().invoke(app, ["--project", str(project), *args])


TINY_TIRG = "{name: tirg, embed_dim: 32, cnn: {arch: tiny}, text: {word_dim: 16, hidden: 32}}"
E2E_TRAINER = "epochs: 2, batch_size: 16, lr: 1.0e-3, num_workers: 0, log_every: 2, heartbeat_s: 0.5"


def tiny_experiments(
    trainer: str = E2E_TRAINER, data: str = "num_train: 320, num_test: 48", more: str = ""
) -> str:
    """experiments.yaml text: experiment `tiny` (synthetic data at 32 px, TIRG with tiny encoders) with these
    dataset sizes and trainer options, followed by `more` (further keys of `tiny`, other experiments)."""
    return (
        "experiments:\n  tiny:\n"
        f"    dataset: {{name: synthetic, {data}, image_size: 32}}\n"
        f"    model: {TINY_TIRG}\n"
        f"    trainer: {{{trainer}}}\n" + more
    )


def write_project(path: Path, experiments: str) -> Path:
    """A project folder holding only `experiments.yaml`."""
    (path / "experiments.yaml").write_text(experiments)
    return path


def shipped_project(path: Path) -> Path:
    """A project folder holding a copy of the repository's own `experiments.yaml` (the shipped `demo` and co)."""
    return write_project(path, (ROOT / "experiments.yaml").read_text())


def wait_for(
    pred: Callable[[], Any], timeout: float = 180.0, what: str = "condition", every: float = 0.1
) -> Any:
    """Poll `pred` until it returns something truthy (returned), or fail after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def finish(proc: subprocess.Popen, timeout: float = 300, what: str = "process") -> str:
    """Wait for a background process and return its stdout; kill it and fail if it does not exit in time."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"{what} did not exit:\n" + (out or "")) from None
    return out


def heavy_modules_after(args: list[str], cwd: Path) -> list[str]:
    """Run `dwc ARGS` in a fresh interpreter and return which of HEAVY it had imported by exit."""
    code = (
        "import sys, atexit\n"
        f"atexit.register(lambda: print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules)))\n"
        f"sys.argv = ['dwc', *{args!r}]\n"
        "from dwc_tui.cli import main\nmain()\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60)
    line = [x for x in res.stdout.splitlines() if x.startswith("HEAVY=")]
    assert line, res.stdout + res.stderr
    return [m for m in line[-1][len("HEAVY=") :].split(",") if m]


def loss_steps(reg, run_id: int) -> list[int]:
    """The steps of a run's training-loss metrics, in registry order."""
    return [m["step"] for m in reg.metrics(run_id, split="train", name="loss")]
