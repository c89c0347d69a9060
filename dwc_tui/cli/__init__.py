"""The `dwc` command: one module per command group, all registered on the Typer app in ``app.py``.

Exit codes: 0 ok, 1 run failed, 2 usage/config/data error, 3 registry unavailable, 130 interrupted. Nothing here
imports torch, torchvision, open_clip or textual at import time: listing commands stay fast.
"""

from __future__ import annotations

import importlib

from dwc_tui.cli.app import app

# Importing a command module registers its commands; this order is the order of the panels in `dwc --help`.
COMMAND_MODULES = ("runs_cmd", "queue_cmd", "results_cmd", "browse_cmd", "models_cmd", "data_cmd", "tui_cmd")
for _name in COMMAND_MODULES:
    importlib.import_module(f"dwc_tui.cli.{_name}")
app.add_typer(importlib.import_module("dwc_tui.cli.data_cmd").app, name="data", rich_help_panel="Data")


def main() -> None:
    app()


__all__ = ["app", "main"]
