"""Run an unmodified script (or ``-m module``) under a session, as ``python`` would run it.

The script sees the ``sys.argv`` and ``sys.path[0]`` python would give it and runs as
``__main__``. Global hooks attach the session to every root module that runs a forward (a
module called while no other module is running) and every optimizer that steps. The script's
exit status and traceback come through unchanged (gradscope's own frames are cut from the
traceback); the record is closed in every case, so what was recorded before a crash stays.

Signals (`Interruptions`): Ctrl-C ends the script as under python (status ``interrupted``);
SIGTERM ends it too (status ``killed``) instead of killing the process outright, so the record
is closed and the report written; the process then dies of SIGTERM as it would have. While
gradscope finishes, further Ctrl-C and SIGTERM wait for it (finishing is bounded).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import runpy
import signal
import sys
import threading
import traceback
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim import optimizer as optim_module

from .distributed import record_path, run_fields, unwrap
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


_TORCH_DIR = str(Path(torch.__file__).resolve().parent)


def _user_frame(frame):
    """The first frame outside torch and gradscope: the script's code that made an optimizer."""
    while frame is not None and frame.f_code.co_filename.startswith((_TORCH_DIR, *_OWN_FILES)):
        frame = frame.f_back
    return frame


def _models_in(frame) -> list[tuple[str, torch.nn.Module]]:
    """(variable name, model) for the models with parameters a frame can see (its locals, then
    its globals), wrappers seen through, submodules of another model left out."""
    found: dict[int, tuple[str, torch.nn.Module]] = {}
    if frame is None:
        return []
    for scope in (frame.f_locals, frame.f_globals):
        for var, value in list(scope.items()):
            if not isinstance(value, torch.nn.Module) or var.startswith("_"):
                continue
            inner = unwrap(value)
            if id(inner) in found and value is not inner:
                continue  # the model's own name wins over its wrapper's
            if any(True for _ in inner.parameters()):
                found[id(inner)] = (var, inner)
    models = list(found.values())
    subs = {id(m) for _, model in models for m in model.modules() if m is not model}
    return [(var, m) for var, m in models if id(m) not in subs]


class _AutoAttach:
    """Global module and optimizer hooks that attach whatever the script trains.

    Optimizers are known from their construction (``Optimizer.__init__`` is wrapped while the
    script runs), so that every optimizer is watched before the first step, whichever steps
    first. Models are named once, at the first forward or optimizer step, when the optimizers
    built before the training loop are known: the models they train are attached first, and
    when exactly one model is trained it gets the plain names (``fc1.weight``); otherwise each
    model's names start with its variable name (``gen.main.0.weight``, ``disc.main.0.weight``),
    and so do those of models no optimizer trains (a teacher, an EMA copy) when they run.
    Models the script cannot be seen holding fall back to their class name.
    """

    def __init__(self, session: Session):
        self.session = session
        self.local = threading.local()  # depth of module calls, per thread
        self._optimizers: list = []  # weak references to optimizers built, not yet watched
        self._models: dict[int, tuple[str, object]] = {}  # id(model) -> (variable, weak ref)
        self._settled = False
        self._init = optim_module.Optimizer.__init__
        optim_module.Optimizer.__init__ = self._wrap_init(self._init)
        session.module_hooks(self._pre, self._post)  # out with the session's own on light steps
        self.handles = [
            optim_module.register_optimizer_step_pre_hook(self._opt_pre),
            optim_module.register_optimizer_step_post_hook(self._opt_post),
        ]

    def _wrap_init(self, original):
        auto = self

        @functools.wraps(original)
        def __init__(optimizer, *args, **kwargs):
            original(optimizer, *args, **kwargs)
            try:
                auto._built(optimizer, sys._getframe(1))
            except Exception as exc:  # never the script's problem
                auto.session._failed("optimizer_built", exc)

        return __init__

    def _built(self, optimizer, frame) -> None:
        for var, model in _models_in(_user_frame(frame)):
            self._models.setdefault(id(model), (var, weakref.ref(model)))
        self._optimizers.append(weakref.ref(optimizer))  # watched at the first forward or step

    def _settle(self) -> None:
        """Attach the models the known optimizers train, name them, and watch the optimizers.
        Optimizers built after training began are watched from their first step."""
        if self._settled and not self._optimizers:
            return
        optimizers = [o for o in (ref() for ref in self._optimizers) if o is not None]
        self._optimizers.clear()
        held = {id(p) for o in optimizers for g in o.param_groups for p in g["params"]}
        models = [(var, m) for var, ref in self._models.values() if (m := ref()) is not None]
        trained = [(var, m) for var, m in models
                   if not self.session.knows(m) and any(id(p) in held for p in m.parameters())]
        plain = not self._settled and len(trained) == 1
        for var, model in trained:
            self.session.add_model(model, name=None if plain else self.session.free_prefix(var))
        for optimizer in optimizers:
            self.session.add_optimizer(optimizer, hooks=False)
        self._settled = True

    def _pre(self, module, args):
        depth = getattr(self.local, "depth", 0)
        if depth == 0:
            if not self._settled:
                self._settle()  # the optimizers built before the first forward
            if not self.session.knows(module):
                known = self._models.get(id(unwrap(module)))
                name = None
                if known is not None and known[1]() is unwrap(module):
                    name = self.session.free_prefix(known[0])
                self.session.attach_running(module, args, name=name)
        if not self.session.module_hooks_out:  # else no post-hook comes for this call
            self.local.depth = depth + 1

    def _post(self, module, args, output):
        self.local.depth = max(0, getattr(self.local, "depth", 0) - 1)

    def _opt_pre(self, optimizer, args, kwargs):
        self._settle()
        self.session.add_optimizer(optimizer, hooks=False)
        self.session.on_optimizer_pre(optimizer)

    def _opt_post(self, optimizer, args, kwargs):
        self.session.on_optimizer_post(optimizer)

    def remove(self) -> None:
        optim_module.Optimizer.__init__ = self._init
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


class Terminated(BaseException):
    """SIGTERM arrived while the script ran (raised in the main thread like KeyboardInterrupt)."""


class Interruptions:
    """Signal handling for the whole of ``gradscope run``: the script, then the finishing.

    A handler tells the two phases apart by the stack: while `run` is running the script
    through runpy, the script is running and the signal interrupts it; afterwards gradscope is closing the record and
    writing the report, and the signal is noted, not obeyed (so a second Ctrl-C cannot leave
    the record ``running``)."""

    def __init__(self):
        self.terminated = False
        self._noticed = False
        self._saved: dict[int, object] = {}

    def __enter__(self) -> "Interruptions":
        if threading.current_thread() is threading.main_thread():
            self._saved[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                self._saved[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._saved.items():
            if signal.getsignal(signum) in (self._on_sigint, self._on_sigterm):
                signal.signal(signum, handler)
        if self.terminated:  # die of SIGTERM as python would have, now that the record is safe
            sys.stdout.flush()
            sys.stderr.flush()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    @staticmethod
    def _script_running(frame) -> bool:
        """Whether runpy's frame sits between `frame` and `run`'s (``python -m gradscope``
        itself runs under runpy, further down)."""
        seen_runpy = False
        while frame is not None:
            if frame.f_code is run.__code__:
                return seen_runpy
            seen_runpy = seen_runpy or frame.f_code is runpy._run_code.__code__
            frame = frame.f_back
        return False

    def _finishing(self) -> None:
        if not self._noticed:
            self._noticed = True
            print("gradscope: finishing the record and report (this takes a moment)", file=sys.stderr)

    def _on_sigint(self, signum, frame):
        if self._script_running(frame):
            raise KeyboardInterrupt
        self._finishing()

    def _on_sigterm(self, signum, frame):
        self.terminated = True
        if self._script_running(frame):
            raise Terminated
        self._finishing()


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
        shown = traceback.TracebackException(type(exc), exc, _user_traceback(exc.__traceback__))
        part, seen = shown, set()
        while part is not None and id(part) not in seen:  # drop the signal handler's frames
            seen.add(id(part))
            while part.stack and part.stack[-1].filename == __file__:
                part.stack.pop()
            part = part.__cause__ or part.__context__
        print("".join(shown.format()), end="", file=sys.stderr)
        status, code = "interrupted", 130
    except Terminated:
        status, code = "killed", 128 + signal.SIGTERM
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
