"""gradscope: a debugger for PyTorch training.

Public API: `watch` (attach to a model and optimizer), `autograd_graph` (the autograd graph
behind a tensor as a networkx graph), `open_record` (read a record). Importing gradscope does
not import the terminal UI.
"""

from .data import Stat, StepData, Update
from .record.reader import Record, open_record
from .session import Session
from .trace.autograd import autograd_graph
from .watch import watch

__version__ = "0.1.0"

__all__ = [
    "Record", "Session", "Stat", "StepData", "Update", "autograd_graph", "open_record", "watch",
    "__version__",
]
