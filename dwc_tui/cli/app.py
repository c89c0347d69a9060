"""The Typer application shared by every command group: project lookup, registry access, error handling.

The `dwc` command. Exit codes: 0 ok, 1 run failed, 2 usage/config/data error, 3 registry unavailable,
130 interrupted. Human messages go to stderr, data to stdout (``--format table|json|csv|md``).

Nothing here imports torch, torchvision, open_clip or textual at import time: listing commands stay fast.
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

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
    readonly_noted = False


def _project() -> Path:
    from dwc_core.config.experiments import find_project

    return State.project or find_project()


def _require_project() -> Path:
    """The project, or a usage error when neither --project/DWC_PROJECT nor experiments.yaml here or above names one
    (a folder holding runs/registry.db counts as a project too)."""
    project = _project()
    if not ((project / "experiments.yaml").is_file() or (project / "runs" / "registry.db").is_file()):
        raise UsageError(
            f"not a dwc project ({project}): no experiments.yaml here or above. Run dwc in a project folder, pass "
            "--project DIR, or set DWC_PROJECT."
        )
    return project


def _registry(create: bool = True):
    from dwc_core.runs.registry import Registry

    path = _require_project() / "runs" / "registry.db"
    if not create and not path.exists():  # a project where nothing was queued yet: the ids named do not exist
        raise UsageError(
            f"no run has been queued in this project yet ({path} does not exist), so there is no run to name. "
            "`dwc experiments` lists what can run; `dwc run NAME` trains one here, `dwc queue NAME` queues it."
        )
    registry = Registry(path, create=create)
    if registry.readonly and not State.readonly_noted:
        State.readonly_noted = True
        err.print(f"note: {escape(str(registry.path))} is read-only; showing it as it is.", highlight=False)
    return registry


def handle_errors(fn):
    """Turn DwcError (and SQLite failures of the registry) into a one-paragraph message and its exit code, never a
    traceback. Messages are printed literally: user input in them is escaped, never read as Rich markup."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DwcError as exc:
            _fail(exc.message, exc.exit_code)
        except sqlite3.Error as exc:
            from dwc_core.runs.registry import registry_error

            error = registry_error(exc, _project() / "runs" / "registry.db")
            _fail(error.message, error.exit_code)
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def ask(question: str) -> bool:
    """A yes/no question on the terminal (default no). Ctrl-D or an empty answer is no; Ctrl-C is an interruption
    (KeyboardInterrupt: `handle_errors` prints "interrupted" and exits 130)."""
    err.print(escape(f"{question} [y/N]: "), end="", highlight=False)
    try:
        answer = input()
    except EOFError:
        err.print()
        return False
    return answer.strip().lower() in ("y", "yes")


def _fail(message: str, code: int):
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


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
