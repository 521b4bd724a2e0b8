"""The optimizers a session watches: their index, their parameters, their learning rates.

Optimizers are held by weak reference and looked up by id, checked against the reference
(Python reuses the id of a freed object). The first optimizer that steps is the *primary* one:
its step ends the training step.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field

import torch


@dataclass
class TrackedOptimizer:
    index: int
    ref: weakref.ref
    ids: tuple[int, ...] | None = None  # ids of its parameters when last synced
    params: list[str | None] = field(default_factory=list)  # their recorded names

    @property
    def name(self) -> str:
        return f"optimizer{self.index}"


def _flat_params(optimizer: torch.optim.Optimizer) -> list:
    return list(itertools.chain.from_iterable(group["params"] for group in optimizer.param_groups))


class Optimizers:
    def __init__(self):
        self._by_id: dict[int, TrackedOptimizer] = {}
        self.primary: int | None = None

    def __bool__(self) -> bool:
        return bool(self._by_id)

    def get(self, optimizer) -> TrackedOptimizer | None:
        entry = self._by_id.get(id(optimizer))
        return entry if entry is not None and entry.ref() is optimizer else None

    def add(self, optimizer: torch.optim.Optimizer) -> TrackedOptimizer:
        """Track `optimizer` (a new index; an optimizer already tracked keeps its own)."""
        entry = self.get(optimizer)
        if entry is None:
            entry = TrackedOptimizer(len(self._by_id), weakref.ref(optimizer))
            self._by_id[id(optimizer)] = entry
        return entry

    def changed_params(self, optimizer, entry: TrackedOptimizer) -> list | None:
        """The optimizer's parameters when they changed since the last call (else None)."""
        params = _flat_params(optimizer)
        ids = tuple(map(id, params))
        if ids == entry.ids:
            return None
        entry.ids = ids
        return params

    def note_step(self, entry: TrackedOptimizer) -> None:
        """`entry` is about to step: the first optimizer ever to step becomes the primary one."""
        if self.primary is None:
            self.primary = entry.index

    def is_primary(self, entry: TrackedOptimizer) -> bool:
        return entry.index == self.primary

    def learning_rates(self) -> dict[str, list]:
        """optimizerN -> the learning rate of each param group (None where it is not a number)."""
        lrs = {}
        for entry in list(self._by_id.values()):
            optimizer = entry.ref()
            if optimizer is not None:
                lrs[entry.name] = [
                    g.get("lr") if isinstance(g.get("lr"), (int, float)) else None
                    for g in optimizer.param_groups
                ]
        return lrs


def describe_groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    """The host-side settings of each param group (numbers, flags and strings only), and its
    `size`: how many of the optimizer's parameters, in order, belong to it."""
    return [
        {**{k: v for k, v in g.items() if k != "params" and isinstance(v, (bool, int, float, str))},
         "size": len(g["params"])}
        for g in optimizer.param_groups
    ]
