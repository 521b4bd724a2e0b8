"""One attached run: the hooks, the step lifecycle and the record writer.

A *step* ends when the first optimizer that ever stepped (the primary one) finishes
``step()``; other optimizers' updates belong to the step that is open when they run. While no
optimizer is watched yet, a step ends when a watched root module starts a forward after a
backward ran (``gradscope run`` attaches optimizers at their first step).
At the end of a step, `Session` hands everything it gathered to the recorder thread in one
snapshot; device values travel as one non-blocking copy per device.

Everything here runs on the training thread (or autograd's threads, for gradient hooks) and is
guarded: an exception inside gradscope becomes an ``internal-error`` finding, never the user's.
"""

from __future__ import annotations

import functools
import time
import weakref
from pathlib import Path

import torch

from .data import StepData
from .distributed import unwrap
from .record.paths import new_record_path
from .record.writer import RecordWriter, StepSnapshot, _internal_finding
from .trace import keepalive, patches
from .trace.autograd import IN_MARK, OUT_MARK, walk
from .trace.batch import RowBatch
from .trace.params import ParamTracker
from .trace.registry import Registry
from .trace.stats import histogram, summarize
from .trace.structure import describe, leaves
from .trace.tails import compute


#: Steps at the start of a run that always get full module statistics.
DENSE_STEPS = 20


def _guarded(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            self._failed(method.__name__, exc)
            return None

    return wrapper


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _mark(tensor: torch.Tensor, key: str, name: str) -> None:
    fn = tensor.grad_fn
    if fn is not None:
        fn.metadata.setdefault(key, []).append(name)


class Session:
    """Watches models and optimizers and records every step. Use `gradscope.watch` to make one.

    Parameters: `record` — the record file (default: a new file under ``.gradscope/runs``);
    `sample` — elements per parameter tracked for update statistics; `max_calls` — calls per
    module per step described in full; `stats_every` — module statistics (inputs, activations,
    output gradients, requested tail counts) and weight statistics on every step of the first
    `DENSE_STEPS`, then every N steps, and on every step once a non-finite value was seen
    (parameter gradients, updates and the loss are recorded every step); `graph_every` — walk
    the autograd graph every N steps (and whenever the step's module calls change shape; 0
    turns graph capture off);
    `analyzer` — a `gradscope.analysis.Analyzer` whose plugins judge each step in the recorder
    thread (None: record only); `control` — a `gradscope.control.Control` consulted at every
    step boundary (pause, single-step, break on error).
    """

    def __init__(
        self,
        record: str | Path | None = None,
        *,
        sample: int = 1024,
        max_calls: int = 8,
        graph_every: int = 100,
        stats_every: int = 10,
        run: dict | None = None,
        analyzer=None,
        control=None,
    ):
        self.path = Path(record) if record is not None else new_record_path("watch")
        run = dict(run or {})
        run.setdefault("torch", torch.__version__)
        self._writer = RecordWriter(self.path, run, analyzer)
        self._control = control  # gradscope.control.Control when a terminal UI drives the run
        self._tails: dict[str, list] = {}
        for request in analyzer.tail_requests if analyzer is not None else ():
            for type_name in request.module_types:
                self._tails.setdefault(type_name, []).append(request)
        self.step = 0
        self._max_calls = max_calls
        self._graph_every = graph_every
        self._stats_every = max(1, stats_every)
        self._tracker = ParamTracker(sample)
        self._registry = Registry()
        self._optimizers: dict[int, dict] = {}  # id(optimizer) -> {index, ref, params, ids}
        self._primary: int | None = None
        self._handles: list = []
        self._failures: set[tuple[str, str]] = set()
        self._depth = 0
        self._last_signature = None
        self._want_graph = graph_every > 0
        self._closed = False
        self._reset_step()
        patches.add_listener(self)

    # -- attaching ------------------------------------------------------------------------
    def knows(self, module: torch.nn.Module) -> bool:
        """Whether `module` is watched (as a root or inside one, or as the wrapper of one)."""
        return self._registry.knows(module)

    @_guarded
    def attach_running(self, module: torch.nn.Module, args) -> None:
        """Watch a root module whose forward has already begun (its own pre-hook missed it)."""
        prefix = self.add_model(module)
        if self._registry.module_name(module) is not None:  # a wrapper's inner module has its own hooks
            self._on_pre(prefix, module, args, {})

    def add_model(self, module: torch.nn.Module, name: str | None = None) -> str:
        """Hook `module` and its submodules and parameters; returns the prefix of their names.
        Wrappers (DistributedDataParallel, DataParallel, torch.compile) are seen through: the
        names are the inner module's (``fc1.weight``, not ``module.fc1.weight``)."""
        inner = unwrap(module)
        if inner is not module:
            self._registry.add_wrapper(module)
            module = inner
        known = self._registry.module_name(module)
        if known is not None:
            return known
        prefix = self._registry.new_prefix(module, name)
        rows = []
        for sub_name, sub in module.named_modules():
            if self._registry.module_name(sub) is not None:
                continue
            full = _join(prefix, sub_name)
            self._registry.add_module(sub, full)
            self._handles.append(
                sub.register_forward_pre_hook(functools.partial(self._on_pre, full), with_kwargs=True)
            )
            self._handles.append(
                sub.register_forward_hook(
                    functools.partial(self._on_post, full), with_kwargs=True, always_call=True
                )
            )
            own = sum(1 for _ in sub.parameters(recurse=False))
            rows.append({"name": full, "type": type(sub).__name__, "root": prefix, "params": own})
        self._writer.send("modules", rows)
        self._add_params(
            [(_join(prefix, n), p, n.rpartition(".")[0]) for n, p in module.named_parameters()],
            prefix,
        )
        return prefix

    def _add_params(self, named, prefix: str | None) -> None:
        rows = []
        for full, param, owner in named:
            if self._registry.param_name(param) is not None:
                continue
            self._registry.add_param(full, param)
            sampled = self._tracker.add(full, param)
            rows.append({
                "name": full,
                "module": None if prefix is None else _join(prefix, owner),
                "shape": list(param.shape),
                "dtype": str(param.dtype).removeprefix("torch."),
                "device": str(param.device),
                "requires_grad": int(param.requires_grad),
                "numel": param.numel(),
                "sampled": int(sampled),
            })
        if rows:
            self._writer.send("parameters", rows)

    def add_optimizer(self, optimizer: torch.optim.Optimizer, *, hooks: bool = True) -> int:
        """Watch `optimizer`'s steps; `hooks=False` when a global hook already delivers them."""
        entry = self._optimizers.get(id(optimizer))
        if entry is not None:
            return entry["index"]
        index = len(self._optimizers)
        entry = {"index": index, "ref": weakref.ref(optimizer), "ids": None, "params": []}
        self._optimizers[id(optimizer)] = entry
        if hooks:
            self._handles.append(optimizer.register_step_pre_hook(lambda o, a, k: self.on_optimizer_pre(o)))
            self._handles.append(optimizer.register_step_post_hook(lambda o, a, k: self.on_optimizer_post(o)))
        self._sync_optimizer(optimizer, entry)
        return index

    def _sync_optimizer(self, optimizer, entry: dict) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        ids = tuple(id(p) for p in params)
        if ids == entry["ids"]:
            return
        entry["ids"] = ids
        index = entry["index"]
        self._add_params(
            [(f"optimizer{index}.param{i}", p, "") for i, p in enumerate(params)], None
        )
        entry["params"] = [self._registry.param_name(p) for p in params]
        groups = [
            {k: v for k, v in g.items() if k != "params" and isinstance(v, (bool, int, float, str))}
            for g in optimizer.param_groups
        ]
        self._writer.send("optimizer", {
            "index": index, "type": type(optimizer).__name__, "params": entry["params"],
            "groups": groups, "first_step": self.step,
        })

    # -- module hooks (training thread) -------------------------------------------------------
    @_guarded
    def _on_pre(self, name, module, args, kwargs):
        if self._depth == 0:
            if not self._optimizers and self._backwards:
                self._close_step()
            self._full = self._full or self._writer.alarm
            if self._full:
                self._summarize_inputs(name, args, kwargs)
        self._depth += 1
        if self._want_graph:
            for _, leaf in leaves((args, kwargs)):
                if isinstance(leaf, torch.Tensor):
                    _mark(leaf, IN_MARK, name)

    def _summarize_inputs(self, name, args, kwargs) -> None:
        call = self._input_calls.get(name, 0)
        self._input_calls[name] = call + 1
        if call >= self._max_calls:
            return
        for path, leaf in [*leaves(args), *leaves(kwargs)]:
            if isinstance(leaf, torch.Tensor):
                values = summarize(leaf)
                if values is not None:
                    self._batch.add("input", [(name, call, path)], [leaf.numel()], values)

    @_guarded
    def _on_post(self, name, module, args, kwargs, output):
        self._depth = max(0, self._depth - 1)
        call = self._call_counts.get(name, 0)
        self._call_counts[name] = call + 1
        if call >= self._max_calls:  # counted, not described; still placed in the graph
            if self._want_graph:
                for _, leaf in leaves(output):
                    if isinstance(leaf, torch.Tensor):
                        _mark(leaf, OUT_MARK, (name, call))
            return
        inputs, _ = describe(args)
        if kwargs:
            inputs += describe(kwargs)[0]
        outputs, tensors = describe(output)
        self._calls.append({
            "module": name, "call": call, "training": module.training,
            "inputs": inputs, "outputs": outputs,
        })
        if not self._full:
            if self._want_graph:
                for _, t in tensors:
                    _mark(t, OUT_MARK, (name, call))
            return
        grad_enabled = torch.is_grad_enabled()
        tails = self._tails.get(type(module).__name__, ())
        for path, t in tensors:
            values = summarize(t)
            if values is not None:
                self._batch.add("activation", [(name, call, path)], [t.numel()], values)
            for request in tails:
                counted, total = compute(t, request)
                if counted is not None:
                    self._batch.add("tail", [(name, call, request.name)], [total], counted)
            if grad_enabled and t.grad_fn is not None:
                t.register_hook(functools.partial(self._on_output_grad, name, call, path))
                if self._want_graph:
                    _mark(t, OUT_MARK, (name, call))

    @_guarded
    def _on_output_grad(self, name, call, path, grad):
        values = summarize(grad)
        if values is not None:
            self._batch.add("grad-output", [(name, call, path)], [grad.numel()], values)

    # -- autograd and zero_grad (via trace.patches) ------------------------------------------
    @_guarded
    def before_backward(self, tensors):
        if isinstance(tensors, (tuple, list)) and len(tensors) == 1:
            tensors = tensors[0]
        if not isinstance(tensors, torch.Tensor):
            return
        if self._want_graph and self._graph is None and tensors.grad_fn is not None:
            self._graph = walk(tensors.grad_fn, self._registry.live_param_ids(), scopes=True)
        values = summarize(tensors)
        if values is not None:
            self._batch.add("loss", [("loss", self._backwards, "")], [tensors.numel()], values)

    @_guarded
    def after_backward(self):
        self._backwards += 1
        for name, ref in self._registry.params.items():
            param = ref()
            grad = None if param is None else param.grad
            values = None if grad is None else summarize(grad)
            if values is not None:  # the latest backward's (accumulated) gradient wins
                self._grads[name] = (grad.numel(), values)
                if self._full:
                    self._hists[name] = histogram(grad)

    @_guarded
    def on_zero_grad(self, owner, set_to_none):
        if isinstance(owner, torch.optim.Optimizer):
            entry = self._optimizers.get(id(owner))
            who = type(owner).__name__ if entry is None else f"optimizer{entry['index']}"
        else:
            who = self._registry.module_name(owner)
        if who is not None:
            self._zero_grads.append({"by": who, "set_to_none": bool(set_to_none)})

    # -- optimizer hooks ------------------------------------------------------------------
    @_guarded
    def on_optimizer_pre(self, optimizer):
        entry = self._optimizers.get(id(optimizer))
        if entry is None:
            return
        self._sync_optimizer(optimizer, entry)
        if self._primary is None:
            self._primary = entry["index"]
        self._tracker.before_step(entry["params"])

    @_guarded
    def on_optimizer_post(self, optimizer):
        entry = self._optimizers.get(id(optimizer))
        if entry is None:
            return
        index = entry["index"]
        names, rows = self._tracker.after_step(entry["params"])
        if rows is not None:
            self._batch.add("update", [(n, index) for n in names], [1] * len(names), rows)
        self._optimizer_steps.append(index)
        if index == self._primary:
            self._close_step()

    # -- step boundary --------------------------------------------------------------------
    def _reset_step(self) -> None:
        self._batch = RowBatch()
        self._calls: list[dict] = []
        self._call_counts: dict[str, int] = {}
        self._input_calls: dict[str, int] = {}
        self._grads: dict[str, tuple[int, torch.Tensor]] = {}
        self._hists: dict[str, torch.Tensor | None] = {}
        self._zero_grads: list[dict] = []
        self._optimizer_steps: list[int] = []
        self._backwards = 0
        self._graph = None
        self._started = time.time()
        self._full = (
            self.step < DENSE_STEPS or self.step % self._stats_every == 0 or self._writer.alarm
        )

    def _has_activity(self) -> bool:
        return bool(self._calls or self._backwards or self._optimizer_steps)

    def _close_step(self) -> None:
        names, rows = self._tracker.end_step()
        if rows is not None:
            self._batch.add("step-update", names, [1] * len(names), rows)
        for name, (count, values) in self._grads.items():
            self._batch.add("grad", [(name, 0, "")], [count], values)
        for name, values in self._hists.items():
            if values is not None:
                self._batch.add("hist", [name], [self._grads[name][0]], values)
        for name, ref in self._registry.params.items() if self._full else ():
            param = ref()
            values = None if param is None else summarize(param)
            if values is not None:
                self._batch.add("weight", [(name, 0, "")], [param.numel()], values)
        data = StepData(
            step=self.step,
            time=self._started,
            backwards=self._backwards,
            optimizer_steps=self._optimizer_steps,
            zero_grad=self._zero_grads,
            eval_modules=self._eval_modules(),
            lrs=self._learning_rates(),
            calls=self._calls,
            graph=self._graph,
        )
        self._writer.send_step(StepSnapshot(data, self._batch.freeze()))
        signature = tuple(
            (c["module"], c["call"], tuple(tuple(i.get("shape", ())) for i in c["inputs"]))
            for c in self._calls
        )
        self.step += 1
        self._want_graph = self._graph_every > 0 and (
            signature != self._last_signature or self.step % self._graph_every == 0
        )
        self._last_signature = signature
        self._reset_step()
        keepalive.release_dead()
        if self._control is not None:
            self._control.at_boundary(self._writer.error_seen, self._announce_pause)

    def _announce_pause(self, paused: bool) -> None:
        self._writer.send("run", {"paused": self.step if paused else None})

    def _eval_modules(self) -> list[str]:
        return [name for module, name in self._registry.modules() if not module.training]

    def _learning_rates(self) -> dict[str, list]:
        lrs = {}
        for entry in self._optimizers.values():
            optimizer = entry["ref"]()
            if optimizer is not None:
                lrs[f"optimizer{entry['index']}"] = [
                    g.get("lr") if isinstance(g.get("lr"), (int, float)) else None
                    for g in optimizer.param_groups
                ]
        return lrs

    # -- failures and closing ---------------------------------------------------------------
    def _failed(self, where: str, exc: Exception) -> None:
        key = (where, type(exc).__name__)
        if key in self._failures:
            return
        self._failures.add(key)
        try:
            self._writer.send("finding", _internal_finding(where, exc, self.step))
        except Exception:
            pass

    def annotate(self, **fields) -> None:
        """Store extra fields in the record's run table (e.g. the exit status)."""
        self._writer.send("run", fields)

    def close(self, status: str = "finished", **fields) -> Path:
        """Finish the step in progress, remove every hook and close the record."""
        if self._closed:
            return self.path
        self._closed = True
        patches.remove_listener(self)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        try:
            if self._has_activity():
                self._close_step()
        except Exception as exc:
            self._failed("close", exc)
        self._writer.close(status=status, **fields)
        keepalive.release_dead()
        return self.path

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("crashed" if exc_type is not None and not issubclass(exc_type, SystemExit) else "finished")
