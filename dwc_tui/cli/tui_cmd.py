"""`dwc tui`: the live dashboard (Textual is imported only when the command runs)."""

from __future__ import annotations

from typing import Annotated

import typer

from dwc_core.errors import ConfigError
from dwc_tui.cli.app import _require_project, app, handle_errors


@app.command(rich_help_panel="Runs")
@handle_errors
def tui(
    interval: Annotated[float, typer.Option("--interval", help="seconds between registry polls")] = 1.0,
) -> None:
    """The live dashboard: every run, losses and Recall@K, queue / cancel / resume / compare / browse.

    Runs train in their own sessions: quitting (ctrl+q) or losing the connection never stops them."""
    if not 0.1 <= interval <= 60:
        raise ConfigError(f"--interval {interval}: must be between 0.1 and 60 seconds.")
    project = _require_project()
    registry_path = project / "runs" / "registry.db"
    if registry_path.exists():
        from dwc_tui.app.poller import open_read

        open_read(registry_path).close()  # unreadable / newer schema: one clear message, exit 3
    from dwc_tui.app.app import DwcApp

    result = DwcApp(project, registry_path, poll_interval=interval).run()
    raise typer.Exit(result if isinstance(result, int) else 0)
