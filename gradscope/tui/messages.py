"""Every message the UI's parts send each other, in one place."""

from __future__ import annotations

from textual.message import Message

from .state import Details, ViewState


class RecordUpdated(Message):
    """The poller read a new state of the record. A newer one replaces an unprocessed one, so
    a fast run never floods the UI."""

    def __init__(self, state: ViewState) -> None:
        super().__init__()
        self.state = state

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RecordUpdated)


class DetailsLoaded(Message):
    """Details (statistics, series, histogram) of the selected subject, read off the UI thread."""

    def __init__(self, details: Details, request: int) -> None:
        super().__init__()
        self.details = details
        self.request = request

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, DetailsLoaded)


class SubjectSelected(Message):
    """A module, parameter or autograd node was selected in one of the three views."""

    def __init__(self, kind: str, name: str, source=None, moved: float | None = None) -> None:
        super().__init__()
        self.kind = kind  # module, param, loss or optimizer
        self.name = name
        self.source = source  # the widget whose cursor moved (only the focused one counts)
        self.moved = self.time if moved is None else moved  # when the cursor moved (Textual's clock)


class FindingChosen(Message):
    """A finding was chosen: show it whole and jump to its subject."""

    def __init__(self, finding: dict) -> None:
        super().__init__()
        self.finding = finding


class ScriptOutput(Message):
    """Lines the script wrote (stream is stdout or stderr)."""

    def __init__(self, stream: str, lines: list[str]) -> None:
        super().__init__()
        self.stream = stream
        self.lines = lines


class ScriptExited(Message):
    """The script's process ended with `code` (negative: killed by a signal)."""

    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code
