"""The gradscope terminal UI: one app for live runs and replays (live = a growing record).

Background work runs in named thread workers that never touch widgets: the record poller
(at most 10 readings a second; a newer reading replaces an unprocessed one), the details
loader, and the readers of the script's output. They post messages (see `messages.py`); the
handlers here update the widgets. `make_app` builds the app for the CLI and the tests alike.
"""

from __future__ import annotations

import time
from pathlib import Path

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import Footer, Header, Input, RichLog, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from ..errors import GradscopeError
from .messages import (DetailsLoaded, FindingChosen, RecordUpdated, ScriptExited, ScriptOutput,
                       SubjectSelected)
from .process import ScriptProcess
from .screens.help import HelpScreen
from .screens.quit import QuitScreen
from .state import open_when_ready, read_details, read_state
from .widgets.autograd import AutogradTree
from .widgets.details import DetailsPanel
from .widgets.findings import FindingsTable
from .widgets.modules import ModuleTree
from .widgets.params import ParamTable

POLL_SECONDS = 0.1  # the record is read at most 10 times a second


class ScriptLog(RichLog):
    """The script's stdout and stderr."""


class GradscopeApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "gradscope"
    AUTO_FOCUS = "#modules"
    BINDINGS = [
        Binding("p", "toggle_pause", "pause/resume"),
        Binding("s", "single_step", "step"),
        Binding("b", "toggle_break", "break on error"),
        Binding("left_square_bracket", "previous_step", "prev step"),
        Binding("right_square_bracket", "next_step", "next step"),
        Binding("l", "follow", "latest"),
        Binding("slash", "search", "search"),
        Binding("e", "export", "export graph"),
        Binding("r", "next_rank", "next rank", show=False),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit_app", "quit"),
    ]

    #: the step shown; None follows the latest step as the record grows
    shown_step: reactive[int | None] = reactive(None)
    #: whether the script is paused by the user (or by break on error)
    paused: reactive[bool] = reactive(False)
    break_on_error: reactive[bool] = reactive(False)

    def __init__(self, record: Path, process: ScriptProcess | None = None):
        super().__init__()
        self.record_path = Path(record)
        self.process = process
        self.state = None
        self._filter = ""
        self._subject: tuple[str, str] | None = None
        self._exit_code: int | None = None

    # -- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="body"):
            with Vertical(id="left"):
                yield Input(placeholder="filter by name  ( / )", id="search")
                with TabbedContent(id="views"):
                    with TabPane("Modules", id="tab-modules"):
                        yield ModuleTree(id="modules")
                    with TabPane("Autograd", id="tab-autograd"):
                        yield AutogradTree(id="autograd")
                    with TabPane("Parameters", id="tab-params"):
                        yield ParamTable(id="params")
            with Vertical(id="right"):
                yield DetailsPanel(id="details")
                yield FindingsTable(id="findings")
                if self.process is not None:
                    yield ScriptLog(id="log", highlight=False, markup=False, wrap=True)
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.record_path.name
        self.query_one(DetailsPanel).border_title = "details"
        self.query_one(FindingsTable).border_title = "findings"
        if self.process is not None:
            self.query_one(ScriptLog).border_title = "script output"
            self.read_output("stdout")
            self.read_output("stderr")
        self.poll_record()

    # -- background work ------------------------------------------------------------------
    @work(thread=True, exclusive=True, name="record-poller", group="record", exit_on_error=False)
    def poll_record(self) -> None:
        worker = self._current_worker()
        record, last = None, None
        while not worker.is_cancelled:
            if record is None:
                record = open_when_ready(self.record_path)  # RecordError ends the worker: shown
            if record is not None:
                state = read_state(record, self.shown_step)
                if state.signature != last:
                    last = state.signature
                    self.post_message(RecordUpdated(state))
            time.sleep(POLL_SECONDS)

    @work(thread=True, exclusive=True, name="details-loader", group="details", exit_on_error=False)
    def load_details(self, kind: str, name: str, step: int | None) -> None:
        record = open_when_ready(self.record_path)
        if record is not None:
            with record:
                self.post_message(DetailsLoaded(read_details(record, kind, name, step)))

    @work(thread=True, name="script-output", exit_on_error=False)
    def read_output(self, stream: str) -> None:
        pipe = getattr(self.process.proc, stream)
        for line in pipe:
            self.post_message(ScriptOutput(stream, [line.rstrip("\n")]))
        if stream == "stdout":
            self.post_message(ScriptExited(self.process.proc.wait()))

    def _current_worker(self) -> Worker:
        from textual.worker import get_current_worker

        return get_current_worker()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place worker failures land: shown, not fatal."""
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            text = str(error) if isinstance(error, GradscopeError) else f"{type(error).__name__}: {error}"
            self.notify(f"{event.worker.name}: {text}", severity="error", timeout=15)
            if event.worker.name == "record-poller" and not isinstance(error, GradscopeError):
                self.set_timer(1.0, self.poll_record)  # a passing failure: read again

    # -- messages -------------------------------------------------------------------------
    def on_record_updated(self, message: RecordUpdated) -> None:
        self.state = state = message.state
        self.query_one(ModuleTree).show(state, self._filter)
        self.query_one(AutogradTree).show(state.graph, state.graph_step, self._filter)
        self.query_one(ParamTable).show(state, self._filter)
        self.query_one(FindingsTable).show(state.findings)
        self.paused = state.run.get("paused") is not None
        self._update_status()
        if self._subject is not None:
            self.load_details(*self._subject, state.step)

    def on_details_loaded(self, message: DetailsLoaded) -> None:
        findings = [f for f in (self.state.findings if self.state else []) if f["subject"] == message.details.name]
        self.query_one(DetailsPanel).show(message.details, findings)

    @on(Input.Submitted, "#search")
    def leave_search(self) -> None:
        self.query_one(TabbedContent).active_pane.query_one("ModuleTree, AutogradTree, ParamTable").focus()

    def on_key(self, event) -> None:
        if event.key == "escape" and isinstance(self.focused, Input):
            self.leave_search()
            event.stop()

    def on_subject_selected(self, message: SubjectSelected) -> None:
        self._subject = (message.kind, message.name)
        self.load_details(message.kind, message.name, self.state.step if self.state else None)

    def on_finding_chosen(self, message: FindingChosen) -> None:
        subject = message.subject
        tabs = self.query_one(TabbedContent)
        if self.query_one(ParamTable).select_name(subject):
            tabs.active = "tab-params"
            self.query_one(ParamTable).focus()
        elif self.query_one(ModuleTree).select_name(subject):
            tabs.active = "tab-modules"
            self.query_one(ModuleTree).focus()
        else:
            tabs.active = "tab-autograd"
            self.query_one(Input).value = subject.split(" in ")[0]
            self.query_one(AutogradTree).focus()
        self._subject = ("param" if tabs.active == "tab-params" else "module", subject)

    def on_script_output(self, message: ScriptOutput) -> None:
        log = self.query_one(ScriptLog)
        for line in message.lines:
            log.write(line)

    def on_script_exited(self, message: ScriptExited) -> None:
        self._exit_code = message.code
        self.process.close()
        self.paused = False
        self._update_status()
        severity = "information" if message.code == 0 else "error"
        self.notify(f"script exited with status {message.code}", severity=severity, timeout=8)

    @on(Input.Changed, "#search")
    def filter_views(self, event: Input.Changed) -> None:
        self._filter = event.value.strip()
        if self.state is not None:
            self.query_one(ModuleTree).show(self.state, self._filter)
            self.query_one(AutogradTree).show(self.state.graph, self.state.graph_step, self._filter)
            self.query_one(ParamTable).show(self.state, self._filter)

    def watch_shown_step(self) -> None:
        self.poll_record()

    # -- status ---------------------------------------------------------------------------
    def _update_status(self) -> None:
        state = self.state
        parts = []
        if state is not None and state.steps:
            parts.append(f"step {state.step} of {state.steps[0]}..{state.steps[-1]}")
        elif state is not None:
            parts.append("no step recorded yet")
        parts.append("following" if self.shown_step is None else "browsing history (l: latest)")
        if self.process is not None:
            if self._exit_code is not None:
                parts.append(f"script exited ({self._exit_code})")
            elif self.paused:
                parts.append("PAUSED (p: resume, s: one step)")
            else:
                parts.append("running")
            parts.append(f"break on error: {'on' if self.break_on_error else 'off'}")
        elif state is not None:
            parts.append(f"record {state.run.get('status', '?')}")
        if state is not None and state.run.get("rank") is not None:
            parts.append(f"rank {state.run['rank']} of {state.run.get('world_size')} (r: next rank)")
        if state is not None:
            errors = sum(1 for f in state.findings if f["severity"] == "error")
            warnings = sum(1 for f in state.findings if f["severity"] == "warning")
            parts.append(f"{errors} errors, {warnings} warnings")
        self.query_one("#status", Static).update("  |  ".join(parts))

    # -- actions --------------------------------------------------------------------------
    def _control(self, command: str) -> bool:
        if self.process is None or self._exit_code is not None:
            self.notify("no script is running: pause, step and break work under gradscope run", timeout=4)
            return False
        self.process.send(command)
        return True

    def action_toggle_pause(self) -> None:
        if self._control("resume" if self.paused else "pause"):
            self.paused = not self.paused
            self._update_status()

    def action_single_step(self) -> None:
        if self._control("step" if self.paused else "pause"):
            self.paused = True
            self._update_status()

    def action_toggle_break(self) -> None:
        if self._control("break off" if self.break_on_error else "break on"):
            self.break_on_error = not self.break_on_error
            self._update_status()

    def action_previous_step(self) -> None:
        if self.state and self.state.steps:
            current = self.state.step if self.shown_step is None else self.shown_step
            earlier = [s for s in self.state.steps if s < current]
            self.shown_step = earlier[-1] if earlier else self.state.steps[0]

    def action_next_step(self) -> None:
        if self.state and self.state.steps and self.shown_step is not None:
            later = [s for s in self.state.steps if s > self.shown_step]
            self.shown_step = later[0] if later else None

    def action_follow(self) -> None:
        self.shown_step = None

    def action_search(self) -> None:
        self.query_one(Input).focus()

    def action_export(self) -> None:
        self.export_graph(self.state.step if self.state else None)

    @work(thread=True, exclusive=True, name="exporter", group="export", exit_on_error=False)
    def export_graph(self, step: int | None) -> None:
        import shutil

        from ..errors import GradscopeError
        from ..export import export_record
        from ..record.reader import open_record

        fmt = "svg" if shutil.which("dot") else "dot"
        out = self.record_path.with_name(f"{self.record_path.stem}-step{step}.{fmt}")
        try:
            with open_record(self.record_path) as record:
                export_record(record, out, step=step)
        except GradscopeError as exc:
            self.call_from_thread(self.notify, str(exc), severity="error", timeout=8)
            return
        self.call_from_thread(self.notify, f"wrote {out}", timeout=8)

    def action_next_rank(self) -> None:
        """Under torch.distributed every rank has its own record: show the next rank's."""
        from ..distributed import peer_paths

        world = self.state.run.get("world_size") or 1 if self.state else 1
        if world < 2:
            self.notify("this run has a single rank", timeout=4)
            return
        peers = peer_paths(self.record_path, world)
        current = peers.index(self.record_path) if self.record_path in peers else -1
        self.record_path = peers[(current + 1) % len(peers)]
        self.sub_title = self.record_path.name
        self.state, self._subject = None, None
        self.poll_record()

    def action_help(self) -> None:
        keys = [(b.key.replace("left_square_bracket", "[").replace("right_square_bracket", "]")
                 .replace("question_mark", "?").replace("slash", "/"), b.description) for b in self.BINDINGS]
        self.push_screen(HelpScreen(keys))

    def action_quit_app(self) -> None:
        if self.process is not None and self.process.running:
            def answered(stop: bool | None) -> None:
                if stop:
                    self.process.stop()
                    self.exit(self._exit_code)
            self.push_screen(QuitScreen(), answered)
        else:
            self.exit(self._exit_code)


def make_app(record: Path, process: ScriptProcess | None = None) -> GradscopeApp:
    """The app, as the CLI and the tests build it."""
    return GradscopeApp(record, process)
