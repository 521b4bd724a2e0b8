"""Fused capture: statistics of many tensors in a constant number of kernel launches.

Per-tensor reductions cost a few small kernels each; with hundreds of parameters that is
thousands of launches per step, which on a GPU costs more than the step itself. Everything here
works on a whole list of tensors at once:

* `norms` — the every-step figures of gradients: the L2 norm and the largest magnitude of each
  tensor, two multi-tensor (``torch._foreach_norm``) launches per (device, dtype) group; on the
  CPU, where a multi-tensor op is a loop over its tensors, small tensors are packed and reduced
  per segment instead. A tensor holds a NaN or an infinity exactly when its largest magnitude is
  not finite, so non-finite detection comes with it (the L2 norm alone can overflow on finite
  values).
* `summaries` — the full statistics of `stats.FIELDS` (and optionally histograms) for statistics
  steps: small tensors are packed into chunks and reduced per segment (``torch.segment_reduce``),
  a few launches per chunk whatever the number of tensors; a tensor larger than a chunk is
  reduced piece by piece, so no full-size float copy of it is ever made.

The CPU is another machine: there a segment reduction is a plain loop over elements and a
multi-tensor op a loop over tensors, while starting an operation costs microseconds, not a
kernel launch. So on the CPU (`BLOCKED`) large packs are reduced by blocks
(`gradscope.trace.blocks`) and a few gradients get their norms from multi-tensor ops without
packing. The numbers are the same either way (tests run both routes); `benchmarks/kernels.py`
counts the GPU's launches.

Everything stays on the tensors' devices (results are small device tensors); nothing reads a
value back to the host. Index tensors that describe a chunk's layout are built once per layout
and cached (on CUDA through pinned memory and a non-blocking copy, so building them never waits
for the device either).

What is summarized of a tensor (`local_values`): a DTensor's local shard (no collective), a
sparse tensor's stored values (coalesced first, so duplicates are summed as torch would), the
magnitude of a complex tensor, integer and bool tensors as float32.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import threading
import weakref
from dataclasses import dataclass

import torch

from .blocks import (LOW_PRECISION, NORM_HOW, RAW_HOW, norm_columns, one_row, raw_columns, runs, runs_of,
                     segment_rows, temporary, to_device)
from .batch import row_key, row_keys
from .shards import local
from .tails import DeadUnits, TailCount, count_dead, count_outside, unit_maxima

#: Elements reduced in one pass over a chunk. The transient extra memory of `summaries` is a
#: small multiple of this (a float32 and a float64 copy of the chunk, masks and bin indices):
#: about 25 bytes per element, 50 MB, whatever the size of the largest tensor.
CHUNK = 1 << 21

#: Device types where a multi-tensor op is a loop over its tensors and a segment reduction a loop
#: over elements: there gradients are packed for their norms and segments are reduced by blocks
#: (`segment_rows`). Elsewhere (CUDA) a multi-tensor op is a fused kernel and a segment reduction
#: a parallel one: the fewest launches.
BLOCKED = {"cpu"}

#: Fewer elements than this are reduced directly even there: blocks take more, smaller operations.
BLOCKS_FROM = 1 << 15

def local_values(t: torch.Tensor) -> torch.Tensor | None:
    """The dense, detached tensor whose elements gradscope summarizes for `t`, or None when `t`
    has no values to summarize (meta, empty, or a layout without stored values)."""
    if type(t) is torch.Tensor and t.layout == torch.strided:  # the common case, checked cheaply
        if t.is_meta or t.numel() == 0:
            return None
        return t.detach() if t.requires_grad else t
    t = local(t)
    t = t.detach()
    if t.layout == torch.sparse_coo:
        t = (t if t.is_coalesced() else t.coalesce())._values()
    elif t.layout in (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc):
        t = t.values()
    elif t.layout != torch.strided:
        return None
    if t.device.type == "meta" or t.numel() == 0:
        return None
    return t


def named_values(params: dict, of=None) -> tuple[list[str], list[torch.Tensor]]:
    """(names, `local_values`) of the live parameters among `params` (name -> weak reference),
    or of `of(parameter)` (its gradient); those without values are left out. Two lists, not a
    pair per parameter (the collector would track each pair). Only gathers tensors, no tensor
    op: the values go to the multi-tensor reductions together. The usual case, every one a
    plain dense tensor with elements that needs no detaching, is told by C-level passes over
    the list, without a Python step per parameter (thousands of them, every step)."""
    names, tensors = _present(list(params), list(map(operator.call, params.values())))
    if of is not None:
        names, tensors = _present(names, list(map(of, tensors)))
    if not _all_plain(tensors):  # sparse, sharded, needing a detach, empty...: as `local_values` takes each
        names, tensors = _present(names, list(map(local_values, tensors)))
    return names, tensors


def _present(names: list, values: list) -> tuple[list, list]:
    """The `names` and `values` whose value is not None (the lists themselves when none is)."""
    if not any(map(_is_none, values)):
        return names, values
    kept = list(map(operator.is_not, values, itertools.repeat(None)))
    return list(itertools.compress(names, kept)), list(itertools.compress(values, kept))


_is_none = functools.partial(operator.is_, None)
_layout, _requires_grad, _is_meta = (operator.attrgetter(a) for a in ("layout", "requires_grad", "is_meta"))


def _all_plain(tensors: list) -> bool:
    """Whether `local_values` of each of `tensors` (none None) is the tensor itself: a plain
    dense tensor (not a subclass or a DTensor, not sparse) that needs no detaching and has
    elements, off the meta device."""
    return (set(map(type, tensors)) == {torch.Tensor} and set(map(_layout, tensors)) == {torch.strided}
            and not any(map(_requires_grad, tensors)) and all(map(torch.Tensor.numel, tensors))
            and not any(map(_is_meta, tensors)))


def _real(t: torch.Tensor) -> torch.Tensor:
    """`t` as a floating tensor: magnitudes of complex values, integers and bools as float32."""
    if t.is_complex():
        return t.abs()
    if not t.is_floating_point():
        return t.float()
    return t


#: On the CPU, fewer tail counts than this in a staging buffer are counted one by one (a pass
#: over the whole buffer costs more than a few small counts).
FEW_TAILS = 16
#: Dtypes a staging buffer holds unchanged (a complex64 tensor as its float32 magnitudes, as
#: `tails.count_outside` compares them): only their tail counts are taken from the buffer; a
#: half-precision tensor is compared with bounds rounded to its own precision.
_STAGED_AS_THEY_ARE = (torch.float32, torch.float64, torch.complex64)


def _outside(x: torch.Tensor, request: TailCount) -> torch.Tensor:
    """Float mask of the elements of `x` outside the open interval of `request` (as
    `tails.count_outside` counts them: NaN is outside, an infinite bound is no bound)."""
    if request.high == math.inf:
        inside = x > request.low
    elif request.low == -math.inf:
        inside = x < request.high
    else:
        inside = (x > request.low) & (x < request.high)
    return inside.logical_not_().to(x.dtype)


# -- every step: norms ------------------------------------------------------------------------
#: On the CPU a multi-tensor op is a loop over its tensors; more than `FEW` tensors of at most
#: `PACK` elements are packed instead (one copy) and reduced per segment, a few ops per chunk
#: whatever their number. A larger tensor is reduced where it lies: an operation there costs a
#: few microseconds, about what copying 8k elements does (the transformer's 51 gradients, 25 of
#: them of 16k-128k elements: 1.66 ms packed up to 64k elements, 1.06-1.11 ms so).
PACK = 1 << 13
FEW = 32


def norms(tensors: list[torch.Tensor], sizes: tuple[int, ...] | None = None) -> list[tuple[list[int], torch.Tensor]]:
    """Row blocks of (L2 norm, largest magnitude) of `tensors`: (positions in `tensors`, device
    tensor [k, 2]), grouped by (device, dtype). `tensors` must hold values (`local_values`);
    `sizes`: their numbers of elements, when the caller has them.

    Two multi-tensor launches and one stack per group (on a GPU: fused kernels); on the CPU
    many small tensors are packed into chunks and reduced per segment, and largest magnitudes
    are not taken as infinity norms (a scalar loop there). Half-precision tensors are reduced
    in float32, so a norm above 65504 is not reported as infinite; like torch's own norm, a
    float32 norm past float32's range is infinite (its largest magnitude is not)."""
    out = []
    all_sizes = sizes if sizes is not None else tuple(map(torch.Tensor.numel, tensors))
    for (device, dtype), positions in _groups(tensors):
        xs = tensors if positions is None else [tensors[i] for i in positions]
        sizes = all_sizes if positions is None else tuple(all_sizes[i] for i in positions)
        positions = range(len(tensors)) if positions is None else positions
        if not (dtype.is_floating_point or dtype.is_complex):
            xs = [_real(x) for x in xs]
        extra = {"dtype": torch.float32} if dtype in LOW_PRECISION else {}
        if device.type not in BLOCKED:
            out.append((list(positions), rows_of(torch._foreach_norm(xs, 2, **extra),
                                                 torch._foreach_norm(xs, math.inf, **extra))))
            continue
        if len(xs) > FEW and max(sizes) <= PACK:  # the usual case with many tensors: all packed
            out += _packed_norms(positions, xs, sizes)
            continue
        small = [j for j, n in enumerate(sizes) if n <= PACK]
        large = [j for j, n in enumerate(sizes) if n > PACK]
        if len(small) > FEW:
            out += _packed_norms([positions[j] for j in small], [xs[j] for j in small],
                                 tuple(sizes[j] for j in small))
        elif small:
            few = [xs[j] for j in small]
            out.append(([positions[j] for j in small],
                        rows_of(torch._foreach_norm(few, 2, **extra), _largest_of_few(few))))
        if large:
            big = [xs[j] for j in large]
            two = torch.stack(torch._foreach_norm(big, 2, **extra))
            out.append(([positions[j] for j in large], torch.stack((two, _largest(big).to(two.dtype)), 1)))
    return out


_device_of, _dtype_of = operator.attrgetter("device"), operator.attrgetter("dtype")


def _groups(tensors: list[torch.Tensor]) -> list[tuple[tuple[torch.device, torch.dtype], list[int] | None]]:
    """((device, dtype), positions) of the groups of `tensors`; positions None: all of them
    (the usual case, told without a Python step per tensor)."""
    devices, dtypes = set(map(_device_of, tensors)), set(map(_dtype_of, tensors))
    if len(devices) == 1 and len(dtypes) == 1:
        return [((devices.pop(), dtypes.pop()), None)]
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return list(groups.items())


def _largest_of_few(xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The largest magnitude of each of a few small tensors (copies of their magnitudes)."""
    if not hasattr(torch, "_foreach_max"):  # torch < 2.4
        return list(torch._foreach_norm(xs, math.inf))
    return list(torch._foreach_max(torch._foreach_abs(xs)))


def _largest(xs: list[torch.Tensor]) -> torch.Tensor:
    """The largest magnitude of each of `xs` (one dtype) without a full-size copy (NaN for one
    holding a NaN): one `aminmax` each, their magnitudes compared together."""
    if xs[0].is_complex():
        return torch.stack([torch.linalg.vector_norm(x, math.inf) for x in xs])
    lows, highs = zip(*map(torch.aminmax, xs))
    return torch.maximum(torch.stack(lows).abs_(), torch.stack(highs).abs_())


def _packed_norms(positions, xs: list[torch.Tensor], sizes: tuple[int, ...]) -> list[tuple[list[int], torch.Tensor]]:
    out = []
    for take, layout, plan in _chunks(sizes, CHUNK):
        chunk, where = take(xs), take(positions)
        rows = norm_rows(pack([_real(x) for x in chunk] if chunk[0].is_complex() else chunk, plan=plan), layout)
        squares, largest = rows.unbind(1)
        if chunk[0].dtype != torch.float64:
            squares = _float32_range(squares)
        out.append((list(where), torch.stack((squares.sqrt(), largest), 1)))
    return out


@functools.lru_cache(maxsize=64)
def _chunks(sizes: tuple[int, ...], chunk: int) -> tuple[tuple[operator.itemgetter, tuple[int, ...], tuple], ...]:
    """How tensors of `sizes` are packed: chunks of at most `chunk` elements (a larger tensor
    alone), in the order of their sizes (equal sizes side by side: runs, `segment_rows`), each
    (a getter of its tensors from the list, their sizes, their `pack_plan`)."""
    order = by_length(sizes)
    out, start = [], 0
    while start < len(order):
        end, size = start, 0
        while end < len(order) and (end == start or size + sizes[order[end]] <= chunk):
            size += sizes[order[end]]
            end += 1
        members = order[start:end]
        layout = tuple(sizes[i] for i in members)
        take = operator.itemgetter(*members) if len(members) > 1 else lambda xs, i=members[0]: (xs[i],)
        out.append((take, layout, pack_plan(layout)))
        start = end
    return tuple(out)


#: On the CPU a `torch.cat` of tensors of different sizes costs about a microsecond a tensor, one
#: of tensors of one shape (or a `torch.stack`) a seventh of that (2,500 gradients of 16×16 and 16
#: elements: 2.9 ms flattened together, 0.35 ms as two stacks): runs of at least this many
#: tensors of one size are packed one `torch.stack` a run.
RUN = 8


def pack(xs: list[torch.Tensor], out: torch.Tensor | None = None, plan: tuple | None = None) -> torch.Tensor:
    """The elements of `xs` (one device), as they are, end to end in one flat tensor: into `out`
    when given, else a new one of the widest of their dtypes (one tensor alone: itself,
    flattened). On the CPU (`BLOCKED`) each run of `RUN` or more tensors of one size is one
    `torch.stack`, as `plan` (`pack_plan` of their sizes) lays them out; elsewhere all are one
    `torch.cat` (one copy kernel for many tensors). A tensor's elements may come in another
    order than its own (a permuted one in its memory order): statistics do not depend on it."""
    if out is None and len(xs) == 1:
        return _in_memory_order(xs[0])
    if xs[0].device.type not in BLOCKED:
        flat = [_in_memory_order(x) for x in xs]
        return torch.cat(flat) if out is None else torch.cat(flat, out=out)
    plan = plan or pack_plan([x.numel() for x in xs])
    if out is None:
        _, _, offset, n = plan[-1]
        out = torch.empty(offset + n, dtype=functools.reduce(torch.promote_types, {x.dtype for x in xs}),
                          device=xs[0].device)
    for first, end, offset, n in plan:
        part = out[offset:offset + n]
        if end - first >= RUN:
            try:
                torch.stack(xs[first:end], out=part.view(end - first, *xs[first].shape))
                continue
            except RuntimeError:  # one size, not one shape (16×16 and 256): flattened instead
                pass
        torch.cat([_in_memory_order(x) for x in xs[first:end]], out=part)
    return out


def pack_plan(sizes: list[int]) -> tuple[tuple[int, int, int, int], ...]:
    """How `pack` lays out tensors of `sizes` (elements): pieces (first, end, offset, elements),
    each a run of `RUN` or more tensors of one size or the tensors between such runs. Cached per
    list of sizes."""
    return _pack_plan(tuple(sizes), RUN)


@functools.lru_cache(maxsize=256)
def _pack_plan(sizes: tuple[int, ...], run: int) -> tuple[tuple[int, int, int, int], ...]:
    pieces: list[tuple[int, int, int, int]] = []
    loose = None  # (first, offset) of the tensors gathered since the last run
    first = 0
    for offset, count, n in runs(sizes):
        if count >= run:
            if loose is not None:
                pieces.append((loose[0], first, loose[1], offset - loose[1]))
                loose = None
            pieces.append((first, first + count, offset, count * n))
        elif loose is None:
            loose = (first, offset)
        first += count
    if loose is not None:
        pieces.append((loose[0], len(sizes), loose[1], sum(sizes) - loose[1]))
    return tuple(pieces)


def by_length(sizes: list[int]) -> tuple[int, ...]:
    """Positions of `sizes` in the order of their sizes (stable), cached per list of sizes."""
    return _by_length(tuple(sizes))


@functools.lru_cache(maxsize=512)
def _by_length(sizes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sorted(range(len(sizes)), key=sizes.__getitem__))


def _float32_range(squares: torch.Tensor) -> torch.Tensor:
    """Sums of squares past float32's range made infinite, as in torch's own norm of float32
    values (which reduces in float32); the others keep their float64 precision."""
    return squares.masked_fill_(squares > torch.finfo(torch.float32).max, math.inf)


def rows_of(*columns: list[torch.Tensor]) -> torch.Tensor:
    """A [k, len(columns)] tensor from columns of k 0-d tensors, in one stack (row-major, so
    it travels without a copy)."""
    return torch.stack([value for row in zip(*columns) for value in row]).reshape(-1, len(columns))


# -- statistics steps: full summaries -----------------------------------------------------------
class _Layouts:
    """Device tensors describing a chunk's segments, built once per (device, lengths)."""

    LIMIT = 512

    def __init__(self):
        self._cache: dict[tuple, tuple] = {}

    def get(self, device: torch.device, lengths: tuple[int, ...], bins: int) -> tuple:
        key = (device, lengths, bins)
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) >= self.LIMIT:
                self._cache.clear()
            host = (
                torch.tensor(lengths, dtype=torch.int64),
                torch.tensor(lengths, dtype=torch.float64),
                torch.arange(len(lengths), dtype=torch.int64) * bins,
            )
            found = tuple(to_device(h, device) for h in host) + (host,)
            self._cache[key] = found
        return found[:3]


_layouts = _Layouts()


def by_blocks(x: torch.Tensor) -> bool:
    """Whether segments of the flat `x` are reduced by blocks (`segment_rows`)."""
    return x.device.type in BLOCKED and x.numel() >= BLOCKS_FROM


def raw_rows(x: torch.Tensor, lengths: tuple[int, ...]) -> torch.Tensor:
    """Raw per-segment statistics of a flat floating `x` (segments of `lengths`): rows of sum,
    sum of squares, min, max, zeros, non-finite count; float64, [segments, 6]."""
    if not by_blocks(x):
        return _direct_raw_rows(x, lengths)
    if len(lengths) == 1:
        return one_row(x)
    raw = segment_rows(x, lengths, raw_columns, RAW_HOW)  # rows holding NaN or infinity: plain sums
    if x.dtype != torch.float64:  # sums of squares of blocks' rows, past float32's range once combined
        _float32_range(raw[:, 1])
    return raw


def _direct_raw_rows(x: torch.Tensor, lengths: tuple[int, ...]) -> torch.Tensor:
    wide = x.double()
    segments, counts, _ = _layouts.get(x.device, lengths, 0)
    reduce = lambda values, how: torch.segment_reduce(values, how, lengths=segments, unsafe=True)
    squares = reduce(wide * wide, "sum")
    return torch.stack((
        reduce(wide, "sum"), _float32_range(squares) if x.dtype != torch.float64 else squares,
        reduce(x, "min").double(), reduce(x, "max").double(), reduce((x == 0).double(), "sum"),
        counts - reduce(torch.isfinite(x).double(), "sum"),
    ), 1)


def norm_rows(x: torch.Tensor, lengths: tuple[int, ...]) -> torch.Tensor:
    """[segments, 2] float64: (sum of squares, largest magnitude) of each segment of a flat `x`."""
    if by_blocks(x):
        return segment_rows(x, lengths, norm_columns, NORM_HOW)
    wide = x.double()
    segments = _layouts.get(x.device, lengths, 0)[0]
    reduce = lambda values, how: torch.segment_reduce(values, how, lengths=segments, unsafe=True)
    return torch.stack((reduce(wide * wide, "sum"), reduce(wide.abs(), "max")), 1)


def segment_sums(x: torch.Tensor, lengths: tuple[int, ...]) -> torch.Tensor:
    """[segments] float64: the sum of each segment (of `lengths`, end to end) of a flat `x`."""
    if by_blocks(x):
        return segment_rows(x, lengths, _row_sums, ("sum",))[:, 0]
    segments = _layouts.get(x.device, lengths, 0)[0]
    return torch.segment_reduce(x.double(), "sum", lengths=segments, unsafe=True)


def _row_sums(v: torch.Tensor) -> torch.Tensor:
    return v.sum(1, dtype=torch.float64, keepdim=True)


def column_norms(columns: list[torch.Tensor], lengths: tuple[int, ...]) -> torch.Tensor:
    """[segments, len(columns)] float64: the L2 norm of each segment (of `lengths`, end to end)
    of each of the equally long flat `columns` (of magnitudes, for complex values)."""
    columns = [_real(c) for c in columns]
    if by_blocks(columns[0]):
        squares = segment_rows(torch.cat(columns), lengths * len(columns), norm_columns, NORM_HOW)[:, 0]
        return squares.reshape(len(columns), -1).T.sqrt()
    wide = torch.stack(columns, 1).double()
    segments = _layouts.get(wide.device, lengths, 0)[0]
    return torch.segment_reduce(wide * wide, "sum", lengths=segments, axis=0, unsafe=True).sqrt()


def _finish(raw: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """`stats.FIELDS` rows from raw rows: mean, population std, min, max, norm, zeros, non-finite."""
    total, squares, low, high, zeros, nonfinite = raw.unbind(1)
    mean = total / counts
    std = (squares / counts - mean * mean).clamp(min=0).sqrt()
    return torch.stack((mean, std, low, high, squares.sqrt(), zeros, nonfinite), 1)


def _bin_index(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin of each element given its tensor's range (`low`/`high` broadcast to `x`); the same
    arithmetic as `stats.histogram`, so the counts agree exactly. Into the thread's temporaries
    (`temporary`): a float32 and an int32 tensor the size of `x`, reused from call to call."""
    width = (high - low).clamp(min=torch.finfo(torch.float32).tiny) / bins
    scaled = torch.sub(x, low, out=temporary(x.shape, torch.float32, x.device))
    scaled.div_(width).nan_to_num_(0.0).floor_().clamp_(0, bins - 1)
    return temporary(x.shape, torch.int32, x.device).copy_(scaled)


@dataclass
class Summary:
    """Statistics of some of the tensors given to `summaries`, all on one device."""

    positions: list[int]  # into the list given to `summaries`
    rows: torch.Tensor  # float64 [k, len(stats.FIELDS)]
    hists: torch.Tensor | None  # float64 [k, 2 + bins]: low, high, bin counts (or None)


def summaries(tensors: list[torch.Tensor], *, bins: int = 0, chunk: int = CHUNK) -> list[Summary]:
    """Full statistics (`stats.FIELDS`) of every tensor, and with `bins` > 0 a histogram of each
    (low, high, counts of `bins` equal-width bins, as `stats.histogram`). `tensors` must hold
    values (`local_values`). One `Summary` per device."""
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    return [_device_summaries(tensors, positions, device, bins, chunk)
            for device, positions in by_device.items()]


def _device_summaries(tensors, positions, device, bins, chunk) -> Summary:
    if device.type in BLOCKED:  # equal lengths side by side: packs fall into runs (`segment_rows`)
        positions = [positions[i] for i in by_length([tensors[i].numel() for i in positions])]
    order: list[int] = []  # positions in the order their rows are produced
    raws: list[torch.Tensor] = []
    counts: list[torch.Tensor] = []
    hists: list[torch.Tensor] = []
    members: list[int] = []
    size = 0

    def flush():
        nonlocal members, size
        if not members:
            return
        layout = tuple(tensors[i].numel() for i in members)
        x = pack([_real(tensors[i]) for i in members], plan=pack_plan(layout))
        lengths, sizes, offsets = _layouts.get(device, layout, bins)
        raw = raw_rows(x, layout)
        raws.append(raw)
        counts.append(sizes)
        order.extend(members)
        if bins:
            x32 = x.float()
            low, high = raw[:, 2].float(), raw[:, 3].float()
            found = torch.zeros(len(members) * bins, dtype=torch.float32, device=device)
            one = torch.ones((), device=device)
            runs = runs_of(layout) if by_blocks(x) else None  # as `segment_rows` reduced them
            if runs is None:  # each element's bounds and offset spread from its segment's
                spread = lambda v: torch.repeat_interleave(v, lengths, output_size=x32.numel())
                index = _bin_index(x32, spread(low), spread(high), bins).add_(spread(offsets))
                found.index_add_(0, index, one.expand(x32.numel()))
            else:  # broadcast over each run's [count, length] view
                row = 0
                for start, count, n in runs:
                    rows = slice(row, row + count)
                    index = _bin_index(x32[start:start + count * n].view(count, n), low[rows, None], high[rows, None], bins)
                    found.index_add_(0, index.add_(offsets[rows, None]).view(-1), one.expand(count * n))
                    row += count
            hists.append(torch.cat((low.double()[:, None], high.double()[:, None],
                                    found.double().reshape(len(members), bins)), 1))
        members, size = [], 0

    for i in positions:
        n = tensors[i].numel()
        if n > chunk:
            raw, hist = _large(tensors[i], device, bins, chunk)
            raws.append(raw)
            counts.append(_layouts.get(device, (n,), 0)[1])
            order.append(i)
            if bins:
                hists.append(hist)
            continue
        if size + n > chunk:
            flush()
        members.append(i)
        size += n
    flush()
    join = lambda parts: torch.cat(parts) if len(parts) > 1 else parts[0]
    hist = join(hists) if bins else None
    return Summary(order, _finish(join(raws), join(counts)), hist)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """`t` as one flat floating tensor (`_real`, `_in_memory_order`)."""
    return _in_memory_order(_real(t))


def _in_memory_order(t: torch.Tensor) -> torch.Tensor:
    """`t` flattened. Statistics do not depend on the order of elements, so a permuted tensor (a
    transposed activation) is flattened in memory order, without a copy."""
    if not t.is_contiguous() and t.dim() > 1:
        order = sorted(range(t.dim()), key=lambda d: t.stride(d), reverse=True)
        permuted = t.permute(order)
        if permuted.is_contiguous():
            return permuted.view(-1)
    return t.reshape(-1)


def _large(t: torch.Tensor, device, bins: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raw row [1, 6] (and histogram [1, 2 + bins]) of a tensor larger than a chunk, reduced
    piece by piece with plain reductions (no float copy; the non-finite mask of a piece is a
    thirty-second of the tensor at most), binned chunk by chunk."""
    flat = _flat(t)
    n = flat.numel()
    step = max(chunk, -(-n // 32))
    parts = []
    for start in range(0, n, step):
        piece = flat[start:start + step]
        if by_blocks(piece):
            parts.append(raw_rows(piece, (piece.numel(),))[0])
            continue
        low, high = torch.aminmax(piece)
        parts.append(torch.stack((
            piece.sum(dtype=torch.float64),
            torch.linalg.vector_norm(piece, dtype=torch.float32).double().square(),
            low.double(), high.double(),
            (piece.numel() - torch.count_nonzero(piece)).double(),
            (piece.numel() - torch.count_nonzero(torch.isfinite(piece))).double(),
        )))
    total, squares, low, high, zeros, nonfinite = (torch.stack(parts) if len(parts) > 1 else parts[0][None]).unbind(1)
    raw = torch.stack((total.sum(), squares.sum(), low.amin(), high.amax(), zeros.sum(), nonfinite.sum()))
    raw = raw.reshape(1, 6)
    if not bins:
        return raw, None
    low, high = raw[0, 2].float(), raw[0, 3].float()
    found = torch.zeros(bins, dtype=torch.float32, device=device)
    one = torch.ones((), device=device)
    for start in range(0, n, chunk):
        x32 = flat[start:start + chunk].float()
        found.index_add_(0, _bin_index(x32, low, high, bins), one.expand(x32.numel()))
    hist = torch.cat((low.double().reshape(1), high.double().reshape(1), found.double()))
    return raw, hist.reshape(1, -1)


# -- parameters: the rows a step records --------------------------------------------------------
def gradient_rows(names: list[str], tensors: list[torch.Tensor], full: bool) -> list[tuple[str, list, list[int], torch.Tensor]]:
    """Row blocks (kind, keys, counts, device values) for parameter gradients: `tensors` the
    `local_values` of the gradients of the parameters `names`. Every step: ``grad-norm`` rows of
    (L2 norm, largest magnitude); with `full` statistics: ``grad`` rows of `stats.FIELDS` and
    ``hist`` rows of histograms (`stats.HIST_BINS` bins)."""
    from .stats import HIST_BINS

    keys, sizes = _keys_and_sizes(names, tensors)
    if not full:
        return [("grad-norm", _picked(keys, positions), _picked(sizes, positions), rows)
                for positions, rows in norms(tensors, sizes)]
    out = []
    for result in summaries(tensors, bins=HIST_BINS):
        counts = _picked(sizes, result.positions)
        out.append(("grad", _picked(keys, result.positions), counts, result.rows))
        out.append(("hist", _picked(names, result.positions), counts, result.hists))
    return out


def _keys_and_sizes(names: list[str], tensors: list[torch.Tensor]) -> tuple[tuple, tuple[int, ...]]:
    """The row keys of parameters `names` (the same tuples from step to step) and the numbers of
    elements of their `tensors`, without a Python step per parameter."""
    return row_keys(tuple(names), 0, ""), tuple(map(torch.Tensor.numel, tensors))


def _picked(values, positions) -> list:
    """`values` at `positions`, taken in one C-level call."""
    if len(positions) < 2:
        return [values[i] for i in positions]
    return list(operator.itemgetter(*positions)(values))


def weight_rows(names: list[str], tensors: list[torch.Tensor]) -> list[tuple[str, list, list[int], torch.Tensor]]:
    """``weight`` row blocks of `stats.FIELDS` for parameters `names` whose `local_values` are
    `tensors`."""
    keys, sizes = _keys_and_sizes(names, tensors)
    return [("weight", _picked(keys, result.positions), _picked(sizes, result.positions), result.rows)
            for result in summaries(tensors)]


# -- statistics steps: module tensors as they come --------------------------------------------
class _Taken(weakref.ref):
    """A module tensor taken by `Staging` (a weak reference to it, with the kind and key of its
    row, `pair`), and where its statistics row is once summarized. One slotted object per
    tensor: a statistics step takes thousands of them, and what outlives a young collection
    brings the next full collection nearer."""

    __slots__ = ("pair", "version", "n", "rows", "index", "slot", "segment", "offset")

    def __new__(cls, t: torch.Tensor, pair: tuple, n: int):
        return super().__new__(cls, t)

    def __init__(self, t: torch.Tensor, pair: tuple, n: int):
        super().__init__(t)
        self.pair, self.version, self.n = pair, t._version, n
        self.rows: torch.Tensor | None = None  # its statistics, row `index`, once summarized
        self.index = 0
        self.slot: tuple | None = None  # the staging buffer holding its values, not yet summarized
        self.segment = self.offset = 0  # its place there


class Staging:
    """Statistics of module tensors (inputs, activations, output gradients) taken as they come,
    summarized together.

    A tensor may be changed in place right after its hook saw it (an in-place ReLU after a
    batch-norm), so its values are taken at once: a small tensor is copied into a chunk-sized
    staging buffer of its device (one copy kernel), a tensor of a quarter of a chunk or more is
    reduced on the spot from its own memory (`raw_rows` as one segment; piece by piece when
    larger than a chunk): a buffer would hold few of them, and their copy was a pass over memory
    as costly as a reduction; their rows are finished together at `drain`. A full buffer, and
    every buffer at `drain`, is summarized with one pass of segment reductions. Rows go to the
    `RowBatch` given to `drain` (and to `add`, for a full buffer): a buffer's rows in one block
    whose keys carry each row's kind. Plugins' tail counts of a tensor in a buffer are counted
    there when it is summarized.
    Threads that train under one session share the open step, so adding and draining hold a
    lock.

    A tensor seen again unchanged (the same object at the same version: a container's output is
    its last child's, and so is the gradient of that output) is not taken again: its row is the
    earlier one's (8 of the 63 module tensors of a statistics step of the benchmarks' ResNet-style
    CNN, 11 % of their elements; 12 of 81 in the transformer, 8 %). Identity, not the address: a
    gradient often takes the memory of an activation freed before it.
    """

    def __init__(self, chunk: int = CHUNK):
        self.chunk = chunk
        self._lock = threading.Lock()
        self._buffers: dict[tuple, torch.Tensor] = {}  # (device, dtype) -> staging buffer, reused
        self._staged: dict[tuple, list[_Taken]] = {}  # the tensors in each buffer
        self._seen: dict[int, _Taken] = {}  # id of a tensor taken -> what was taken
        self._spot: list[tuple[_Taken, torch.Tensor]] = []  # (tensor, raw row)
        self._repeats: list[tuple[tuple, _Taken]] = []  # ((kind, key), the tensor it repeats)
        self._used: dict[tuple, int] = {}
        self._counts: list[tuple[object, int, torch.Tensor]] = []  # tail counts: key, total, 0-d
        self._tails: dict[tuple, list[tuple]] = {}  # (key, segment, offset, n, request) per buffer, for its flush
        self._maxima: list[tuple[object, int, torch.Tensor]] = []  # dead units: key, units, maxima

    def add(self, batch, kind: str, key, t: torch.Tensor) -> None:
        """Take `t`'s values now (its statistics reach `batch` by the next `drain` at the latest)."""
        with self._lock:
            self._add(batch, kind, key, t)

    def _add(self, batch, kind: str, key, t: torch.Tensor) -> None:
        seen = self._seen.get(id(t))
        if seen is not None and seen() is t and seen.version == t._version:
            self._repeats.append((row_key(kind, key), seen))
            return
        values = local_values(t)
        if values is None:
            return
        n = values.numel()
        taken = self._seen[id(t)] = _Taken(t, row_key(kind, key), n)
        if n >= self.chunk // 4:
            self._spot.append((taken, _raw_row(values, self.chunk)))
            return
        dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
        slot = row_key(values.device, dtype)  # one key object per buffer
        used = self._used.get(slot, 0)
        if used + n > self.chunk:
            self._flush(batch, slot)
            used = 0
        buffer = self._buffers.get(slot)
        if buffer is None:
            buffer = self._buffers[slot] = torch.empty(self.chunk, dtype=dtype, device=values.device)
        buffer[used:used + n].view_as(values).copy_(_real(values))  # view_as: no shape object (≈2 µs)
        self._used[slot] = used + n
        staged = self._staged.setdefault(slot, [])
        taken.slot, taken.segment, taken.offset = slot, len(staged), used
        staged.append(taken)

    def add_tail(self, key, t: torch.Tensor, request) -> None:
        """Take a plugin's tail count or dead units (`tails`) of `t` now (a count of values
        already in a staging buffer is taken there when the buffer is summarized); rows reach the
        batch at the latest at `drain`."""
        with self._lock:
            self._add_tail(key, t, request)

    def _add_tail(self, key, t: torch.Tensor, request) -> None:
        values = local_values(t)
        if values is None:
            return
        if isinstance(request, DeadUnits):
            maxima = unit_maxima(values, request)
            if maxima is not None:
                self._maxima.append((key, maxima.numel(), maxima))
            return
        taken = self._seen.get(id(t))
        if (taken is not None and taken.slot is not None and taken() is t and taken.version == t._version
                and values.dtype in _STAGED_AS_THEY_ARE):
            # its values sit in a staging buffer as they are: counted there with the others at the flush
            self._tails.setdefault(taken.slot, []).append((key, taken.segment, taken.offset, taken.n, request))
            return
        counted = count_outside(values, request)
        if counted is not None:
            self._counts.append((key, values.numel(), counted))

    def drain(self, batch) -> None:
        """Summarize everything staged into `batch`."""
        with self._lock:
            self._drain(batch)

    def _drain(self, batch) -> None:
        for slot in list(self._staged):
            self._flush(batch, slot)
        by_device: dict[torch.device, list] = {}
        for taken, raw in self._spot:
            by_device.setdefault(raw.device, []).append((taken, raw))
        for device, entries in by_device.items():
            layout = tuple(taken.n for taken, _ in entries)
            raw = torch.cat([raw for _, raw in entries])
            _emit(batch, [taken for taken, _ in entries], _finish(raw, _layouts.get(device, layout, 0)[1]))
        self._spot = []
        by_device = {}
        for entry in self._repeats:  # one block per device, its rows views of the rows repeated
            by_device.setdefault(entry[1].rows.device, []).append(entry)
        for entries in by_device.values():
            batch.add("stats", [pair for pair, _ in entries], [taken.n for _, taken in entries],
                      [taken.rows[taken.index] for _, taken in entries])
        self._repeats, self._seen = [], {}
        if self._counts:
            keys, totals, counted = zip(*self._counts)
            batch.add("tail", list(keys), list(totals), torch.stack(counted))
        by_device = {}
        for entry in self._maxima:
            by_device.setdefault(entry[2].device, []).append(entry)
        for device, entries in by_device.items():
            keys, units, maxima = zip(*entries)
            if len(set(units)) == 1 and len(entries) > 1:  # one shape: no segments needed
                dead = (~(torch.stack(maxima) > 0)).sum(1)
            elif len(entries) == 1:
                dead = count_dead(maxima[0]).reshape(1)
            else:
                lengths, _, _ = _layouts.get(device, units, 0)
                dead = torch.segment_reduce((~(torch.cat(maxima) > 0)).double(), "sum",
                                            lengths=lengths, unsafe=True)
            batch.add("tail", list(keys), list(units), dead)
        self._counts, self._maxima = [], []

    def _flush(self, batch, slot) -> None:
        staged = self._staged.pop(slot, [])
        used = self._used.pop(slot, 0)
        if not staged:
            return
        tails = self._tails.pop(slot, [])
        for taken in staged:  # the buffer is free again, whatever happens below
            taken.slot = None
        device = slot[0]
        layout = tuple(taken.n for taken in staged)
        counts = _layouts.get(device, layout, 0)[1]
        x = self._buffers[slot][:used]
        _emit(batch, staged, _finish(raw_rows(x, layout), counts))
        for request in {entry[4]: None for entry in tails}:  # each request once, in order
            mine = [entry for entry in tails if entry[4] == request]
            if len(mine) >= FEW_TAILS or not by_blocks(x):  # one pass over the buffer for them all
                segments = to_device(torch.tensor([segment for _, segment, _, _, _ in mine]), device)
                batch.add("tail", [key for key, *_ in mine], [n for _, _, _, n, _ in mine],
                          segment_sums(_outside(x, request), layout).index_select(0, segments))
            else:
                for key, _, offset, n, _ in mine:
                    self._counts.append((key, n, count_outside(x[offset:offset + n], request)))


def _emit(batch, entries: list[_Taken], rows: torch.Tensor) -> None:
    """Give `batch` the statistics `rows` of the taken tensors `entries` as one ``stats`` block
    whose keys carry each row's kind (a module's input, its activation and the next module's
    input alternate: a block per run of one kind was a block, a view and their Python objects
    per tensor), and remember each tensor's row."""
    for i, taken in enumerate(entries):
        taken.rows, taken.index = rows, i
    batch.add("stats", [taken.pair for taken in entries], [taken.n for taken in entries], rows)


def _raw_row(t: torch.Tensor, chunk: int) -> torch.Tensor:
    """Raw row [1, 6] of one tensor (`raw_rows`), piece by piece when larger than `chunk`."""
    n = t.numel()
    if n > chunk:
        return _large(t, t.device, 0, chunk)[0]
    return raw_rows(_flat(t), (n,))
