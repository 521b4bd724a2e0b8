"""Run an unmodified script (or ``-m module``) under a session, as ``python`` would run it.

The script sees the ``sys.argv`` and ``sys.path[0]`` python would give it and runs as
``__main__``. Global hooks attach the session to every root module that runs a forward (a
module called while no other module is running) and every optimizer that steps. The script's
exit status and traceback come through unchanged (gradscope's own frames are cut from the
traceback); the record is closed in every case, so what was recorded before a crash stays.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.modules import module as nn_module
from torch.optim import optimizer as optim_module

from .distributed import record_path, run_fields
from .errors import GradscopeError
from .session import Session

_OWN_FILES = (str(Path(__file__).resolve().parent), runpy.__file__, "<frozen runpy>")


@dataclass
class Target:
    """What to run: a script path or a module name, and its arguments."""

    name: str
    args: list[str]
    is_module: bool = False

    @property
    def label(self) -> str:
        return self.name if self.is_module else Path(self.name).stem


def check_target(target: Target) -> None:
    """Raise `GradscopeError` when `target` cannot be run (before anything is recorded)."""
    if target.is_module:
        try:
            spec = importlib.util.find_spec(target.name)
        except (ImportError, ValueError) as exc:
            raise GradscopeError(f"cannot import module {target.name!r}: {exc}") from None
        if spec is None:
            raise GradscopeError(f"no module named {target.name!r}")
        return
    path = Path(target.name)
    if not path.exists():
        raise GradscopeError(f"{target.name}: no such file")
    if path.is_dir():
        raise GradscopeError(f"{target.name}: is a directory, not a Python script")
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise GradscopeError(f"{target.name}: cannot read ({exc.strerror})") from None
    try:
        compile(source, str(path), "exec")
    except (SyntaxError, ValueError) as exc:
        where = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        raise GradscopeError(
            f"{target.name}: not a Python script{where}: {type(exc).__name__}: {exc.args[0] if exc.args else exc}"
        ) from None


class _AutoAttach:
    """Global module and optimizer hooks that attach whatever the script trains."""

    def __init__(self, session: Session):
        self.session = session
        self.depth = 0
        self.handles = [
            nn_module.register_module_forward_pre_hook(self._pre),
            nn_module.register_module_forward_hook(self._post, always_call=True),
            optim_module.register_optimizer_step_pre_hook(self._opt_pre),
            optim_module.register_optimizer_step_post_hook(self._opt_post),
        ]

    def _pre(self, module, args):
        if self.depth == 0 and not self.session.knows(module):
            self.session.attach_running(module, args)
        self.depth += 1

    def _post(self, module, args, output):
        self.depth = max(0, self.depth - 1)

    def _opt_pre(self, optimizer, args, kwargs):
        self.session.add_optimizer(optimizer, hooks=False)
        self.session.on_optimizer_pre(optimizer)

    def _opt_post(self, optimizer, args, kwargs):
        self.session.on_optimizer_post(optimizer)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _user_traceback(tb):
    """Drop gradscope's and runpy's frames from the front of a traceback."""
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_OWN_FILES):
        tb = tb.tb_next
    return tb


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def run(target: Target, session: Session) -> int:
    """Run `target` under `session`; returns the exit status python would have returned."""
    saved_argv, saved_path0 = sys.argv, sys.path[0]
    hooks = _AutoAttach(session)
    status, code = "finished", 0
    try:
        if target.is_module:
            sys.argv = [target.name, *target.args]
            sys.path[0] = os.getcwd()
            runpy.run_module(target.name, run_name="__main__", alter_sys=True)
        else:
            script = os.path.abspath(target.name)
            sys.argv = [target.name, *target.args]
            sys.path[0] = os.path.dirname(script)
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = _exit_code(exc)
        status = "finished" if code == 0 else "failed"
    except KeyboardInterrupt as exc:
        traceback.print_exception(type(exc), exc, _user_traceback(exc.__traceback__))
        status, code = "interrupted", 130
    except BaseException as exc:  # the script's own error: shown as python shows it
        traceback.print_exception(type(exc), exc, _user_traceback(exc.__traceback__))
        status, code = "crashed", 1
        session.annotate(error="".join(traceback.format_exception_only(type(exc), exc)).strip())
    finally:
        hooks.remove()
        sys.argv = saved_argv
        sys.path[0] = saved_path0
        session.close(status, exit_code=code)
    return code


def new_session(target: Target, record: str | Path | None, **settings) -> Session:
    """A session whose run fields describe `target`."""
    path = record_path(record, target.label)
    run_info = {
        **run_fields(),
        "mode": "run",
        "target": target.name,
        "module": target.is_module,
        "args": target.args,
        "cwd": os.getcwd(),
        "torch": torch.__version__,
    }
    return Session(path, run=run_info, **settings)
