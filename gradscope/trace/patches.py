"""The places torch offers no hook, wrapped while at least one session is attached.

- ``torch.autograd.backward`` (``Tensor.backward`` calls it): which tensor backward ran on (the
  loss), the graph before backward frees it, and parameter gradients right after.
- ``torch.optim.Optimizer.zero_grad`` and ``torch.nn.Module.zero_grad``: whether and how
  gradients were cleared during a step.
- ``torch.amp.GradScaler.step``: whether the scaler let the optimizer step or skipped the step
  because the scaled gradients overflowed (mixed precision does that by design).

Only user-level backward calls are events: a backward started while another runs (reentrant
activation checkpointing recomputes a segment and calls backward on it from inside the outer
backward) is part of the outer one and is not delivered. A backward goes only to the listeners
that train in the calling thread (``listener.owns_thread()``): another thread's training is not
theirs, and reading gradients that another thread's backward is writing is not safe.

The wrappers call the original first or last and never change arguments or results. They are
installed by the first session and restored by the last one to leave; each listener's failure
is its own (listeners guard themselves).
"""

from __future__ import annotations

import functools
import threading

import torch

_lock = threading.Lock()
_listeners: list = []
_originals: dict = {}


def in_backward() -> bool:
    """Whether the calling code runs inside a backward pass (an autograd node's backward)."""
    current = getattr(torch._C, "_current_graph_task_id", None)
    return current is not None and current() != -1


def _backward(original):
    @functools.wraps(original)
    def backward(tensors, *args, **kwargs):
        if not _listeners or in_backward():
            return original(tensors, *args, **kwargs)
        listeners = [listener for listener in list(_listeners) if listener.owns_thread()]
        for listener in listeners:
            listener.before_backward(tensors)
        result = original(tensors, *args, **kwargs)
        for listener in listeners:
            listener.after_backward()
        return result

    return backward


def _zero_grad(original):
    @functools.wraps(original)
    def zero_grad(self, set_to_none: bool = True, *args, **kwargs):
        result = original(self, set_to_none, *args, **kwargs)
        for listener in list(_listeners):
            listener.on_zero_grad(self, set_to_none)
        return result

    return zero_grad


def _scaler_step(original):
    @functools.wraps(original)
    def step(self, optimizer, *args, **kwargs):
        listeners = list(_listeners)
        for listener in listeners:
            listener.before_scaler_step(optimizer)
        result = original(self, optimizer, *args, **kwargs)
        for listener in listeners:
            listener.after_scaler_step(optimizer)
        return result

    return step


_TARGETS = (
    (torch.autograd, "backward", _backward),
    (torch.optim.Optimizer, "zero_grad", _zero_grad),
    (torch.nn.Module, "zero_grad", _zero_grad),
    (torch.amp.GradScaler, "step", _scaler_step),
)


def add_listener(listener) -> None:
    """Start delivering events to `listener` (installs the wrappers for the first one)."""
    with _lock:
        if not _listeners:
            for owner, attr, wrap in _TARGETS:
                original = owner.__dict__[attr]
                _originals[(owner, attr)] = original
                setattr(owner, attr, wrap(original))
        _listeners.append(listener)


def remove_listener(listener) -> None:
    """Stop delivering to `listener`; the last one out restores torch's own functions."""
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)
        if not _listeners and _originals:
            for (owner, attr), original in _originals.items():
                setattr(owner, attr, original)
            _originals.clear()
