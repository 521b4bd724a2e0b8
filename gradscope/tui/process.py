"""The script under the UI: a child process running ``gradscope run --headless``.

Its stdout and stderr come back through pipes (shown in the log pane, never over the UI), and
debugger commands go to it through a control pipe (see `gradscope.control`). A crash of the
child — even a hard one — leaves the UI up and the record as far as it got.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


class ScriptProcess:
    def __init__(self, argv: list[str], record: Path):
        """`argv`: the arguments of ``gradscope`` for the child (``run ...`` or ``demo ...``)."""
        read_end, self._control = os.pipe()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gradscope", *argv[:1], "--headless", "--record", str(record),
             "--control-fd", str(read_end), *argv[1:]],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(read_end,), env=env, text=True, bufsize=1,
        )
        os.close(read_end)
        self.record = record

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def send(self, command: str) -> None:
        """One control command: pause, resume, step, break on, break off."""
        try:
            os.write(self._control, f"{command}\n".encode())
        except OSError:
            pass  # the child is gone

    def stop(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.close()

    def close(self) -> None:
        try:
            os.close(self._control)
        except OSError:
            pass
