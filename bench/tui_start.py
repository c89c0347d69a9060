"""`dwc tui` start-up: time from process start to the first frame that shows the runs table, and the import share.

    .venv/bin/python bench/tui_start.py              # 7 starts, median
    .venv/bin/python bench/tui_start.py --repeats 3

Seeds a project with a few finished runs, then starts the real ``dwc tui`` on a pseudo-terminal (120×40,
TERM=xterm-256color) and reads its output until a frame carries the runs table's header and a run's status
("experiment" and "done"); then presses ctrl+q and checks it exits 0. Alongside, in separate interpreters:

* bare: ``python -c pass`` (interpreter start-up, the floor);
* imports: the start path's imports (the CLI, the app and the dashboard screen), timed inside the interpreter.

Target: first frame with the runs table < 1 s (median). Prints the load average, which inflates every figure.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DWC = [sys.executable, "-c", "from dwc_tui.cli import main; main()"]

SEED = """
import sys
from pathlib import Path
from dwc_core.runs.registry import Registry
project = Path(sys.argv[1])
reg = Registry(project / "runs" / "registry.db")
for i in range(6):
    cfg = {"dataset": {"name": "synthetic"}, "model": {"name": "tirg", "embed_dim": 32},
           "trainer": {"epochs": 2, "seed": i}, "eval": {}}
    rid = reg.create_run("demo", cfg, project / "runs", variant={"seed": i})["id"]
    reg.log_metrics(rid, [{"step": s, "epoch": s / 2, "split": "train", "name": "loss", "value": 2 / s}
                          for s in range(1, 5)])
    reg.update(rid, started=1.78e9, epoch=2, best_value=50.0, best_metrics={"R@10": 60.0, "mean": 50.0})
    reg.set_status(rid, "running", "bench")
    reg.set_status(rid, "done", "bench", ended=1.78e9 + 60)
reg.close()
"""

IMPORTS = """
import time
t0 = time.perf_counter()
import dwc_tui.cli
from dwc_tui.app.app import DwcApp
from dwc_tui.app.screens.dashboard import DashboardScreen
print(time.perf_counter() - t0)
"""


def first_frame(project: Path, size: tuple[int, int] = (120, 40), timeout: float = 30.0) -> float:
    """Seconds from spawning `dwc tui` to a frame with the runs table; quits it with ctrl+q (exit 0 checked)."""
    master, slave = pty.openpty()
    cols, rows = size
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "DWC_PROJECT": str(project), "COLUMNS": str(cols)}
    env.pop("NO_COLOR", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        DWC + ["tui"], stdin=slave, stdout=slave, stderr=slave, cwd=project, env=env, start_new_session=True
    )
    os.close(slave)
    seen = b""
    shown_at = None
    try:
        while time.perf_counter() - t0 < timeout:
            ready, _, _ = select.select([master], [], [], 0.05)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            seen += chunk
            if b"experiment" in seen and b"done" in seen:
                shown_at = time.perf_counter() - t0
                break
        if shown_at is None:
            raise SystemExit(
                f"`dwc tui` showed no runs table within {timeout:.0f} s; output:\n{seen[-2000:]!r}"
            )
        time.sleep(0.3)
        os.write(master, b"\x11")  # ctrl+q
        deadline = time.perf_counter() + 10
        while proc.poll() is None and time.perf_counter() < deadline:
            if select.select([master], [], [], 0.05)[0]:
                try:
                    os.read(master, 65536)
                except OSError:
                    break
        code = proc.wait(timeout=10)
        if code != 0:
            raise SystemExit(f"`dwc tui` exited {code} after ctrl+q")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return shown_at


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "experiments.yaml").write_text("experiments: {}\n")
        subprocess.run([sys.executable, "-c", SEED, str(project)], check=True, cwd=ROOT)
        first_frame(project)  # warm the page cache and the bytecode caches
        frames, bare, imports = [], [], []
        for _ in range(args.repeats):
            frames.append(first_frame(project))
            bare.append(timed([sys.executable, "-c", "pass"]))
            res = subprocess.run(
                [sys.executable, "-c", IMPORTS], check=True, capture_output=True, text=True, cwd=ROOT
            )
            imports.append(float(res.stdout.strip().splitlines()[-1]))
    med = statistics.median(frames)
    imp = statistics.median(imports)
    py = statistics.median(bare)
    print(f"first frame with the runs table: median {med * 1000:.0f} ms (min {min(frames) * 1000:.0f}, "
          f"max {max(frames) * 1000:.0f}; {args.repeats} starts)   target < 1000 ms: "
          f"{'met' if med < 1.0 else 'MISSED'}")  # fmt: skip
    print(f"  interpreter start-up {py * 1000:.0f} ms ({py / med:.0%}), start-path imports {imp * 1000:.0f} ms "
          f"({imp / med:.0%}), the rest (mount, first poll, first paint) {(med - py - imp) * 1000:.0f} ms "
          f"({(med - py - imp) / med:.0%})")  # fmt: skip
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
