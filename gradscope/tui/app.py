"""The gradscope terminal UI: one app for live runs and replays (live = a growing record).

Background work runs in named thread workers that never touch widgets: the record poller
(at most 10 looks a second; a full reading only when the record changed; a newer reading
replaces an unprocessed one), the details loader, and the readers of the script's output.
They post messages (see `messages.py`) until they are cancelled; the handlers here update the
widgets. `make_app` builds the app for the CLI and the tests alike.

Everything shown that comes from the record or the script is inert text (see `text.py`).
"""

from __future__ import annotations

import collections
import contextlib
import sys
import threading
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.reactive import reactive
from textual.widgets import DataTable, Footer, Input, RichLog, Static, TabbedContent, TabPane, Tree
from textual.worker import Worker, WorkerState, get_current_worker

from ..errors import GradscopeError
from .messages import (DetailsLoaded, FindingChosen, RecordUpdated, ScriptExited, ScriptOutput,
                       SubjectSelected)
from .process import ScriptProcess
from .screens.help import HelpScreen
from .screens.quit import QuitScreen
from .state import Histories, Reader, gradient_flow, open_when_ready, read_details, update_ratios
from .text import clean, literal
from .widgets.autograd import AutogradTree
from .widgets.charts import GradFlowChart, SpeedChart, TrainingChart, UpdatesChart
from .widgets.details import DetailsPanel
from .widgets.findings import FindingsTable
from .widgets.modules import ModuleTree, worst_severity
from .widgets.params import ParamTable

POLL_SECONDS = 0.1  # the record is looked at at most 10 times a second
#: The tabs of the two tabbed panes: (tab title, pane id, widget class, widget id).
VIEW_PANES = (("Modules", "tab-modules", ModuleTree, "modules"),
              ("Autograd", "tab-autograd", AutogradTree, "autograd"),
              ("Params", "tab-params", ParamTable, "params"))
CHART_PANES = (("loss", "chart-loss", TrainingChart, "loss-chart"),
               ("speed", "chart-speed", SpeedChart, "speed-chart"),
               ("grad flow", "chart-flow", GradFlowChart, "flow-chart"),
               ("updates", "chart-updates", UpdatesChart, "updates-chart"))
VIEWS = tuple(pane for _, pane, _, _ in VIEW_PANES)
CHARTS = tuple(pane for _, pane, _, _ in CHART_PANES)
LIVE_ONLY = {"toggle_pause", "single_step", "toggle_break"}


class ScriptLog(RichLog):
    """The script's stdout and stderr (or a crashed record's error), wrapped to the pane."""


class GradscopeApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "gradscope"
    AUTO_FOCUS = "#modules"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("question_mark", "help", "help", key_display="?"),
        Binding("q", "quit_app", "quit"),
        Binding("ctrl+q", "quit_app", "quit", show=False, priority=True),
        Binding("p", "toggle_pause", "pause"),
        Binding("s", "single_step", "step"),
        Binding("b", "toggle_break", "break"),
        Binding("left_square_bracket", "previous_step", "prev", key_display="["),
        Binding("right_square_bracket", "next_step", "next", key_display="]"),
        Binding("l", "follow", "latest"),
        Binding("slash", "search", "filter", key_display="/"),
        Binding("z", "maximize", "zoom"),
        Binding("c", "next_chart", "chart"),
        Binding("1", "view(0)", "modules", show=False),
        Binding("2", "view(1)", "autograd", show=False),
        Binding("3", "view(2)", "parameters", show=False),
        Binding("j", "move('down')", "down", show=False),
        Binding("k", "move('up')", "up", show=False),
        Binding("g", "move('first')", "first", show=False),
        Binding("G", "move('last')", "last", show=False),
        Binding("L", "log_scale", "log scale", show=False),
        Binding("o", "sort", "sort", show=False),
        Binding("f", "focus_findings", "findings", show=False),
        Binding("e", "export", "export graph", show=False),
        Binding("r", "next_rank", "next rank", show=False),
    ]
    #: keys not in BINDINGS (the widgets' own), for the help screen
    OTHER_KEYS = [
        ("tab shift+tab", "move between panes"),
        ("up down enter", "move; expand a node, show a finding whole and jump to its subject"),
        ("escape", "leave the filter box (empty: clear it); leave a zoomed pane"),
    ]

    #: the step shown; None follows the latest step as the record grows
    shown_step: reactive[int | None] = reactive(None)
    #: whether the script is paused by the user (or by a break)
    paused: reactive[bool] = reactive(False)

    def __init__(self, record: Path, process: ScriptProcess | None = None, break_on: str | None = None):
        super().__init__()
        self.record_path = Path(record)
        self.process = process
        self.break_on = break_on  # None, "error" or "warning": pause at the step a new one appears
        self.state = None
        self._filter = ""
        self._subject: tuple[str, str] | None = None
        self._finding: tuple[tuple[str, str], dict] | None = None  # (its subject, the finding chosen)
        self._details_asked = 0  # the latest details request: a worker's late answer to an older one is dropped
        self._details_shown = 0  # the request whose answer the details pane shows
        self._histories = Histories()  # the shown subject's per-step histories, read so far
        self._jumped_at = 0.0  # when the last finding was chosen (Textual's clock): older cursor moves are stale
        self._exit_code: int | None = None
        self._poll_wanted = threading.Event()  # set to make the poller look now
        self._error_shown = False
        #: the last lines of the script's stderr, printed again after the UI closes
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=400)

    # -- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with Horizontal(id="body"):
            with Vertical(id="left"):
                yield Input(placeholder="filter by name (escape: done)", id="search")
                yield from _tabs("views", VIEW_PANES)
            with Vertical(id="right"):
                yield from _tabs("charts", CHART_PANES)
                yield DetailsPanel(id="details")
                yield FindingsTable(id="findings", classes="empty")
                if self.process is not None:
                    yield ScriptLog(id="log", highlight=False, markup=False, wrap=True, min_width=1)
        yield Static(id="status", markup=False)
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.sub_title = self.record_path.name
        self.query_one(DetailsPanel).border_title = "details"
        self.query_one(FindingsTable).border_title = "findings"
        self.query_one("#search").display = False
        if self.process is not None:
            self.query_one(ScriptLog).border_title = "script output"
            self.read_output("stdout")
            self.read_output("stderr")
        self._update_status()
        self.poll_record()

    # -- background work ------------------------------------------------------------------
    @work(thread=True, exclusive=True, name="record-poller", group="record", exit_on_error=False)
    def poll_record(self) -> None:
        worker = get_current_worker()
        reader, last = None, None
        try:
            while not worker.is_cancelled:
                if reader is None:
                    record = open_when_ready(self.record_path)  # RecordError ends the worker: shown
                    reader = None if record is None else Reader(record)
                if reader is not None and reader.version(self.shown_step) != last:
                    state = reader.read(self.shown_step)
                    last = state.version
                    if worker.is_cancelled:
                        break
                    self.post_message(RecordUpdated(state))
                self._poll_wanted.wait(POLL_SECONDS)
                self._poll_wanted.clear()
        finally:
            if reader is not None:
                reader.record.close()

    @property
    def details_current(self) -> bool:
        """Whether the details pane shows the answer to the latest request."""
        return self._details_shown == self._details_asked

    def ask_details(self, kind: str, name: str, step: int | None, finding: dict | None = None) -> None:
        self._details_asked += 1
        self.load_details(self._details_asked, kind, name, step, finding)

    @work(thread=True, exclusive=True, name="details-loader", group="details", exit_on_error=False)
    def load_details(self, request: int, kind: str, name: str, step: int | None, finding: dict | None) -> None:
        worker = get_current_worker()
        record = open_when_ready(self.record_path)
        if record is not None:
            with record:
                details = read_details(record, kind, name, step, self._histories)
            details.finding = finding
            if not worker.is_cancelled:
                self.post_message(DetailsLoaded(details, request))

    @work(thread=True, name="script-output", exit_on_error=False)
    def read_output(self, stream: str) -> None:
        pipe = getattr(self.process.proc, stream)
        for line in pipe:
            line = line.rstrip("\n")
            if stream == "stderr":
                self.stderr_tail.append(line)
            self.post_message(ScriptOutput(stream, [line]))
        if stream == "stdout":
            self.post_message(ScriptExited(self.process.proc.wait()))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place worker failures land: shown, not fatal."""
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            text = str(error) if isinstance(error, GradscopeError) else f"{type(error).__name__}: {error}"
            self.notify(clean(f"{event.worker.name}: {text}"), severity="error", timeout=15, markup=False)
            if event.worker.name == "record-poller" and not isinstance(error, GradscopeError):
                self.set_timer(1.0, self.poll_record)  # a passing failure: read again

    # -- messages -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _unless_closing(self):
        """A worker's answer posted just before the app began to close can arrive once its
        screen is gone: nothing to show it on then."""
        try:
            yield
        except NoMatches:
            if self.is_running and not self._exit:
                raise

    def on_record_updated(self, message: RecordUpdated) -> None:
        with self._unless_closing():
            self._show_record(message.state)

    def _show_record(self, state) -> None:
        previous = self.state
        self.state = state
        severity = worst_severity(state.findings)
        self._show_views(severity)
        self.query_one(FindingsTable).show(state.findings)
        self.query_one(TrainingChart).show(state.series, state.findings, state.step)
        self.query_one(SpeedChart).show(state.series)
        self.query_one(GradFlowChart).show(gradient_flow(state), severity, state.step)
        self.query_one(UpdatesChart).show(update_ratios(state), severity, state.step)
        was_paused = self.paused
        self.paused = state.run.get("paused") is not None
        if self.paused and not was_paused and self.shown_step is not None:
            self.shown_step = None  # a break shows the step that triggered it
        self._show_record_error(state.run)
        self._update_status()
        if self._subject is None and state.modules:  # start with the model itself
            self._subject = ("module", state.modules[0]["root"])
            previous = None
        if self._subject is not None and (previous is None or previous.step != state.step
                                          or previous.version != state.version):
            self.ask_details(*self._subject, state.step, self._chosen_for())

    def _show_record_error(self, run: dict) -> None:
        """A crashed record keeps the script's error: show it where the output would be."""
        if self.process is not None or self._error_shown or not run.get("error"):
            return
        self._error_shown = True
        log = ScriptLog(id="log", highlight=False, markup=False, wrap=True, min_width=1)
        self.query_one("#right").mount(log)
        log.border_title = f"the script {run.get('status', 'failed')}"
        for line in str(run["error"]).splitlines():
            log.write(literal(line))

    def on_details_loaded(self, message: DetailsLoaded) -> None:
        if message.request != self._details_asked:
            return  # answered after a newer request was made (a cancelled worker can still post)
        self._details_shown = message.request
        findings = [f for f in (self.state.findings if self.state else []) if f["subject"] == message.details.name]
        with self._unless_closing():
            self.query_one(DetailsPanel).show(message.details, findings)

    def on_subject_selected(self, message: SubjectSelected) -> None:
        if message.source is not None and message.source is not (self.focused if self.screen_stack else None):
            return  # a view rebuilt in the background, not the user's cursor
        if message.moved < self._jumped_at:
            return  # a cursor moved before the last jump to a finding, announced late
        self._subject = (message.kind, message.name)
        self.ask_details(message.kind, message.name, self.state.step if self.state else None, self._chosen_for())

    def _chosen_for(self) -> dict | None:
        """The finding last chosen, while its subject is the one shown."""
        if self._finding is None or self._finding[0] != self._subject:
            return None
        return self._finding[1]

    def on_finding_chosen(self, message: FindingChosen) -> None:
        """Show the finding whole, and put the cursor on its subject in the view that has it:
        a parameter, a module (``input``: the model that got it), an op, the loss; an
        optimizer or anything else stays in the details pane."""
        finding = message.finding
        subject = finding["subject"]
        self._jumped_at = message.time
        if self._filter:
            self._set_filter("")
        tabs = self.query_one("#views", TabbedContent)
        kind = "module"
        modules = self.state.modules if self.state else []
        target = subject
        if subject == "input" and modules:
            target = modules[0]["root"]
        if self.query_one(ParamTable).select_name(target):
            tabs.active, kind = "tab-params", "param"
            self.query_one(ParamTable).focus()
        elif self.query_one(ModuleTree).select_name(target):
            tabs.active = "tab-modules"
            self.query_one(ModuleTree).focus()
        elif self.query_one(AutogradTree).select_subject(subject):
            tabs.active = "tab-autograd"
            tree = self.query_one(AutogradTree)
            tree.focus()
            kind, target = tree.subject_of(subject) or ("loss" if subject == "loss" else "op", subject)
        else:
            kind = "optimizer" if subject.startswith("optimizer") else "other"
        self._subject = (kind, target)
        self._finding = (self._subject, finding)
        self.ask_details(kind, target, self.state.step if self.state else None, finding)

    def on_script_output(self, message: ScriptOutput) -> None:
        with self._unless_closing():  # closing stops the script, which may still print
            log = self.query_one(ScriptLog)
            for line in message.lines:
                log.write(literal(line))

    def on_script_exited(self, message: ScriptExited) -> None:
        self._exit_code = message.code
        self.process.close()
        self.paused = False
        with self._unless_closing():
            self._update_status()
            self.refresh_bindings()
            severity = "information" if message.code == 0 else "error"
            self.notify(f"script exited with status {message.code}", severity=severity, timeout=8, markup=False)

    # -- filter ---------------------------------------------------------------------------
    @on(Input.Changed, "#search")
    def filter_views(self, event: Input.Changed) -> None:
        self._apply_filter(event.value.strip())

    def _apply_filter(self, query: str) -> None:
        self._filter = query
        if self.state is not None:
            self._show_views(worst_severity(self.state.findings))

    def _show_views(self, severity: dict[str, str]) -> None:
        """The three views of the current state, filtered."""
        state, query = self.state, self._filter
        self.query_one(ModuleTree).show(state, query)
        self.query_one(AutogradTree).show(state.graph, state.graph_step, query, severity)
        self.query_one(ParamTable).show(state, query)

    def _set_filter(self, query: str) -> None:
        search = self.query_one("#search", Input)
        with search.prevent(Input.Changed):
            search.value = query
        search.display = bool(query)
        self._apply_filter(query)

    @on(Input.Submitted, "#search")
    def leave_search(self) -> None:
        search = self.query_one("#search", Input)
        search.display = bool(search.value.strip())
        self.query_one("#views", TabbedContent).active_pane.query_one("ModuleTree, AutogradTree, ParamTable").focus()

    def on_key(self, event) -> None:
        if event.key == "escape" and isinstance(self.focused, Input):
            self.leave_search()
            event.stop()

    def watch_shown_step(self) -> None:
        self._poll_wanted.set()
        self.refresh_bindings()

    # -- status ---------------------------------------------------------------------------
    def _update_status(self) -> None:
        state = self.state
        text = Text()
        text.append_text(literal(self.record_path.name, "bold"))
        if state is not None:
            errors = sum(1 for f in state.findings if f["severity"] == "error")
            warnings = sum(1 for f in state.findings if f["severity"] == "warning")
            text.append("  ")
            text.append(f"{errors} errors", style="bold white on red" if errors else "")
            text.append(" ")
            text.append(f"{warnings} warnings", style="bold black on yellow" if warnings else "")
        parts = []
        if state is not None and state.steps:
            parts.append(f"step {state.step} of {state.steps[0]}..{state.steps[-1]}")
        elif state is not None:
            parts.append("no step recorded yet")
        parts.append("following" if self.shown_step is None else "history (l: latest)")
        if self.process is not None:
            if self._exit_code is not None:
                parts.append(f"script exited ({self._exit_code})")
            elif self.paused:
                parts.append("PAUSED (p: resume, s: one step)")
            else:
                parts.append("running")
            parts.append(f"break on {self.break_on}" if self.break_on else "break off")
        elif state is not None:
            parts.append(str(state.run.get("status", "?")))
        if state is not None and state.run.get("dropped_steps"):
            reasons = state.run.get("dropped") or {}
            parts.append(f"{state.run['dropped_steps']} steps dropped"
                         + (f" ({'; '.join(f'{n}: {why}' for why, n in reasons.items())})" if reasons else ""))
        if state is not None and state.run.get("rank") is not None:
            parts.append(f"rank {state.run['rank']} of {state.run.get('world_size')} (r: next)")
        text.append_text(literal("  " + " | ".join(parts)))
        self.query_one("#status", Static).update(text)

    # -- keys that apply --------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Hide keys that do nothing here: control keys without a running script, history keys
        while following, the rank key on a single rank."""
        if action in LIVE_ONLY:
            return self.process is not None and self._exit_code is None
        if action in ("next_step", "follow"):
            return self.shown_step is not None
        if action == "next_rank":
            return bool(self.state and (self.state.run.get("world_size") or 1) > 1)
        return True

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
        """Cycle: off -> error -> warning -> off."""
        following = {None: "error", "error": "warning", "warning": None}[self.break_on]
        if self._control(f"break {following or 'off'}"):
            self.break_on = following
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
        search = self.query_one("#search", Input)
        search.display = True
        search.focus()

    def action_view(self, index: int) -> None:
        tabs = self.query_one("#views", TabbedContent)
        tabs.active = VIEWS[index]
        tabs.active_pane.query_one("ModuleTree, AutogradTree, ParamTable").focus()

    def action_next_chart(self) -> None:
        charts = self.query_one("#charts", TabbedContent)
        charts.active = CHARTS[(CHARTS.index(charts.active) + 1) % len(CHARTS)]

    def action_log_scale(self) -> None:
        chart = self.query_one(TrainingChart)
        chart.log_scale = not chart.log_scale
        chart.refresh()

    def action_sort(self) -> None:
        by = self.query_one(ParamTable).cycle_sort()
        if self.state is not None and by == "parameter order":
            self.query_one(ParamTable).show(self.state, self._filter)
        self.notify(f"parameters sorted by {by}", timeout=3)

    def action_focus_findings(self) -> None:
        self.query_one(FindingsTable).focus()

    def action_move(self, where: str) -> None:
        """j/k/g/G in the focused tree, table or pane."""
        widget = self.focused
        if isinstance(widget, Input) or widget is None:
            return
        if where in ("down", "up"):
            getattr(widget, f"action_cursor_{where}", getattr(widget, f"action_scroll_{where}", lambda: None))()
        elif isinstance(widget, Tree):
            widget.cursor_line = 0 if where == "first" else widget.last_line
            widget.scroll_to_line(widget.cursor_line)
        elif isinstance(widget, DataTable):
            widget.move_cursor(row=0 if where == "first" else max(0, widget.row_count - 1))
        else:
            (widget.scroll_home if where == "first" else widget.scroll_end)(animate=False)

    def action_maximize(self) -> None:
        """Zoom the focused pane to the whole screen, and back."""
        if self.screen.maximized is not None:
            self.screen.minimize()
        elif self.focused is not None:
            self.screen.maximize(self.focused, container=False)

    def action_export(self) -> None:
        self.export_graph(self.state.step if self.state else None)

    @work(thread=True, exclusive=True, name="exporter", group="export", exit_on_error=False)
    def export_graph(self, step: int | None) -> None:
        import shutil

        from ..export import export_record
        from ..record.reader import open_record

        fmt = "svg" if shutil.which("dot") else "dot"
        out = self.record_path.with_name(f"{self.record_path.stem}-step{step}.{fmt}")
        try:
            with open_record(self.record_path) as record:
                export_record(record, out, step=step)
        except GradscopeError as exc:
            self.call_from_thread(self.notify, clean(str(exc)), severity="error", timeout=8, markup=False)
            return
        self.call_from_thread(self.notify, clean(f"wrote {out}"), timeout=8, markup=False)

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
        self.state, self._subject, self._finding = None, None, None
        self.poll_record()

    def help_keys(self) -> list[tuple[str, str]]:
        """Every key once: bindings sharing an action are one row."""
        rows: dict[str, list[str]] = {}
        descriptions: dict[str, str] = {}
        for b in self.BINDINGS:
            action = b.action.split("(")[0]
            key = b.key_display or b.key
            rows.setdefault(action, []).append(key)
            descriptions.setdefault(action, b.description)
        descriptions.update(view="views: modules, autograd, parameters", move="down, up, first, last",
                            toggle_break="break: off / on error / on warning", maximize="zoom the focused pane",
                            next_chart="next chart: loss, speed, grad flow, updates",
                            log_scale="log scale for the loss", sort="sort parameters by the next column",
                            previous_step="previous step (history)", next_step="next step (history)",
                            follow="latest step (follow the run)", single_step="run one step, then pause",
                            toggle_pause="pause / resume the script", search="filter the views by name",
                            quit_app="quit (asks while the script runs)", focus_findings="findings")
        return [(" ".join(keys), descriptions[action]) for action, keys in rows.items()] + self.OTHER_KEYS

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.help_keys()))

    def action_quit_app(self) -> None:
        if isinstance(self.screen, QuitScreen):
            return
        if self.process is not None and self.process.running:
            def answered(stop: bool | None) -> None:
                if stop:
                    self.process.stop()
                    self.exit(self._exit_code)
            self.push_screen(QuitScreen(), answered)
        else:
            self.exit(self._exit_code)


def _tabs(tabs_id: str, panes) -> ComposeResult:
    with TabbedContent(id=tabs_id):
        for title, pane, widget, widget_id in panes:
            with TabPane(title, id=pane):
                yield widget(id=widget_id)


def run_with_script(argv: list[str], record: Path, break_on: str | None) -> int:
    """Run ``gradscope <argv>`` headless in a child process recording into `record`, under the
    UI; returns the script's exit status (the UI's own, if it set one). The script's traceback
    is printed again after the screen is gone."""
    process = ScriptProcess(argv, record)
    app = make_app(record, process, break_on)
    code = app.run()
    if process.running:
        process.stop()
    if process.proc.returncode:
        tail = list(app.stderr_tail)
        starts = [i for i, line in enumerate(tail) if line.startswith("Traceback")]
        print("\n".join(tail[starts[-1]:] if starts else tail[-20:]), file=sys.stderr)
    return process.proc.returncode if code is None else code


def make_app(record: Path, process: ScriptProcess | None = None, break_on: str | None = None) -> GradscopeApp:
    """The app, as the CLI and the tests build it."""
    return GradscopeApp(record, process, break_on)
