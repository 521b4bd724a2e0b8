"""Parameter update auditing on a fixed sample of each parameter's elements.

Each parameter contributes at most `size` evenly strided elements, so auditing costs a bounded
amount of device memory (three samples per parameter: the last step's, the one before the
optimizer ran, and a scratch copy) instead of a second copy of the model. Parameters with at
most `size` elements are tracked exactly.

All results are device tensors (0-d norms stacked per call); nothing is read back here.
"""

from __future__ import annotations

import weakref

import torch

from .shards import local


def _sample_view(p: torch.Tensor, size: int) -> torch.Tensor:
    flat = local(p).detach().reshape(-1)  # a sharded parameter: this rank's shard
    stride = max(1, -(-flat.numel() // size))
    return flat[::stride][:size]


class ParamTracker:
    """Samples of tracked parameters, and the update norms computed from them."""

    def __init__(self, size: int = 1024):
        self.size = size
        self._params: dict[str, weakref.ref] = {}
        self._last: dict[str, torch.Tensor] = {}  # sample at the end of the previous step
        self._before: dict[str, torch.Tensor] = {}  # sample before the optimizer's step

    def add(self, name: str, param: torch.Tensor) -> bool:
        """Track `param`; returns whether only a sample of its elements is tracked."""
        self._params[name] = weakref.ref(param)
        param = local(param)
        if param.numel() > 0 and param.device.type != "meta":
            self._last[name] = _sample_view(param, self.size).clone()
        return param.numel() > self.size

    def _views(self, names) -> tuple[list[str], list[torch.Tensor]]:
        kept, views = [], []
        for name in names:
            param = self._params[name]()
            if param is not None and name in self._last:
                kept.append(name)
                views.append(_sample_view(param, self.size))
        return kept, views

    def before_step(self, names) -> None:
        """Remember the sample of `names` just before an optimizer changes them."""
        kept, views = self._views(names)
        if views:
            for name, copy in zip(kept, torch._foreach_add(views, 0)):
                self._before[name] = copy

    def after_step(self, names) -> tuple[list[str], torch.Tensor | None]:
        """Norms for the optimizer's step: rows of (|Δw|, |w| before, |change since last step|)."""
        kept, views = self._views([n for n in names if n in self._before])
        if not views:
            return [], None
        before = [self._before.pop(n) for n in kept]
        last = [self._last[n] for n in kept]
        delta = torch._foreach_norm(torch._foreach_sub(views, before))
        weight = torch._foreach_norm(before)
        outside = torch._foreach_norm(torch._foreach_sub(before, last))
        rows = torch.stack([torch.stack(delta), torch.stack(weight), torch.stack(outside)], 1)
        return kept, rows.double()

    def end_step(self) -> tuple[list[str], torch.Tensor | None]:
        """Norms over the whole step: rows of (|Δw| since the last step, |w| then); then rolls."""
        kept, views = self._views(list(self._params))
        if not views:
            return [], None
        last = [self._last[n] for n in kept]
        delta = torch._foreach_norm(torch._foreach_sub(views, last))
        weight = torch._foreach_norm(last)
        rows = torch.stack([torch.stack(delta), torch.stack(weight)], 1).double()
        torch._foreach_copy_(last, views)
        return kept, rows
