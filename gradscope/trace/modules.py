"""Module hooks: what each watched module takes and returns in a step.

A forward pre-hook and an always-called forward hook on every watched module describe each
call (shapes, dtypes, devices, training mode) up to `max_calls` calls per module per step,
mark the call's tensors in the autograd graph (when the step walks it) and, on full-statistics
steps, summarize inputs of root calls, activations, requested tail counts and, through tensor
hooks, output gradients. A root forward (depth 0) is also where a step may end.
"""

from __future__ import annotations

import functools

import torch

from .autograd import IN_MARK, OUT_MARK
from .guard import guarded
from .structure import describe, leaves


def _mark(tensor: torch.Tensor, key: str, name) -> None:
    fn = tensor.grad_fn
    if fn is not None:
        fn.metadata.setdefault(key, []).append(name)


class ModuleHooks:
    """Hooks of one session's modules. `session` provides the open step (``session.open``),
    the step boundary (``session.boundary``), the recorder's alarm and failure reporting."""

    def __init__(self, session, *, max_calls: int, tails: dict[str, list]):
        self._session = session
        self._failed = session._failed
        self._max_calls = max_calls
        self._tails = tails  # module type name -> the plugins' TailCount requests
        self._handles: list = []
        self.depth = 0

    def attach(self, module: torch.nn.Module, name: str) -> None:
        self._handles.append(
            module.register_forward_pre_hook(functools.partial(self._on_pre, name), with_kwargs=True)
        )
        self._handles.append(
            module.register_forward_hook(
                functools.partial(self._on_post, name), with_kwargs=True, always_call=True
            )
        )

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @guarded
    def _on_pre(self, name, module, args, kwargs):
        session = self._session
        if self.depth == 0:
            session.boundary("forward")
            step = session.open
            step.full = step.full or session.alarm
            if step.full:
                self._summarize_inputs(step, name, args, kwargs)
        self.depth += 1
        if session.open.want_graph:
            for _, leaf in leaves((args, kwargs)):
                if isinstance(leaf, torch.Tensor):
                    _mark(leaf, IN_MARK, name)

    def _summarize_inputs(self, step, name, args, kwargs) -> None:
        call = step.input_calls.get(name, 0)
        step.input_calls[name] = call + 1
        if call >= self._max_calls:
            return
        for path, leaf in [*leaves(args), *leaves(kwargs)]:
            if isinstance(leaf, torch.Tensor):
                step.staging.add(step.batch, "input", (name, call, path), leaf)

    @guarded
    def _on_post(self, name, module, args, kwargs, output):
        self.depth = max(0, self.depth - 1)
        step = self._session.open
        call = step.call_counts.get(name, 0)
        step.call_counts[name] = call + 1
        if call >= self._max_calls:  # counted, not described; still placed in the graph
            if step.want_graph:
                for _, leaf in leaves(output):
                    if isinstance(leaf, torch.Tensor):
                        _mark(leaf, OUT_MARK, (name, call))
            return
        inputs, _ = describe(args)
        if kwargs:
            inputs += describe(kwargs)[0]
        outputs, tensors = describe(output)
        step.calls.append({
            "module": name, "call": call, "training": module.training,
            "grad": torch.is_grad_enabled(), "inputs": inputs, "outputs": outputs,
        })
        if not step.full:
            if step.want_graph:
                for _, t in tensors:
                    _mark(t, OUT_MARK, (name, call))
            return
        grad_enabled = torch.is_grad_enabled()
        tails = self._tails.get(type(module).__name__, ())
        for path, t in tensors:
            step.staging.add(step.batch, "activation", (name, call, path), t)
            for request in tails:
                step.staging.add_tail((name, call, request.name), t, request)
            if grad_enabled and t.grad_fn is not None:
                t.register_hook(functools.partial(self._on_output_grad, name, call, path))
                if step.want_graph:
                    _mark(t, OUT_MARK, (name, call))

    @guarded
    def _on_output_grad(self, name, call, path, grad):
        step = self._session.open
        step.staging.add(step.batch, "grad-output", (name, call, path), grad)
