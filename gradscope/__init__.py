"""gradscope: a debugger for PyTorch training.

Public API: `watch` (attach to a model and optimizer), `autograd_graph` (the autograd graph
behind a tensor as a networkx graph), `open_record` (read a record), and for plugins
`hookimpl`, `Finding`, `TailCount`, `DeadUnits`, `Config`, `RunView`, `StepData`, `Stat`, `Update`.
Importing gradscope does not import the terminal UI.
"""

from . import errors
from .analysis import RunView
from .data import Stat, StepData, Update
from .findings import Finding
from .plugins import Config, hookimpl
from .record.reader import Record, open_record
from .session import Session
from .trace.autograd import autograd_graph
from .trace.tails import DeadUnits, TailCount
from .watch import watch

__version__ = "0.1.0"

__all__ = [
    "Config", "DeadUnits", "errors", "Finding", "Record", "RunView", "Session", "Stat", "StepData", "TailCount",
    "Update", "autograd_graph", "hookimpl", "open_record", "watch", "__version__",
]
