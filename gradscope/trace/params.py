"""Parameter update auditing on a fixed sample of each parameter's elements.

Each parameter contributes at most `size` evenly strided elements, so auditing costs a bounded
amount of device memory (three samples per parameter: the last step's, the one before the
optimizer ran and a scratch copy) instead of a second copy of the model. Parameters with at most
`size` elements are tracked exactly.

The sample of a parameter is a strided *view* of its storage, made once and kept: it follows
in-place updates (what optimizers do) for free. Once per step (`end_step`) every view is
re-validated against the parameter's current storage (``data_ptr``), so a parameter whose data
was replaced (``p.data = ...``, a reload) gets a fresh view. A DTensor parameter is sampled on
its local shard (no collective).

The samples of all parameters of one (device, dtype) live in flat buffers, one segment per
parameter (`_Samples`): taking the current samples is one copy of the views (`capture.pack`), and the
norms of all parameters are one segment reduction. A constant number of kernel launches per
step and group, whatever the number of parameters, on any device. All results are device
tensors; nothing is read back here.
"""

from __future__ import annotations

import operator
import weakref
from dataclasses import dataclass

import torch

from .blocks import to_device
from .capture import by_length, column_norms, local_values, pack, pack_plan


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
    view: torch.Tensor | None = None  # None: the parameter has no values to sample
    follows: bool = False  # whether `view` follows the parameter (contiguous storage)
    last: torch.Tensor | None = None  # sample at the end of the previous step
    laid: bool = False  # whether `last` was laid out in a group's buffers (then the group has it)


class _Samples:
    """The samples of some parameters of one (device, dtype), in flat buffers: `last` (end of the
    previous step), `before` (before the optimizer's step) and `now` (scratch). At the end of a
    step `now` and `last` trade places (no copy); `dissolve` hands the entries their last samples
    back before the parameters are laid out anew."""

    def __init__(self, names: list[str], entries: list[_Entry], size: int):
        order = by_length([e.view.numel() for e in entries])  # equal lengths side by side: runs
        names, entries = [names[i] for i in order], [entries[i] for i in order]
        self.names = names
        self.entries = entries
        self._size = size
        self._views = [e.view for e in entries]
        self._copies = [i for i, e in enumerate(entries) if not e.follows]  # resampled each time
        self._lengths = tuple(v.numel() for v in self._views)
        self._plan = pack_plan(self._lengths)
        self.last = torch.cat([e.last.reshape(-1) for e in entries])
        self.before = torch.empty_like(self.last)
        self.now = torch.empty_like(self.last)
        for entry in entries:
            entry.laid = True
        self._subsets: dict[tuple[str, ...], tuple[list[str], torch.Tensor | None] | None] = {}

    def dissolve(self) -> None:
        """Give each laid-out entry its last sample (a segment of the current `last`)."""
        offset = 0
        for entry, n in zip(self.entries, self._lengths):
            if entry.laid:
                entry.last = self.last[offset:offset + n]
            offset += n

    def take(self, out: torch.Tensor) -> torch.Tensor:
        """The current samples, into `out`."""
        for i in self._copies:
            local = local_values(self.entries[i].ref())
            if local is not None:
                view = _sample(local, self._size)[0]
                if view.numel() != self._lengths[i]:  # laid out anew at the step's end (`_placed`)
                    raise RuntimeError(f"{self.names[i]} changed size during the step: its update is not audited")
                self._views[i] = view
        return pack(self._views, out, self._plan)

    def norms(self, *columns: torch.Tensor) -> torch.Tensor:
        """[parameters, len(columns)]: the L2 norm of each parameter's segment of each column
        (reduced in float64)."""
        return column_norms(list(columns), self._lengths)

    def subset(self, names: tuple[str, ...]) -> tuple[list[str], torch.Tensor | None] | None:
        """(names, device index of their rows, None for all rows) of the tracked ones of
        `names`; None when none is tracked here."""
        if names not in self._subsets:
            wanted = set(names)
            positions = [i for i, name in enumerate(self.names) if name in wanted]
            if not positions:
                found = None
            elif len(positions) == len(self.names):
                found = (self.names, None)
            else:
                index = to_device(torch.tensor(positions, dtype=torch.int64), self.last.device)
                found = ([self.names[i] for i in positions], index)
            self._subsets[names] = found
        return self._subsets[names]


class ParamTracker:
    """Samples of tracked parameters, and the update norms computed from them."""

    def __init__(self, size: int = 1024):
        self.size = size
        self._entries: dict[str, _Entry] = {}
        self._groups: list[_Samples] | None = None  # None: to be laid out again
        self._armed: set[tuple[str, ...]] = set()  # optimizers' name lists whose `before` is current
        self._plain: tuple[list, list] | None = None  # (refs, storage pointers) when all are plain
        self._ended: tuple | None = None  # (step, its whole rows) computed by a closing `after_step`

    def add(self, name: str, param: torch.Tensor) -> bool:
        """Track `param`; returns whether only a sample of its elements is tracked."""
        entry = _Entry(weakref.ref(param))
        self._entries[name] = entry
        self._plain = None
        if self._refresh(entry):
            entry.last = entry.view.clone()
        self._relayout()
        return param.numel() > self.size

    def _relayout(self) -> None:
        for group in self._groups or ():
            group.dissolve()
        self._groups = None
        self._armed.clear()

    def _refresh(self, entry: _Entry) -> bool:
        """Make `entry.view` current; returns whether the parameter has values to sample."""
        param = entry.ref()
        if (entry.view is not None and entry.follows and type(param) in _PLAIN
                and param.layout == torch.strided and param.data_ptr() == entry.ptr):
            return True  # the usual case, told without making a tensor
        local = None if param is None else local_values(param)
        if local is None or local.layout != torch.strided:
            entry.view = None
            return False
        if entry.view is not None and entry.follows and local.data_ptr() == entry.ptr:
            return True
        view, follows = _sample(local, self.size)
        if entry.last is not None and (entry.last.shape != view.shape or entry.last.dtype != view.dtype):
            entry.last, entry.laid = view.clone(), False  # a different parameter now: start over from here
        entry.view, entry.follows, entry.ptr = view, follows, local.data_ptr()
        entry.key = (view.device, view.dtype)
        return True

    def _layout(self) -> list[_Samples]:
        if self._groups is None:
            by_key: dict[tuple, tuple[list, list]] = {}
            for name, entry in self._entries.items():
                if entry.view is not None and entry.last is not None:
                    names, entries = by_key.setdefault(entry.key, ([], []))
                    names.append(name)
                    entries.append(entry)
            self._groups = [_Samples(names, entries, self.size) for names, entries in by_key.values()]
        return self._groups

    def before_step(self, names) -> None:
        """Remember the samples just before an optimizer changes `names`."""
        for group in self._layout():
            group.take(group.before)
        self._armed.add(tuple(names))

    def after_step(self, names, *, closing: int | None = None) -> list[tuple[list[str], torch.Tensor]]:
        """Norms for the optimizer's step, per group: (names, rows of (|Δw|, |w| before,
        |change since last step before the optimizer ran|)). `closing`: the number of the step
        that ends right after this optimizer's step; when no parameter's storage moved, that
        step's whole rows (`end_step`'s) are taken from the same samples in the same reduction
        (one sampling and one reduction fewer per step) and kept for its `end_step`, whatever
        other optimizers (other threads) do meanwhile."""
        key = tuple(names)
        if key not in self._armed:
            return []
        self._armed.discard(key)
        whole = closing is not None and self._unmoved()
        out, ended, taken = [], [], []
        for group in self._layout():
            found = group.subset(key)
            if found is None and not whole:
                continue
            now = group.take(group.now)
            columns = [] if found is None else [now - group.before, group.before, group.before - group.last]
            if whole:  # and the whole step's, as `end_step` takes them
                columns += [now - group.last, group.last]
                taken.append((group, now))
            rows = group.norms(*columns)
            if found is not None:
                names, index = found
                mine = rows[:, :3]
                out.append((names, mine if index is None else mine.index_select(0, index)))
            if whole:
                ended.append((group.names, rows[:, -2:]))
        if whole:  # all reduced: the current samples become the last ones, as `end_step` does
            for group, now in taken:
                group.last, group.now = now, group.last
            self._ended = (closing, ended)
        return out

    def end_step(self, step: int | None = None) -> list[tuple[list[str], torch.Tensor]]:
        """Norms over the whole `step`, per group: (names, rows of (|Δw| since the last step,
        |w| then)); then the current samples become the last ones. Every view is first
        re-validated against its parameter's storage. After a `after_step` closing `step`, the
        rows it computed."""
        ended, self._ended = self._ended, None
        if ended is not None and step is not None and ended[0] == step:
            return ended[1]
        self._revalidate()
        out = []
        for group in self._layout():
            now = group.take(group.now)
            out.append((group.names, group.norms(now - group.last, group.last)))
            group.last, group.now = now, group.last
        return out

    def _unmoved(self) -> bool:
        """Whether every parameter is a plain tensor whose storage is where it was, told in one
        list comparison (the usual case, every step)."""
        if self._plain is None:
            return False
        refs, pointers = self._plain
        try:
            return list(map(torch.Tensor.data_ptr, map(operator.call, refs))) == pointers
        except Exception:  # a parameter is gone, or has no storage of its own now
            return False

    def _revalidate(self) -> None:
        if self._unmoved():
            return
        self._plain = None
        changed = False
        for name, entry in list(self._entries.items()):
            if entry.ref() is None:
                del self._entries[name]
                changed = True
                continue
            had = _placed(entry)
            if self._refresh(entry) and entry.last is None:
                entry.last, entry.laid = entry.view.clone(), False
            changed |= _placed(entry) != had
        if changed:
            self._relayout()
        entries = list(self._entries.values())
        if all(e.view is not None and e.follows and type(e.ref()) in _PLAIN for e in entries):
            self._plain = ([e.ref for e in entries], [e.ptr for e in entries])


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _placed(entry: _Entry) -> tuple:
    """What lays `entry` out in its group's buffers: whether it has a sample, where its storage
    is, its (device, dtype) and its sample's length (a parameter sampled anew each time, not
    contiguous, can shrink at the same address)."""
    return entry.view is not None, entry.ptr, entry.key, 0 if entry.view is None else entry.view.numel()
