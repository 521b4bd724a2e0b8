"""gradscope: a debugger for PyTorch training.

Public API: `watch` (attach to a model and optimizer), `autograd_graph` (the autograd graph
behind a tensor as a networkx graph), `open_record` (read a record), and for plugins
`hookimpl`, `Finding`, `TailCount`, `DeadUnits`, `Config`, `RunView`, `StepData`, `Stat`, `Update`.

Names are imported on first use (PEP 562), so ``import gradscope`` and the commands that only
read records (``view``, ``runs``, ``report``, ``export``, ``--help``) never import torch.
Importing gradscope does not import the terminal UI.
"""

import sys
import types
from importlib import import_module

from . import errors

__version__ = "0.1.0"

_HOMES = {
    "RunView": "analysis", "Stat": "data", "StepData": "data", "Update": "data",
    "Finding": "findings", "Config": "plugins", "hookimpl": "plugins", "Record": "record.reader",
    "open_record": "record.reader", "Session": "session", "autograd_graph": "trace.autograd",
    "DeadUnits": "trace.tails", "TailCount": "trace.tails", "watch": "watch",
}

__all__ = [
    "Config", "DeadUnits", "errors", "Finding", "Record", "RunView", "Session", "Stat", "StepData", "TailCount",
    "Update", "autograd_graph", "hookimpl", "open_record", "watch", "__version__",
]


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'gradscope' has no attribute {name!r}")
    value = getattr(import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """Keeps ``gradscope.watch`` the function once the submodule of the same name is loaded
    (the import system sets a loaded submodule as an attribute of its package)."""

    def __setattr__(self, name, value):
        if name == "watch" and isinstance(value, types.ModuleType):
            value = value.watch
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
