"""Module hooks: what each watched module takes and returns in a step.

Design: torch's *global* module hooks (``register_module_forward_pre_hook`` and an
always-called ``register_module_forward_hook``), dispatching through the session's weak-reference
`Registry`, rather than hooks stored on each module. Nothing gradscope owns is stored on the
user's modules, so ``copy.deepcopy``, ``pickle``, ``torch.save`` and ``torch.jit.script`` of a
watched model behave as without gradscope; a copy is simply a module the registry does not know
(``gradscope run`` watches it under its own name once it runs a forward as a root). Modules are
never touched when attaching or detaching, so a hundred throw-away loss modules cost nothing.
The price is one dictionary lookup for every module call in the process while a session is
open; unwatched modules stop there. Hooks do nothing while ``torch.jit.trace`` or
``torch.compile`` is tracing (those calls are not training, and gradscope's Python must not
become part of a compiled graph), nor inside a backward pass (activation checkpointing
recomputing a forward: those calls were already seen).

On a light step (no full statistics, no graph walk: most steps) only the step's first root call
is described, as it begins (its positional inputs; not its outputs), and the global hooks are
then taken out until the step ends (`resume`): while any global module hook exists, torch sends
every module call in the process down its slower path (≈1.7 µs a call, 10 of the 43 ms of a
forward of 5,000 modules), so the rest of the step's calls take torch's fast path. Nothing is
put on the user's modules instead. What a light step no longer sees: other root calls
(micro-batches, a second model, a loss module), a validation forward before the step ends (one
after the optimizer's step is seen, and turns the next step heavy: that forward is described
whole), and, until its optimizer steps, a new training thread. The hooks stay in while modules
are called from several threads and once torch.compile compiled anything in the process (a
compiled frame guards on the number of global hooks).

For each watched call, up to `max_calls` calls per module per step, the hooks describe the call
(shapes, dtypes, devices, training mode), mark its tensors in the autograd graph (when the step
walks it) and, on full-statistics steps, summarize inputs of root calls, activations, requested
tail counts and, through tensor hooks, output gradients. A root forward (depth 0 in its thread)
is also where a step may end. Torch's global pre-hook gets no keyword arguments, so the tensors
passed by keyword are read in the forward hook, which gets them. ``torch.compile(model)``
warns on every call while any global module hook exists; that warning is about gradscope's
hooks, not the user's code, so it is silenced while they are installed (and only then).
"""

from __future__ import annotations

import functools
import sys
import threading
import warnings

import torch
from torch.nn.modules import module as nn_module

from .autograd import IN_MARK, OUT_MARK
from .batch import row_key
from .guard import guarded
from .patches import in_backward
from .structure import CallDescriber, describe, leaves


def _register(pre, post, kwargs: bool) -> list:
    return [nn_module.register_module_forward_pre_hook(pre),
            nn_module.register_module_forward_hook(post, with_kwargs=kwargs, always_call=True)]


def _mark(tensor: torch.Tensor, key: str, name) -> None:
    fn = tensor.grad_fn
    if fn is not None:
        fn.metadata.setdefault(key, []).append(name)


def _mark_leaves(value, key: str, name) -> None:
    """Mark every tensor in `value` (nested args, kwargs or outputs) for the autograd walk."""
    for _, leaf in leaves(value):
        if isinstance(leaf, torch.Tensor):
            _mark(leaf, key, name)


#: torch.compile's warning about global module hooks (issued on every call of a compiled module)
_COMPILE_WARNING = r"Using `torch\.compile\(module\)` when there are global hooks on modules"


_compiling = torch.compiler.is_compiling


def _compiled_anything() -> bool:
    """Whether torch.compile has compiled any frame in this process. A compiled frame that
    calls modules guards on the number of global module hooks: taking them out for light steps
    would compile it once more, so once anything is compiled they stay."""
    dynamo = sys.modules.get("torch._dynamo")
    return dynamo is not None and dynamo.utils.counters["frames"]["total"] > 0


class ModuleHooks:
    """Forward hooks of one session. `session` provides the registry, the open step
    (``session.open``), the step boundary (``session.boundary``), the recorder's alarm and
    failure reporting (``session._failed``)."""

    def __init__(self, session, *, max_calls: int, tails: dict[str, list]):
        self._session = session
        self._registry = session._registry
        self._failed = session._failed
        self._max_calls = max_calls
        self._describer = CallDescriber()
        self._tails = tails  # module type name -> the plugins' TailCount requests
        self._local = threading.local()  # depth of watched calls, per thread
        #: the output-gradient hook of each (module, call, path), made once: statistics steps
        #: register one per module output, and new ones every time were objects per call that
        #: outlived the step (thousands with thousands of modules)
        self._grad_hooks: dict[tuple, functools.partial] = {}
        #: the session's global module hooks: (pre-hook, post-hook, whether the post-hook takes
        #: keyword arguments); this object's own, then `gradscope run`'s attaching (`add_global`)
        self._globals: list[tuple] = [(self._pre_hook, self._post_hook, True)]
        self._handles: list = []  # torch's handles of the global hooks, while they are installed
        #: the thread that called modules so far, or None once several did (hooks then stay in)
        self._caller: int | None = threading.get_ident()
        self._install()
        warnings.filterwarnings("ignore", message=_COMPILE_WARNING, category=UserWarning)
        self._filter = warnings.filters[0]

    @property
    def depth(self) -> int:
        return getattr(self._local, "depth", 0)

    @property
    def quiet(self) -> bool:
        """Whether the global hooks are out for the rest of a light step (`_quiet_call`)."""
        return not self._handles and bool(self._globals)

    def add_global(self, pre, post) -> None:
        """Another pair of global module hooks (``pre(module, args)``, an always-called
        ``post(module, args, output)``) installed and taken out with the session's own."""
        self._globals.append((pre, post, False))
        if self._handles:
            self._handles += _register(pre, post, False)

    def _install(self) -> None:
        for pre, post, kwargs in self._globals:
            self._handles += _register(pre, post, kwargs)

    def _uninstall(self) -> None:
        for handle in self._handles:
            handle.remove()
            # torch's handle forgets this registry of a forward hook taking keyword arguments:
            # left there, every later call of a torch.compile'd module warns about global hooks
            getattr(nn_module, "_global_forward_hooks_with_kwargs", {}).pop(handle.id, None)
        self._handles.clear()

    def _quiet_call(self, name: str, module) -> None:
        """A light step's first root call began: it is recorded as it begins (its positional
        inputs: torch's global pre-hook gets no keyword arguments; no outputs), and the rest of
        the step runs without global module hooks. While any exists, every module call in the
        process takes torch's slower call path (≈1.7 µs a call); nothing of gradscope's is put on
        the user's modules instead, so an error, Ctrl-C or a copy in mid-forward finds nothing."""
        step = self._session.open
        call = step.call_counts.get(name, 0)
        step.call_counts[name] = call + 1
        step.calls.append({
            "module": name, "call": call, "training": module.training, "grad": torch.is_grad_enabled(),
            "inputs": step.first_root[1], "outputs": [], "root": True,  # described as it began (`enter`)
        })
        self._local.depth = 0  # no post-hook comes for this call
        self._uninstall()

    def resume(self) -> None:
        """At a step boundary: the global hooks are back."""
        if not self._handles:
            self._install()

    def remove(self) -> None:
        self._uninstall()
        self._globals.clear()
        self._grad_hooks.clear()  # they hold this object (a cycle otherwise)
        if self._filter in warnings.filters:
            warnings.filters.remove(self._filter)
            getattr(warnings, "_filters_mutated", lambda: None)()
        self._filter = None

    def resolve(self, module):
        """(name, module) of a watched module, or of the model a ``torch.compile`` wrapper runs
        (its compiled calls are not seen one by one, so the wrapper's call stands for the
        model's); (None, None) for anything else."""
        name = self._registry.module_name(module)
        if name is not None:
            return name, module
        inner = self._registry.compiled_inner(module)
        if inner is not None:
            return self._registry.module_name(inner), inner
        return None, None

    def _pre_hook(self, module, args):
        # Every module call in the process comes here and leaves after one lookup unless it is
        # watched (on a light step: unless it is a root call).
        # torch.compile traces global hooks into the compiled frame, with a guard on whatever
        # they read: asked first, `_compiling()` leaves nothing else read there (a guard on the
        # step being light recompiled the frame at the first light step).
        if _compiling():
            return
        if self._caller is not None and threading.get_ident() != self._caller:
            self._caller = None  # modules called from several threads: the hooks stay in
        if self._registry.is_root(module) if self._session.open.light else self._registry.may_watch(module):
            self._on_pre(module, args)

    @guarded
    def _on_pre(self, module, args):
        if torch._C._get_tracing_state() is not None:  # torch.jit.trace
            return
        name, module = self.resolve(module)
        if name is not None and not in_backward():  # not a recomputation by checkpointing
            self.enter(name, module, args)
            session = self._session
            # A light step's first root call (what keeps the hooks in never goes away: one thread
            # calling modules, one training, nothing compiled): nothing else of the step is described.
            if (session.open.light and self.depth == 1 and self._caller is not None and len(session.threads) <= 1
                    and not _compiled_anything()):
                self._quiet_call(name, module)

    def enter(self, name: str, module, args) -> None:
        """A watched call begins (also used for a root attached while its forward began)."""
        session = self._session
        depth = self.depth
        if depth == 0:
            session.entered_root(module)
            session.boundary("forward")
            step = session.open
            first = step.first_root is None
            if first:
                step.first_root = (name, describe(args)[0])
            step.full = step.full or session.alarm
            if step.light and (step.full or not torch.is_grad_enabled()):
                step.light = False  # describe this forward whole (statistics, validation)
                step.described = first  # and, from its first root call on, the whole step
            if step.full:
                self._summarize_inputs(step, name, args, new_call=True)
        self._local.depth = depth + 1
        if session.open.want_graph:
            _mark_leaves(args, IN_MARK, name)

    def _summarize_inputs(self, step, name, args, *, new_call: bool) -> None:
        call = step.input_calls.get(name, 0)
        if new_call:
            step.input_calls[name] = call + 1
        else:  # keyword arguments of the call just counted
            call -= 1
        if not 0 <= call < self._max_calls:
            return
        for path, leaf in leaves(args):
            if isinstance(leaf, torch.Tensor):
                step.staging.add(step.batch, "input", row_key(name, call, path), leaf)

    def _post_hook(self, module, args, *rest):
        if not _compiling() and (
                self._registry.is_root(module) if self._session.open.light else self._registry.may_watch(module)):
            self._on_post(module, args, *rest)

    @guarded
    def _on_post(self, module, args, *rest):
        # (kwargs, output) normally; (output,) when torch runs always-called hooks after an error
        kwargs, output = rest if len(rest) == 2 else ({}, rest[0])
        if torch._C._get_tracing_state() is not None:
            return
        name, module = self.resolve(module)
        if name is None or in_backward():
            return
        depth = max(0, self.depth - 1)
        self._local.depth = depth
        step = self._session.open
        if kwargs:
            if step.want_graph:
                _mark_leaves(kwargs, IN_MARK, name)
            if depth == 0 and step.full:
                self._summarize_inputs(step, name, kwargs, new_call=False)
        call = step.call_counts.get(name, 0)
        step.call_counts[name] = call + 1
        if call >= self._max_calls:  # counted, not described; still placed in the graph
            if step.want_graph:
                _mark_leaves(output, OUT_MARK, (name, call))
            return
        if kwargs:
            inputs, _ = describe(args)
            inputs += describe(kwargs)[0]
            outputs, tensors = describe(output)
        else:
            inputs, outputs, tensors = self._describer.describe((name, call), args, output)
        step.calls.append({
            "module": name, "call": call, "training": module.training,
            "grad": torch.is_grad_enabled(), "inputs": inputs, "outputs": outputs, "root": depth == 0,
        })
        if not step.full:
            if step.want_graph:
                for _, t in tensors:
                    _mark(t, OUT_MARK, (name, call))
            return
        grad_enabled = torch.is_grad_enabled()
        tails = self._tails.get(type(module).__name__, ())
        for path, t in tensors:
            key = row_key(name, call, path)
            step.staging.add(step.batch, "activation", key, t)
            for request in tails:
                step.staging.add_tail(row_key(name, call, request.name), t, request)
            if grad_enabled and t.grad_fn is not None:
                hook = self._grad_hooks.get(key)
                if hook is None:
                    hook = self._grad_hooks[key] = functools.partial(self._on_output_grad, key)
                t.register_hook(hook)
                if step.want_graph:
                    _mark(t, OUT_MARK, (name, call))

    @guarded
    def _on_output_grad(self, key, grad):
        step = self._session.open
        step.staging.add(step.batch, "grad-output", key, grad)
