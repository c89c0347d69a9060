"""`dwc models`: the methods, their switches (from the torch-free schema) and parameter counts.

Counts need torch: they come from ``python -m dwc_core.model_info`` in a subprocess, cached under
``runs/.cache/model_params-<schema hash>.json``, so this command never imports torch itself.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from dwc_core.errors import DwcError
from dwc_core.schema import Opt, flatten_section
from dwc_core.schema.methods import METHODS


def switches(method: str) -> dict[str, Opt]:
    return flatten_section(METHODS[method])


def _cache_path(cache_dir: Path) -> Path:
    digest = hashlib.sha1(repr(sorted((m, repr(switches(m))) for m in METHODS)).encode()).hexdigest()[:12]
    return cache_dir / f"model_params-{digest}.json"


def parameter_counts(cache_dir: Path) -> dict[str, dict[str, int]]:
    path = _cache_path(cache_dir)
    if path.is_file():
        return json.loads(path.read_text())
    res = subprocess.run(
        [sys.executable, "-m", "dwc_core.model_info"], capture_output=True, text=True, timeout=600
    )
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise DwcError(f"could not build the methods to count their parameters: {tail}")
    counts = json.loads(res.stdout.strip().splitlines()[-1])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(counts))
    return counts


def human(n: int | None) -> str | None:
    if n is None:
        return None
    if n == 0:
        return "0"
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def yaml_value(value) -> str:
    """A default as it would be written in experiments.yaml."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
