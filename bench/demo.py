"""`dwc run demo` from nothing, as `make demo` runs it (venv install excluded): wall time, including the synthetic
dataset generation and the image cache, and the untrained (epoch 0) vs final test R@10.

    .venv/bin/python bench/demo.py            # bar: ≤ 240 s; final R@10 ≥ 2 × untrained and ≥ untrained + 15
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dwc_core.runs.registry import Registry  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="dwc-demo-") as tmp:
        shutil.copy(ROOT / "experiments.yaml", tmp)
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "dwc_tui.cli", "--project", tmp, "run", "demo"])
        wall = time.perf_counter() - t0
        reg = Registry(Path(tmp) / "runs" / "registry.db")
        evals = reg.evaluations(1, kind="epoch")
        untrained = evals[0]["metrics"]["R@10"]
        final = evals[-1]["metrics"]["R@10"]
        ok = res.returncode == 0 and wall <= 240 and final >= 2 * untrained and final >= untrained + 15
        print(f"\nwall {wall:.1f} s (bar ≤ 240 s), exit code {res.returncode}")
        print(
            f"test R@10: untrained (epoch 0) {untrained:.2f} → final (epoch {evals[-1]['epoch']}) {final:.2f}"
        )
        print(
            f"ratio {final / max(untrained, 1e-9):.1f}× (bar ≥ 2×), gain {final - untrained:+.2f} points (bar ≥ +15)"
        )
        print("demo bar:", "met" if ok else "NOT met")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
