"""A step's statistics, gathered on their devices and read back to the host once.

The training thread adds device tensors (`RowBatch.add`); at the step boundary `freeze`
concatenates them into one flat tensor per device and starts a non-blocking copy to host memory
(pinned, with a CUDA event on GPUs). The recorder thread calls `FrozenBatch.read`, which waits
for the copy by polling its event (not a synchronisation, so a user's
``torch.cuda.set_sync_debug_mode`` never flags gradscope): the training thread never waits for a
device.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch


@functools.lru_cache(maxsize=1 << 16)
def row_key(*parts) -> tuple:
    """The tuple of `parts` (a row's key), the same object from step to step. Keys made anew
    for every row of every step (thousands with thousands of parameters or modules) outlived
    young collections until the recorder had read them, and brought the next full collection
    nearer, which walks every object of the process."""
    return parts


@functools.lru_cache(maxsize=16)
def row_keys(names: tuple[str, ...], *rest) -> tuple[tuple, ...]:
    """`row_key(name, *rest)` of each of `names`, made once per names and rest: every step's
    rows of the parameters have the same keys (made anew, a Python step per parameter and
    step)."""
    return tuple(row_key(name, *rest) for name in names)


@dataclass
class _Block:
    kind: str
    keys: list  # one key per row; the recorder knows what a key means for each kind
    counts: list[int]
    width: int


class FrozenBatch:
    """Rows on their way to the host; `read` waits for them (recorder thread only)."""

    def __init__(self, blocks, parts):
        self._blocks = blocks  # list of (_Block, device key, offset)
        self._parts = parts  # device key -> (host tensor, event or None)

    def read(self) -> list[tuple[str, list, list[int], list[list[float]]]]:
        """(kind, keys, counts, columns) for every block of rows, in the order they were added:
        one list of floats per field, not a tuple per row (thousands of rows a step, alive
        while the step is written and judged: each a tracked object that, surviving a young
        collection, counts toward the full collections, which walk every object of the
        process)."""
        values = {}
        for device, (host, event) in self._parts.items():
            while event is not None and not event.query():
                time.sleep(0.0005)
            # the host copy, complete (its event polled above): a CPU tensor, no device is touched;
            # and this is the recorder thread, never the training thread
            values[device] = host.tolist()
        blocks = []
        for block, device, offset in self._blocks:
            flat, width = values[device], block.width
            end = offset + len(block.keys) * width
            blocks.append((block.kind, block.keys, block.counts,
                           [flat[offset + i:end:width] for i in range(width)]))
        return blocks


class RowBatch:
    """Device rows of one step (training thread)."""

    def __init__(self):
        self._blocks: list[tuple[_Block, list[torch.Tensor]]] = []

    def add(self, kind: str, keys: list, counts: list[int], values: torch.Tensor | list[torch.Tensor]) -> None:
        """Add rows: `values` is a device tensor of shape [len(keys), width] (or [width]), or
        one row tensor per key (of one device; joined with the rest at `freeze`): a block per
        row would be objects per row that live until the recorder has read the step."""
        if isinstance(values, list):
            parts = [v.reshape(-1) for v in values]
            width = parts[0].numel()
        else:
            values = values.reshape(len(keys), -1)
            parts, width = [values.reshape(-1)], values.shape[1]
        self._blocks.append((_Block(kind, keys, counts, width), parts))

    def freeze(self) -> FrozenBatch:
        """Start copying every row to the host, one copy per device."""
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        placed = []
        offsets: dict[torch.device, int] = {}
        for block, parts in self._blocks:
            device = parts[0].device
            joined = by_device.setdefault(device, [])
            placed.append((block, device, offsets.get(device, 0)))
            for flat in parts:
                if not flat.is_floating_point():  # counts: exact in float64, not in float32
                    flat = flat.double()
                joined.append(flat)
                offsets[device] = offsets.get(device, 0) + flat.numel()
        parts = {}
        for device, tensors in by_device.items():
            joined = torch.cat(tensors)  # a copy (promoted to the widest dtype), never an alias
            if joined.dtype != torch.float64:
                joined = joined.double()
            if device.type == "cuda":
                host = torch.empty(joined.shape, dtype=joined.dtype, pin_memory=True)
                host.copy_(joined, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                parts[device] = (host, event)
            elif device.type == "cpu":
                parts[device] = (joined, None)
            else:  # other accelerators: a plain copy, still off the hot path's Python work
                parts[device] = (joined.to("cpu", non_blocking=True), None)
        self._blocks = []
        return FrozenBatch(placed, parts)
