"""Debugger control of a running script: pause, single-step, break on the first error.

The terminal UI runs the script in a child process and writes one command per line into a
pipe whose read end the child gets (``--control-fd``). The child reads it only at step
boundaries, on the training thread: without a command waiting this costs one non-blocking
read per step. Commands: ``pause``, ``resume``, ``step`` (run one step, then pause again),
``break on`` / ``break off`` (pause at the first step boundary after an error finding).
When the pipe closes (the UI went away), training resumes and runs to its end.
"""

from __future__ import annotations

import os
import select


class Control:
    """The child's end of the control pipe."""

    def __init__(self, fd: int):
        self._fd = fd
        os.set_blocking(fd, False)
        self._buffer = b""
        self.paused = False
        self.break_on_error = False
        self.closed = False
        self._stepping = False
        self._broke = False

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
        elif command == "break on":
            self.break_on_error = True
        elif command == "break off":
            self.break_on_error = False

    def at_boundary(self, error_seen: bool, on_pause=None) -> None:
        """Called after each step: apply commands, and wait here while paused."""
        self._read(wait=False)
        if self.break_on_error and error_seen and not self._broke:
            self._broke = True
            self.paused = True
        if not self.paused:
            return
        if on_pause is not None:
            on_pause(True)
        while self.paused and not self.closed and not self._stepping:
            self._read(wait=True)
        self._stepping = False
        if on_pause is not None:
            on_pause(self.paused)
