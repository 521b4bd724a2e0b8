"""PyTorch Lightning: ``Trainer(callbacks=[GradscopeCallback()])``.

Watches the LightningModule and the trainer's optimizers from the start of ``fit`` to its end
(under DDP, one record per rank). Needs ``pip install gradscope[lightning]``.
"""

from __future__ import annotations

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the older package name
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError:
        raise ImportError(
            "gradscope.integrations.lightning needs PyTorch Lightning: pip install gradscope[lightning]"
        ) from None

from ..watch import watch


class GradscopeCallback(Callback):
    """Record a Lightning ``fit`` with gradscope; keyword arguments go to `gradscope.watch`."""

    def __init__(self, record=None, **watch_kwargs):
        super().__init__()
        self.record = record
        self.watch_kwargs = watch_kwargs
        self.session = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self.session = watch(pl_module, list(trainer.optimizers), record=self.record, **self.watch_kwargs)
        self.session.annotate(mode="lightning", target=type(pl_module).__name__)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._close("finished")

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close("crashed")

    def _close(self, status: str) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            session.close(status)
