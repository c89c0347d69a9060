"""The `dwc` command: one module per command group, all registered on the Typer app in ``app.py``.

Exit codes: 0 ok, 1 run failed, 2 usage/config/data error, 3 registry unavailable, 130 interrupted. Nothing here
imports torch, torchvision, open_clip or textual at import time: listing commands stay fast.
"""

from __future__ import annotations

import importlib
import os
import sys

from dwc_tui.cli.app import app

# Importing a command module registers its commands; this order is the order of the panels in `dwc --help`.
COMMAND_MODULES = ("runs_cmd", "queue_cmd", "results_cmd", "browse_cmd", "models_cmd", "data_cmd", "tui_cmd")
for _name in COMMAND_MODULES:
    importlib.import_module(f"dwc_tui.cli.{_name}")
app.add_typer(importlib.import_module("dwc_tui.cli.data_cmd").app, name="data", rich_help_panel="Data")


def _fd1() -> tuple[int, int] | None:
    try:
        st = os.fstat(1)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def main() -> None:
    """Run the `dwc` command. A reader that stops early (`dwc runs | head`) ends the output quietly, exit 0."""
    code = 0
    closed = False
    stdout, fd1 = sys.stdout, _fd1()
    try:
        app()
    except SystemExit as exc:
        code = exc.code
    except BrokenPipeError:
        closed = True
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        closed = True
    # Typer/Click answer a closed pipe by replacing stdout with a wrapper that silences later flushes, and Rich
    # (Typer's help) by pointing fd 1 at /dev/null; both then exit 1
    if closed or sys.stdout is not stdout or _fd1() != fd1:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # the interpreter's last flush of stdout then has nowhere to fail
        if code in (None, 0, 1):
            code = 0
    sys.exit(code)


__all__ = ["app", "main"]
