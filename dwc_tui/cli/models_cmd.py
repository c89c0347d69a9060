"""`dwc models`: the methods, their switches (from the torch-free schema) and parameter counts.

Counts need torch: they come from ``python -m dwc_core.engine.model_info`` in a subprocess, cached under
``runs/.cache/model_params-<schema hash>.json``, so this command never imports torch itself.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from dwc_core.config.schema import Opt, flatten_section
from dwc_core.config.schema.methods import METHODS
from dwc_core.errors import DwcError, UsageError
from dwc_tui.cli.app import FormatOpt, _check_format, _project, app, handle_errors
from dwc_tui.cli.output import emit, err, out


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
        [sys.executable, "-m", "dwc_core.engine.model_info"], capture_output=True, text=True, timeout=600
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


@app.command(rich_help_panel="Results")
@handle_errors
def models(
    method: Annotated[str | None, typer.Argument(help="one method: list all its switches")] = None,
    counts: Annotated[
        bool,
        typer.Option(
            "--counts/--no-counts",
            help="parameter counts at the default config (builds every method once in a subprocess, then cached)",
        ),
    ] = False,
    fmt: FormatOpt = "table",
) -> None:
    """Methods and their switches (model.* options); --counts adds trainable / frozen parameter counts."""
    _check_format(fmt)
    if method is not None and method not in METHODS:
        raise UsageError(f"no method named {method!r}. Allowed: {' | '.join(METHODS)}.")
    numbers = parameter_counts(_project() / "runs" / ".cache") if counts else {}
    if method is not None:
        rows = [
            {
                "switch": f"model.{key}",
                "default": yaml_value(opt.default),
                "allowed": opt.describe(),
                "help": opt.help,
            }
            for key, opt in switches(method).items()
        ]
        emit(rows, ["switch", "default", "allowed", "help"], fmt, title=f"{method}: switches")
        if numbers and fmt == "table":
            parts = numbers.get(method, {})
            out.print("parameters: " + ", ".join(f"{k} {human(v)}" for k, v in parts.items()))
        return
    rows = []
    for name in METHODS:
        c = numbers.get(name, {})
        rows.append(
            {
                "method": name,
                "trainable": human(c.get("total")) if fmt == "table" else c.get("total"),
                "frozen": human(c.get("frozen")) if fmt == "table" else c.get("frozen"),
                "parts": c,
                "switches": ", ".join(k for k in switches(name) if not k.endswith("pretrained")),
            }
        )
    columns = ["method", "trainable", "frozen", "switches"] if counts else ["method", "switches"]
    emit(rows, columns, fmt, title="methods (default sizes, no weights)" if counts else "methods")
    if not counts and fmt == "table":
        err.print("[dim]parameter counts: dwc models --counts[/]")
