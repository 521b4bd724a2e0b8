"""Hugging Face Trainer: ``Trainer(..., callbacks=[GradscopeCallback()])``.

Watches the model and optimizer the Trainer builds, from the start of training to its end.
Needs ``pip install gradscope[transformers]``.
"""

from __future__ import annotations

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError(
        "gradscope.integrations.transformers needs transformers: pip install gradscope[transformers]"
    ) from None

from ..watch import watch


class GradscopeCallback(TrainerCallback):
    """Record a Trainer run with gradscope; keyword arguments go to `gradscope.watch`."""

    def __init__(self, record=None, **watch_kwargs):
        self.record = record
        self.watch_kwargs = watch_kwargs
        self.session = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.session = watch(model, optimizer, record=self.record, **self.watch_kwargs)
        self.session.annotate(mode="transformers", target=type(model).__name__)

    def on_train_end(self, args, state, control, **kwargs):
        if self.session is not None:
            self.session.close("finished")
            self.session = None
