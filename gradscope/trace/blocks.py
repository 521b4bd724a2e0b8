"""Segment reductions by blocks, for the CPU.

There a segment reduction (``torch.segment_reduce``) is a plain loop over elements, ten to
twenty times slower per element than a vectorized reduction, while an operation costs
microseconds to start, not a kernel launch. `segment_rows` reduces segments laid end to end in
a flat tensor by blocks of `BLOCK` elements: whole blocks by vectorized reductions along the
rows of a block view, the few elements outside them alone, then one segment reduction per
statistic over the block rows; segments that fall into a few runs of one length each (the
weights and biases of like layers, laid out by size) are reduced run by run instead, each run
one [count, length] view. `gradscope.trace.capture` decides when this route is taken.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor (an index, a layout) on `device`, without waiting for the device."""
    if device.type == "cpu":
        return host
    if device.type == "cuda":  # pinned source: a truly asynchronous copy (no sync)
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


#: Elements per block of `segment_rows`: each block is reduced by plain (vectorized) reductions
#: along one axis; only the elements of a segment outside its whole blocks go element by element.
BLOCK = 128

_scratch = threading.local()


def temporary(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialized tensor from a buffer of the calling thread (one per device and dtype),
    kept for the next call: large temporaries freshly allocated on every pass cost the CPU more
    than the pass itself, and the allocator may keep the freed ones (resident memory grows)."""
    buffers = _scratch.__dict__.setdefault("buffers", {})
    key = (device, dtype)
    n = math.prod(shape)
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < n:
        buffer = buffers[key] = torch.empty(n, dtype=dtype, device=device)
    return buffer[:n] if len(shape) == 1 else buffer[:n].view(shape)


#: A row whose squared mean is more than this many times its variance is summed again about its
#: first value: there the float32 sum of squares would lose the spread to rounding.
DWARFED = 16


def raw_columns(v: torch.Tensor) -> torch.Tensor:
    """Per-row raw statistics (see `RAW_HOW`) of a 2-D `v`. Sums are taken in the values'
    precision (float32 for half) and moved to float64; rows whose sums cannot be trusted are
    summed again (`_checked`). Counts go through float values (exact per row): several times
    faster on the CPU than bools."""
    v = v.float() if v.dtype in LOW_PRECISION else v
    zeros = torch.eq(v, 0, out=temporary(v.shape, v.dtype, v.device)).sum(1)
    raw = torch.stack((v.sum(1), torch.linalg.vector_norm(v, dim=1), v.amin(1), v.amax(1), zeros,
                       torch.zeros_like(zeros)), 1).double()  # one widening for every column
    raw[:, 1].square_()
    return _checked(raw, v)


def one_row(x: torch.Tensor) -> torch.Tensor:
    """Raw statistics (`RAW_HOW`) of the whole flat `x` as one float64 row [1, 6], in the fewest
    operations: the route of a tensor summarized on its own (a large activation or output
    gradient, taken as its hook sees it), where the operations around the five reductions of
    `raw_columns` cost as much as the reductions. The sum of squares is a dot product (one
    vectorized pass, closer to the float64 sum than the squared norm, and infinite past
    float32's range as torch's own float32 norm); the row is checked as in `raw_columns`."""
    v = x.float() if x.dtype in LOW_PRECISION else x
    zeros = torch.eq(v, 0, out=temporary(v.shape, v.dtype, v.device)).sum()
    raw = torch.stack((v.sum(), torch.dot(v, v), v.amin(), v.amax(), zeros, zeros * 0)).double()
    return _checked(raw[None], v[None])


def _checked(raw: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`raw` (float64 raw rows of the 2-D `v`, plain float32 sums) with the rows whose sums
    cannot be trusted summed again (`_resummed`), in place: a row whose mean dwarfs its spread
    (a norm layer's weight near 1: n·mean² against the sum of squares, n·(mean² + variance),
    says mean² > DWARFED·variance), or whose sums are not finite."""
    total, squares = raw[:, 0], raw[:, 1]
    excess = torch.addcmul(squares * -DWARFED, total, total, value=(DWARFED + 1) / v.shape[1])
    index = excess.isfinite().logical_and_(excess <= 0).logical_not_().nonzero().squeeze(1)
    if len(index):  # a count the CPU (this route's device) knows at once; rare in activations
        fixed = _resummed(v if len(index) == len(v) else v.index_select(0, index),
                          raw[:, 2].index_select(0, index), raw[:, 3].index_select(0, index))
        for column, values in zip((0, 1, 5), fixed.unbind(1)):
            raw[:, column].index_copy_(0, index, values)
    return raw


def _resummed(rows: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """[k, 3] float64 (sum, sum of squares, non-finite count) of `rows`, summed about each row's
    first value (`_about_first`: the spread stays exact without a float64 pass or a shifted copy
    of every row). A row holding NaN or infinity gets the sums a plain sum gives (from its `low`
    and `high`: about a first value they say NaN) and its count of non-finite values; finite
    values whose sums overflow even so are summed in float64. A sum of squares past float32's
    range is infinite for float32 values, as in torch's own float32 norm."""
    about, spread, found = _about_first(rows)
    out = torch.stack((about, spread, found), 1)
    bad = found.nonzero().squeeze(1)
    if len(bad):
        out[:, :2].index_copy_(0, bad, _plain_sums(low.index_select(0, bad), high.index_select(0, bad)))
    over = about.isfinite().logical_or_(found > 0).logical_not_().nonzero().squeeze(1)
    if len(over):  # values near float32's limits: a float64 copy of these rows
        wide = rows.index_select(0, over).double()
        out[:, :2].index_copy_(0, over, torch.stack((wide.sum(1), wide.square().sum(1)), 1))
    if rows.dtype != torch.float64:
        out[:, 1].masked_fill_(out[:, 1] > torch.finfo(torch.float32).max, math.inf)
    return out


def _plain_sums(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """[k, 2] (sum, sum of squares) a plain sum gives rows holding NaN or infinity, from their
    bounds: NaN with a NaN or both infinities, else that infinity; squares NaN or infinity."""
    nan, inf = math.nan, math.inf
    has_nan = low.isnan() | high.isnan()
    total = torch.where(has_nan | ((high == inf) & (low == -inf)), nan, torch.where(high == inf, inf, -inf))
    return torch.stack((total, torch.where(has_nan, nan, inf)), 1).double()


def _about_first(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum, sum of squares, non-finite count) of each row of `rows`, float64, the sums taken
    about the row's first value. Non-finite values are counted only in rows whose shifted sum is
    not finite (a NaN or an infinity makes it so): an index found without a pass over every
    element."""
    n = rows.shape[1]
    pivot = rows[:, :1]
    shifted = torch.sub(rows, pivot, out=temporary(rows.shape, rows.dtype, rows.device))
    p = pivot[:, 0].double()
    about = shifted.sum(1).double()
    spread = torch.linalg.vector_norm(shifted, dim=1).double().square()
    suspect = torch.isfinite(about).logical_not_().nonzero().squeeze(1)
    bad = rows.index_select(0, suspect)
    nonfinite = torch.zeros_like(about).index_copy_(
        0, suspect, torch.nan_to_num(bad - bad, nan=1.0).sum(1).double())  # x - x: 0, or NaN
    return about + n * p, spread + 2 * p * about + n * p * p, nonfinite


def norm_columns(v: torch.Tensor) -> torch.Tensor:
    """Per-row (sum of squares, largest magnitude) of a 2-D `v`."""
    wide = torch.float32 if v.dtype in LOW_PRECISION else None
    squares = torch.linalg.vector_norm(v, dim=1, dtype=wide).double().square()
    return torch.stack((squares, v.abs().amax(1).double()), 1)


#: How the rows of one segment combine, per raw statistic: sum, sum of squares, min, max, zeros,
#: non-finite count (`_finish` turns them into `stats.FIELDS`); and per norm column.
RAW_HOW = ("sum", "sum", "min", "max", "sum", "sum")
NORM_HOW = ("sum", "max")


class _Blocks:
    """How segments of given lengths, laid end to end, fall into blocks of `BLOCK` elements:
    the number of blocks viewed, the indices of the loose elements (those of a segment outside
    its whole blocks), and the order of block and loose rows by segment with each segment's
    row count. Built once per (device, lengths)."""

    LIMIT = 512

    def __init__(self):
        self._cache: dict[tuple, tuple] = {}

    def get(self, device: torch.device, lengths: tuple[int, ...]) -> tuple:
        key = (device, lengths)
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) >= self.LIMIT:
                self._cache.clear()
            found = self._cache[key] = self._build(device, lengths)
        return found

    @staticmethod
    def _build(device: torch.device, lengths: tuple[int, ...]) -> tuple:
        blocks = sum(lengths) // BLOCK
        loose: list[range] = []
        order: list[range] = []
        rows: list[int] = []
        start = 0
        used = 0  # loose elements so far
        for n in lengths:
            end = start + n
            first, last = -(-start // BLOCK), end // BLOCK  # whole blocks: [first, last)
            if last > first:
                mine = [range(start, first * BLOCK), range(last * BLOCK, end)]
                order.append(range(first, last))
            else:
                mine = [range(start, end)]
            count = sum(len(r) for r in mine)
            loose += mine
            order.append(range(blocks + used, blocks + used + count))
            rows.append(max(last - first, 0) + count)
            used += count
            start = end
        index = lambda ranges: torch.tensor([i for r in ranges for i in r], dtype=torch.int64)
        return (blocks, to_device(index(loose), device), to_device(index(order), device),
                to_device(torch.tensor(rows, dtype=torch.int64), device))


_blocks = _Blocks()


#: Segments falling into at most this many runs of equal lengths are reduced run by run.
RUNS = 16

def runs_of(lengths: tuple[int, ...]) -> tuple | None:
    """((start, count, length) of each run of equal adjacent lengths), or None past `RUNS` runs."""
    found = runs(lengths)
    return found if len(found) <= RUNS else None


@functools.lru_cache(maxsize=512)
def runs(lengths: tuple[int, ...]) -> tuple:
    """(start, count, length) of each run of equal adjacent lengths, however many."""
    found, start = [], 0
    for n, run in itertools.groupby(lengths):
        count = sum(1 for _ in run)
        found.append((start, count, n))
        start += count * n
    return tuple(found)


def segment_rows(x: torch.Tensor, lengths: tuple[int, ...], columns, how: tuple[str, ...]) -> torch.Tensor:
    """[segments, len(how)] float64: per segment of the flat tensor `x` (segments of `lengths`,
    end to end), the per-row reductions `columns` (`raw_columns`, `norm_columns`) combined as
    `how` says ("sum", "min" or "max" per column).

    Segments that fall into at most `RUNS` runs of one length (one tensor; the weights and
    biases of like layers laid out by size) are reduced run by run, each run one
    [count, length] view along its rows: no index, no segment reduction. Otherwise whole blocks
    are reduced along their rows (vectorized), the loose elements as rows of one; then the rows
    of each segment are combined by segment reductions over a block's worth fewer values (a CPU
    segment reduction is a plain loop, far slower per element than a vectorized reduction).
    Either way the number of launches does not grow with the number of segments."""
    runs = runs_of(lengths)
    if runs is not None:
        parts = [columns(x[start:start + count * n].view(count, n)) for start, count, n in runs]
        return torch.cat(parts) if len(parts) > 1 else parts[0]
    blocks, loose, order, rows = _blocks.get(x.device, lengths)
    parts = (x[:blocks * BLOCK].view(blocks, BLOCK), x.index_select(0, loose).view(-1, 1))  # either may be empty
    per_row = torch.cat([columns(v) for v in parts]).index_select(0, order)
    return torch.stack([torch.segment_reduce(per_row[:, i], h, lengths=rows, unsafe=True)
                        for i, h in enumerate(how)], 1)
