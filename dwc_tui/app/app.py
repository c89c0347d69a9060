"""The `dwc tui` application: screens over a registry poller and the run actions.

The app owns the :class:`~dwc_tui.app.poller.Poller` and drives it from a Textual thread worker, one poll at
a time, re-armed after each poll; screens receive plain snapshots. Actions (queue, cancel, resume, delete) also run on
thread workers through :mod:`dwc_tui.app.actions`. Nothing here runs SQL on the UI thread, and nothing here
touches a training process: runs live in their own sessions, so quitting (or SIGHUP) leaves them running.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from rich.markup import escape
from rich.segment import Segment
from rich.style import Style
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.filter import Monochrome
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from dwc_core.errors import DwcError
from dwc_tui.app.poller import Poller, Snapshot

POLL_INTERVAL_S = 1.0


class _Monochrome(Monochrome):
    """Textual's NO_COLOR filter, tolerating unstyled segments (textual-plot's axes have some; the stock filter
    raised AttributeError on them, so `NO_COLOR=1 dwc tui` crashed as soon as a plot was drawn)."""

    def apply(self, segments: list[Segment], background) -> list[Segment]:
        null = Style.null()
        return super().apply(
            [s if s.style is not None else Segment(s.text, null) for s in segments], background
        )


class DwcApp(App):
    CSS_PATH = "dwc.tcss"
    TITLE = "dwc"
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("question_mark", "help", "Help"),
    ]

    def __init__(
        self,
        project: Path,
        registry_path: Path | None = None,
        experiments_file: Path | None = None,
        poll_interval: float = POLL_INTERVAL_S,
        clock: Callable[[], float] | None = None,
    ):
        super().__init__()
        self._filters = [_Monochrome() if type(f) is Monochrome else f for f in self._filters]
        self.project = Path(project)
        self.registry_path = registry_path or self.project / "runs" / "registry.db"
        self.experiments_file = experiments_file or self.project / "experiments.yaml"
        self.poll_interval = poll_interval
        self.poller = Poller(self.registry_path)
        self.last_snapshot: Snapshot | None = None
        self.poll_error: str | None = None
        self.polls_applied = 0
        self._poll_timer = None
        self._polling = False  # a poll worker is running
        self._poll_again = False  # a poll was asked for meanwhile: start it once this one is applied
        self.messages: list[tuple[str, str]] = []  # (severity, text) of every action's outcome, oldest first
        self.readonly_noted = False  # said once that the registry is read-only here
        self.sub_title = str(self.project)

    # ------------------------------------------------------------------------------------------- lifecycle
    def on_mount(self) -> None:
        from dwc_tui.app.screens.dashboard import DashboardScreen

        self.push_screen(DashboardScreen())
        self.start_poll()

    @property
    def dashboard(self):
        from dwc_tui.app.screens.dashboard import DashboardScreen

        for screen in self.screen_stack:
            if isinstance(screen, DashboardScreen):
                return screen
        return None

    # ---------------------------------------------------------------------------------------------- polling
    def start_poll(self) -> None:
        """Run one poll on a thread worker; asked while one runs, the next starts as soon as that one is applied.

        A running poll is never replaced: its thread cannot be stopped, and the poller takes what it read as seen,
        so a dropped snapshot lost those changes for good (a run cancelled then kept showing "queued")."""
        if self._poll_timer is not None:
            self._poll_timer.stop()
            self._poll_timer = None
        if self._polling:
            self._poll_again = True
            return
        self._polling = True
        self.run_worker(self.poller.poll, thread=True, group="poll", exit_on_error=False)

    def poll_soon(self) -> None:
        """Poll now rather than at the next tick (after an action or a change of focus)."""
        self.start_poll()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if self._exit or not self.is_running:  # shutting down: screens are being taken apart
            return
        if worker.group == "poll":
            if event.state in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
                self._polling = False
            if event.state == WorkerState.SUCCESS:
                self.poll_error = None
                self.apply_snapshot(worker.result)
            elif event.state == WorkerState.ERROR:
                exc = worker.error
                self.poll_error = exc.message if isinstance(exc, DwcError) else f"{type(exc).__name__}: {exc}"
                if self.dashboard is not None:
                    self.dashboard.show_error(self.poll_error)
            if event.state in (WorkerState.SUCCESS, WorkerState.ERROR) and self._poll_again:
                self._poll_again = False
                self.start_poll()
            elif event.state in (WorkerState.SUCCESS, WorkerState.ERROR) and self._poll_timer is None:
                self._poll_timer = self.set_timer(self.poll_interval, self.start_poll)
        elif worker.group == "action":
            if event.state == WorkerState.SUCCESS:
                if isinstance(worker.result, str):
                    self.messages.append(("information", worker.result))
                    self.notify(escape(worker.result), timeout=4)
                self.poll_soon()
            elif event.state == WorkerState.ERROR:
                self.messages.append(("error", error_text(worker.error)))
                self.notify(escape(error_text(worker.error)), severity="error", timeout=8)

    def apply_snapshot(self, snap: Snapshot) -> None:
        self.last_snapshot = snap
        if snap.readonly and not self.readonly_noted:
            self.readonly_noted = True
            note = (
                f"{self.registry_path} is read-only here: the runs are shown as they are; queue, cancel, resume "
                "and delete are refused."
            )
            self.messages.append(("warning", note))
            self.notify(escape(note), severity="warning", timeout=10)
        if self.dashboard is not None:
            self.dashboard.apply(snap)
        self.polls_applied += 1

    # ---------------------------------------------------------------------------------------------- actions
    def act(self, fn: Callable, *args) -> None:
        """Run an action (from :mod:`dwc_tui.app.actions`) off the UI thread; its message is notified."""
        self.run_worker(lambda: fn(*args), thread=True, group="action", exit_on_error=False)

    def action_help(self) -> None:
        from dwc_tui.app.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        dash = self.dashboard
        if dash is None:
            return
        for title, help_, action in dash.PALETTE:
            yield SystemCommand(title, help_, _runner(dash, action))
        from dwc_tui.app.rows import COLUMNS

        for key, label in COLUMNS:
            yield SystemCommand(f"Sort by {label}", f"sort the runs table by {label}", _sorter(dash, key))


def _runner(screen, action: str):
    """A palette command doing a dashboard action: it leaves every screen over the dashboard first (the palette
    can be opened on any screen, and a Run screen may have the help over it), then acts on the selected run."""

    def run() -> None:
        app = screen.app
        while app.screen is not screen and screen in app.screen_stack:
            app.pop_screen()
        getattr(screen, f"action_{action}")()

    return run


def _sorter(screen, key: str):
    return lambda: screen.sort_by(key)


def error_text(exc: BaseException | None) -> str:
    if isinstance(exc, DwcError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"
