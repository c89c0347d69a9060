"""The Typer application shared by every command group: project lookup, registry access, error handling.

The `dwc` command. Exit codes: 0 ok, 1 run failed, 2 usage/config/data error, 3 registry unavailable,
130 interrupted. Human messages go to stderr, data to stdout (``--format table|json|csv|md``).

Nothing here imports torch, torchvision, open_clip or textual at import time: listing commands stay fast.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from dwc_core.errors import DwcError, UsageError
from dwc_tui.cli.output import FORMATS, err

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="dwc — train and compare composed image retrieval models (DWC and baselines) from the terminal.",
    pretty_exceptions_enable=False,
)


class State:
    project: Path | None = None


def _project() -> Path:
    from dwc_core.config.experiments import find_project

    return State.project or find_project()


def _registry(create: bool = True):
    from dwc_core.runs.registry import Registry

    return Registry(_project() / "runs" / "registry.db", create=create)


def handle_errors(fn):
    """Turn DwcError into a one-paragraph message and its exit code (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DwcError as exc:
            err.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _check_format(fmt: str, allowed=FORMATS) -> str:
    if fmt not in allowed:
        raise UsageError(f"--format {fmt!r} is not supported. Allowed: {' | '.join(allowed)}.")
    return fmt


FormatOpt = Annotated[str, typer.Option("--format", "-f", help="table | json | csv | md")]


@app.callback()
def main_callback(
    project: Annotated[
        Path | None, typer.Option("--project", "-C", help="project folder (holds experiments.yaml and runs/)")
    ] = None,
) -> None:
    if project is not None:
        State.project = project.expanduser().resolve()
