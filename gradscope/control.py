"""Debugger control of a running script: pause, single-step, break on a new finding.

The terminal UI runs the script in a child process and writes one command per line into a
pipe whose read end the child gets (``--control-fd``). The child reads it only at step
boundaries, on the training thread: without a command waiting this costs one non-blocking
read per step. Commands: ``pause``, ``resume``, ``step`` (run one step, then pause again),
``break error`` / ``break warning`` / ``break off`` (``break on`` means ``break error``).

Breaking pauses at the boundary right after the step whose finding triggered it, before the
next step's forward: while a break is set, each boundary waits (bounded) for the recorder to
judge the step just finished. Every new error (or warning) breaks, not only the first.
When the pipe closes (the UI went away), training resumes and runs to its end.
"""

from __future__ import annotations

import os
import select

BREAK_LEVELS = {"error": ("error",), "warning": ("error", "warning")}
JUDGE_SECONDS = 10.0  # longest wait for the recorder's verdict on a step while a break is set


class Control:
    """The child's end of the control pipe."""

    def __init__(self, fd: int, break_on: str | None = None):
        self._fd = fd
        os.set_blocking(fd, False)
        self._buffer = b""
        self.paused = False
        self.break_on = break_on  # None, "error" or "warning"
        self.closed = False
        self._stepping = False
        self._seen: dict[str, int] = {}  # new findings by severity at the last boundary

    def _read(self, wait: bool) -> None:
        if self.closed:
            return
        if wait:
            select.select([self._fd], [], [])
        try:
            chunk = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        if not chunk:
            self.closed = True
            self.paused = False
            return
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._apply(line.decode(errors="replace").strip())

    def _apply(self, command: str) -> None:
        if command == "pause":
            self.paused = True
        elif command == "resume":
            self.paused, self._stepping = False, False
        elif command == "step":
            self._stepping = True
        elif command.startswith("break "):
            level = command.split(None, 1)[1]
            self.break_on = {"on": "error", "off": None}.get(level, level if level in BREAK_LEVELS else None)

    def at_boundary(self, writer, step: int, on_pause=None) -> None:
        """Called after each step (`step` just finished): apply commands, and wait here while
        paused. `writer` is the session's `RecordWriter` (its findings counts and verdicts)."""
        self._read(wait=False)
        if self.break_on is not None:
            writer.wait_judged(step, JUDGE_SECONDS)
        counts = dict(writer.new_findings)
        if self.break_on is not None and any(
                counts.get(s, 0) > self._seen.get(s, 0) for s in BREAK_LEVELS[self.break_on]):
            self.paused = True
        self._seen = counts
        if not self.paused:
            return
        if on_pause is not None:
            on_pause(True)
        while self.paused and not self.closed and not self._stepping:
            self._read(wait=True)
        self._stepping = False
        if on_pause is not None:
            on_pause(self.paused)
