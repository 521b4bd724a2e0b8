"""Hugging Face Trainer: ``Trainer(..., callbacks=[GradscopeCallback()])``.

Watches the model and optimizer the Trainer builds, from the start of training to its end.
Needs ``pip install gradscope[transformers]``.

The Trainer has no callback for an exception, so at the end of its ``__init__``
(``on_init_end``) the callback wraps that Trainer's ``train`` method (on the instance only):
when training raises, every hook is removed and the record closed as ``crashed`` before the
exception goes on. A callback added later with ``add_callback`` finds the Trainer when
training begins and wraps it for the next call; if the ``train`` already running raises, its
record is closed as ``crashed`` by the next ``train`` or at exit.
"""

from __future__ import annotations

import atexit
import functools
import sys

try:
    from transformers import Trainer, TrainerCallback
except ImportError:
    raise ImportError(
        "gradscope.integrations.transformers needs transformers: pip install gradscope[transformers]"
    ) from None

from ..watch import watch


def _calling_trainer():
    """The Trainer whose method is calling the callback (found on the call stack)."""
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, Trainer):
            return owner
        frame = frame.f_back
    return None


class GradscopeCallback(TrainerCallback):
    """Record a Trainer run with gradscope; keyword arguments go to `gradscope.watch`."""

    def __init__(self, record=None, **watch_kwargs):
        self.record = record
        self.watch_kwargs = watch_kwargs
        self.session = None

    def on_init_end(self, args, state, control, **kwargs):
        self._guard(_calling_trainer())

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._close("crashed")  # a previous train() that raised before this callback heard of it
        self._guard(_calling_trainer())
        self.session = watch(model, optimizer, record=self.record, **self.watch_kwargs)
        self.session.annotate(mode="transformers", target=type(model).__name__)
        atexit.register(self._close, "crashed")

    def on_train_end(self, args, state, control, **kwargs):
        self._close("finished")

    def _guard(self, trainer) -> None:
        if trainer is None or getattr(trainer.train, "_gradscope_guard", None) is self:
            return
        train = trainer.train

        @functools.wraps(train)
        def guarded(*args, **kwargs):
            try:
                return train(*args, **kwargs)
            except BaseException:
                self._close("crashed")
                raise

        guarded._gradscope_guard = self
        trainer.train = guarded

    def _close(self, status: str) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            session.close(status)
            atexit.unregister(self._close)
