"""Queue an experiment: pick it, read its description and run count, edit --set overrides (checked as you type,
with the CLI's messages), queue it; offer a detached worker when none is alive."""

from __future__ import annotations

import shlex

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import Worker, WorkerState

from dwc_core.errors import DwcError
from dwc_tui.app import actions
from dwc_tui.app.widgets.keybar import KeyBar


def split_overrides(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise DwcError(f"--set overrides: {exc} (write key=value pairs separated by spaces).") from None


class QueueScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("ctrl+s", "submit", "Queue"),
        # priority: the GPU box has the focus when it is offered, and a text box binds ctrl+w itself (delete word)
        Binding("ctrl+w", "start_worker", "Start worker", priority=True),
    ]
    KEYS = (("esc", "back", 0), ("enter", "next / queue", 1), ("^s", "queue", 2), ("^w", "start a worker", 1))

    def __init__(self) -> None:
        super().__init__()
        self.experiments: list[tuple[str, str]] = []
        self.valid = False
        self.queued: list[int] = []

    def compose(self) -> ComposeResult:
        yield Static("Queue an experiment", id="queue-title")
        with Horizontal(id="queue-body"):
            yield OptionList(id="queue-list")
            with Vertical(id="queue-form"):
                yield Static("", id="queue-desc")
                yield Input(placeholder="--set overrides: key=value … (enter queues)", id="queue-overrides")
                yield Static("", id="queue-preview")
                yield Static("", id="queue-worker")
                yield Input(placeholder="GPUs for a new worker, e.g. 0,1 (ctrl+w starts it)", id="queue-gpus")
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one("#queue-gpus", Input).display = False
        self.run_worker(
            lambda: actions.experiment_names(self.app.experiments_file), thread=True, group="q-names",
            exit_on_error=False,
        )  # fmt: skip
        self.query_one("#queue-list", OptionList).focus()

    # ----------------------------------------------------------------------------------------- selection
    @property
    def selected(self) -> str | None:
        ol = self.query_one("#queue-list", OptionList)
        if ol.highlighted is None or not self.experiments:
            return None
        return self.experiments[ol.highlighted][0]

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        name, desc = self.experiments[event.option_index]
        self.query_one("#queue-desc", Static).update(
            Text.assemble((name, "bold"), "\n", (desc or "(no description)", "italic"))
        )
        self.validate()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.query_one("#queue-overrides", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "queue-overrides":
            self.validate()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "queue-overrides":
            self.action_submit()
        elif event.input.id == "queue-gpus":
            self.action_start_worker()

    def validate(self) -> None:
        name = self.selected
        if name is None:
            return
        text = self.query_one("#queue-overrides", Input).value
        path = self.app.experiments_file

        def check():
            return actions.preview(path, name, split_overrides(text))

        self.valid = False
        self.run_worker(check, thread=True, group="q-validate", exclusive=True, exit_on_error=False)

    # -------------------------------------------------------------------------------------------- actions
    def action_submit(self) -> None:
        name = self.selected
        if name is None:
            return
        if not self.valid:
            self.app.notify(
                "fix the overrides first (the message under them says what is wrong)", severity="error"
            )
            return
        app = self.app
        overrides = split_overrides(self.query_one("#queue-overrides", Input).value)

        def queue_and_check():
            ids = actions.queue(app.project, app.experiments_file, name, overrides)
            return ids, actions.live_workers(app.project)

        self.run_worker(queue_and_check, thread=True, group="q-queue", exit_on_error=False)

    def action_start_worker(self) -> None:
        box = self.query_one("#queue-gpus", Input)
        gpus = [g.strip() for g in box.value.split(",") if g.strip()]
        project = self.app.project
        self.query_one("#queue-worker", Static).update(Text("starting a worker…", style="dim"))
        self.run_worker(
            lambda: actions.start_worker(project, gpus), thread=True, group="q-worker", exit_on_error=False
        )

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if not self.is_attached:  # the app is shutting down: this screen's widgets may be gone
            return
        group, state, worker = event.worker.group, event.state, event.worker
        if state == WorkerState.ERROR:
            msg = getattr(worker.error, "message", str(worker.error))
            if group == "q-validate":
                self.query_one("#queue-preview", Static).update(Text(msg, style="bold red"))
            else:
                self.query_one("#queue-preview", Static).update(Text(msg, style="bold red"))
                self.app.notify(Text(msg).plain, severity="error")
            return
        if state != WorkerState.SUCCESS:
            return
        if group == "q-worker":
            self.app.notify(Text(str(worker.result)).plain)
            self.query_one("#queue-worker", Static).update(
                Text(f"{worker.result}: the runs start when a slot is free.", style="green")
            )
            self.query_one("#queue-gpus", Input).display = False
            self.app.poll_soon()
        elif group == "q-names":
            self.experiments = worker.result
            ol = self.query_one("#queue-list", OptionList)
            ol.clear_options()
            ol.add_options([Option(n, id=n) for n, _ in self.experiments])
            if self.experiments:
                ol.highlighted = 0
        elif group == "q-validate":
            self.valid = True
            specs = worker.result
            n = len(specs)
            seeds = sorted({s["seed"] for s in specs})
            lines = [
                Text(
                    f"{n} run{'s' if n != 1 else ''} (grid × seeds); seeds {', '.join(map(str, seeds))}",
                    style="green",
                )
            ]
            for s in specs[:6]:
                if s["variant"]:
                    lines.append(
                        Text("  " + " ".join(f"{k}={v}" for k, v in s["variant"].items()), style="dim")
                    )
            if n > 6:
                lines.append(Text(f"  … {n - 6} more", style="dim"))
            self.query_one("#queue-preview", Static).update(Text("\n").join(lines))
        elif group == "q-queue":
            ids, workers = worker.result
            self.queued = ids
            self.app.notify(f"queued run{'s' if len(ids) != 1 else ''} {', '.join(map(str, ids))}")
            self.app.poll_soon()
            hint = self.query_one("#queue-worker", Static)
            if workers == 0:
                hint.update(
                    Text(
                        "No worker is alive: the runs wait. Start a detached one (ctrl+w) on these GPUs "
                        "(empty: on the CPU):",
                        style="yellow",
                    )
                )
                box = self.query_one("#queue-gpus", Input)
                box.display = True
                snap = self.app.last_snapshot
                box.value = ",".join(snap.gpus) if snap and snap.gpus else ""
                box.focus()
            else:
                hint.update(
                    ""
                    if workers < 0
                    else Text(f"{workers} worker(s) alive: the runs start when a GPU is free.")
                )
