"""Parameter update auditing on a fixed sample of each parameter's elements.

Each parameter contributes at most `size` evenly strided elements, so auditing costs a bounded
amount of device memory (two samples per parameter: the last step's and the one before the
optimizer ran) instead of a second copy of the model. Parameters with at most `size` elements
are tracked exactly.

The sample of a parameter is a strided *view* of its storage, made once and kept: it follows
in-place updates (what optimizers do) for free. Once per step (`end_step`) every view is
re-validated against the parameter's current storage (``data_ptr``), so a parameter whose data
was replaced (``p.data = ...``, a reload) gets a fresh view. A DTensor parameter is sampled on
its local shard (no collective).

The work is grouped by (device, dtype) and done with multi-tensor (``torch._foreach_*``)
operations: a constant number of kernel launches per step and group, whatever the number of
parameters. All results are device tensors; nothing is read back here.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

from .capture import local_values, rows_of


def _sample(local: torch.Tensor, size: int) -> tuple[torch.Tensor, bool]:
    """(sample of `local`, whether it is a view that follows the parameter)."""
    contiguous = local.is_contiguous()
    flat = local.view(-1) if contiguous else local.reshape(-1)
    stride = max(1, -(-flat.numel() // size))
    return flat[::stride][:size], contiguous


@dataclass
class _Entry:
    ref: weakref.ref
    key: tuple = ()  # (device, dtype) of the sample
    ptr: int = 0  # data_ptr of the storage the view was made on
    view: torch.Tensor | None = None  # None: the parameter has no values, or needs a copy
    follows: bool = False  # whether `view` follows the parameter (contiguous storage)
    last: torch.Tensor | None = None  # sample at the end of the previous step
    before: torch.Tensor | None = None  # sample before the optimizer's step (a reused buffer)


@dataclass
class _Group:
    names: list[str] = field(default_factory=list)
    entries: list[_Entry] = field(default_factory=list)


class ParamTracker:
    """Samples of tracked parameters, and the update norms computed from them."""

    def __init__(self, size: int = 1024):
        self.size = size
        self._entries: dict[str, _Entry] = {}
        self._plans: dict[tuple[str, ...], list[_Group]] = {}  # names -> groups, until a view changes
        self._armed: set[tuple[str, ...]] = set()  # plans whose `before` samples are current

    def add(self, name: str, param: torch.Tensor) -> bool:
        """Track `param`; returns whether only a sample of its elements is tracked."""
        entry = _Entry(weakref.ref(param))
        self._entries[name] = entry
        if self._refresh(entry):
            entry.last = entry.view.clone()
        self._plans.clear()
        return param.numel() > self.size

    def _refresh(self, entry: _Entry) -> bool:
        """Make `entry.view` current; returns whether the parameter has values to sample."""
        param = entry.ref()
        local = None if param is None else local_values(param)
        if local is None or local.layout != torch.strided:
            entry.view = None
            return False
        if entry.view is not None and entry.follows and local.data_ptr() == entry.ptr:
            return True
        view, follows = _sample(local, self.size)
        if entry.last is not None and (entry.last.shape != view.shape or entry.last.dtype != view.dtype):
            entry.last = view.clone()  # a different parameter now: start over from here
            entry.before = None
        entry.view, entry.follows, entry.ptr = view, follows, local.data_ptr()
        entry.key = (view.device, view.dtype)
        return True

    def _plan(self, names) -> list[_Group]:
        key = tuple(names)
        plan = self._plans.get(key)
        if plan is None:
            groups: dict[tuple, _Group] = {}
            for name in key:
                entry = self._entries.get(name)
                if entry is None or entry.view is None or entry.last is None:
                    continue
                group = groups.setdefault(entry.key, _Group())
                group.names.append(name)
                group.entries.append(entry)
            plan = self._plans[key] = list(groups.values())
        for group in plan:  # samples that are copies (non-contiguous parameters) are retaken
            for entry in group.entries:
                local = None if entry.follows else local_values(entry.ref())
                if local is not None:
                    entry.view = _sample(local, self.size)[0]
        return plan

    def before_step(self, names) -> None:
        """Remember the sample of `names` just before an optimizer changes them."""
        plan = self._plan(names)
        for group in plan:
            for entry in group.entries:
                if entry.before is None:
                    entry.before = torch.empty_like(entry.view)
            torch._foreach_copy_([e.before for e in group.entries], [e.view for e in group.entries])
        self._armed.add(tuple(names))

    def after_step(self, names) -> list[tuple[list[str], torch.Tensor]]:
        """Norms for the optimizer's step, per group: (names, rows of (|Δw|, |w| before,
        |change since last step before the optimizer ran|))."""
        key = tuple(names)
        if key not in self._armed:
            return []
        self._armed.discard(key)
        out = []
        for group in self._plan(key):
            views = [e.view for e in group.entries]
            before = [e.before for e in group.entries]
            last = [e.last for e in group.entries]
            extra = _norm_dtype(views[0])
            delta = torch._foreach_norm(torch._foreach_sub(views, before), 2, **extra)
            weight = torch._foreach_norm(before, 2, **extra)
            outside = torch._foreach_norm(torch._foreach_sub(before, last), 2, **extra)
            out.append((group.names, rows_of(delta, weight, outside)))
        return out

    def end_step(self) -> list[tuple[list[str], torch.Tensor]]:
        """Norms over the whole step, per group: (names, rows of (|Δw| since the last step,
        |w| then)); then the current samples become the last ones. Every view is first
        re-validated against its parameter's storage."""
        self._revalidate()
        out = []
        for group in self._plan(list(self._entries)):
            views = [e.view for e in group.entries]
            last = [e.last for e in group.entries]
            extra = _norm_dtype(views[0])
            delta = torch._foreach_norm(torch._foreach_sub(views, last), 2, **extra)
            weight = torch._foreach_norm(last, 2, **extra)
            out.append((group.names, rows_of(delta, weight)))
            torch._foreach_copy_(last, views)
        return out

    def _revalidate(self) -> None:
        changed = False
        for name, entry in list(self._entries.items()):
            if entry.ref() is None:
                del self._entries[name]
                changed = True
                continue
            had = (entry.view is not None, entry.ptr, entry.key)
            if self._refresh(entry) and entry.last is None:
                entry.last = entry.view.clone()
            changed |= (entry.view is not None, entry.ptr, entry.key) != had
        if changed:
            self._plans.clear()
            self._armed.clear()


def _norm_dtype(t: torch.Tensor) -> dict:
    return {"dtype": torch.float32} if t.dtype in (torch.float16, torch.bfloat16) else {}

