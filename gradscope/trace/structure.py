"""Describe what a module takes and returns: nested tuples, lists, dicts, dataclasses, None.

Only host-side attributes are read (shape, dtype, device, layout), so describing never syncs.
Descriptions are JSON-safe and encode as UTF-8 whatever the value: keys become text (a lone
surrogate is escaped), sizes that are not integers (``torch.jit.trace`` hands out sizes as
tensors) become text, so one odd value never costs the step it is in.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import torch

#: Leaves described per call; the rest is counted, not listed.
MAX_LEAVES = 32


def _text(key) -> str:
    text = str(key)
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _size(n) -> int | str:
    return n if type(n) is int else str(n)


def _children(value) -> Iterator[tuple[str, object]] | None:
    if isinstance(value, dict):
        return ((_text(k), v) for k, v in value.items())
    if isinstance(value, (tuple, list)):
        return ((str(i), v) for i, v in enumerate(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return ((f.name, getattr(value, f.name, None)) for f in dataclasses.fields(value))
    return None


def leaves(value) -> Iterator[tuple[str, object]]:
    """(path, leaf) pairs of a nested value, depth first; the path joins keys with '.'."""
    stack = [("", value)]
    while stack:
        path, item = stack.pop()
        children = None if isinstance(item, torch.Tensor) else _children(item)
        if children is None:
            yield path, item
            continue
        kids = [(f"{path}.{k}" if path else k, v) for k, v in children]
        stack.extend(reversed(kids))


def describe_tensor(t: torch.Tensor) -> dict:
    info = {
        "shape": [_size(n) for n in t.shape],
        "dtype": str(t.dtype).removeprefix("torch."),
        "device": str(t.device),
    }
    if t.layout != torch.strided:
        info["layout"] = str(t.layout).removeprefix("torch.")
    return info


def describe(value) -> tuple[list[dict], list[tuple[str, torch.Tensor]]]:
    """Return (descriptions, tensors): one description per leaf, and the tensor leaves."""
    described: list[dict] = []
    tensors: list[tuple[str, torch.Tensor]] = []
    for n, (path, leaf) in enumerate(leaves(value)):
        if n == MAX_LEAVES:
            described.append({"path": "...", "more": True})
            break
        if isinstance(leaf, torch.Tensor):
            described.append({"path": path, **describe_tensor(leaf)})
            tensors.append((path, leaf))
        else:
            described.append({"path": path, "type": type(leaf).__name__})
    return described, tensors


def _tensor_key(t: torch.Tensor) -> tuple:
    return (type(t), t.shape, t.dtype, t.device, t.layout)


def quick_key(value) -> tuple | None:
    """What `describe` would say of a tensor or a flat tuple/list of tensors, as a key that is
    cheap to build and compare; None for any other value (describe it in full)."""
    if isinstance(value, torch.Tensor):
        return _tensor_key(value)
    if type(value) in (tuple, list) and len(value) <= MAX_LEAVES and all(isinstance(v, torch.Tensor) for v in value):
        return (type(value), *map(_tensor_key, value))
    return None


class CallDescriber:
    """`describe` of a module call's inputs and outputs, reusing the descriptions of the same
    call at an earlier step while its tensors keep their shapes, dtypes and devices (every
    step of a training loop, mostly): one key comparison instead of a walk of each value."""

    def __init__(self):
        self._last: dict[tuple, tuple] = {}

    def describe(self, where: tuple, args, output) -> tuple[list[dict], list[dict], list[tuple[str, torch.Tensor]]]:
        """(inputs, outputs, output tensors with their paths) of the call `where`. The
        descriptions may be shared between steps: read them, never change them."""
        key = (quick_key(args), quick_key(output))
        last = self._last.get(where)
        if last is not None and key[0] is not None and key[1] is not None and last[0] == key:
            tensors = [("", output)] if isinstance(output, torch.Tensor) else [(str(i), t) for i, t in enumerate(output)]
            return last[1], last[2], tensors
        inputs, _ = describe(args)
        outputs, tensors = describe(output)
        self._last[where] = (key, inputs, outputs)
        return inputs, outputs, tensors
