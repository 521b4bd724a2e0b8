"""One attached run: wiring the hooks to the open step, and the run's lifecycle.

The parts live in `gradscope.trace`: `modules` (module hooks), `optimizers` (which optimizers
are watched), `step` (the open step, its snapshot and when it ends), `schedule` (when a step
takes full statistics and walks the graph), `registry` (what is watched, by weak reference) and
`patches` (backward and zero_grad, which torch offers no hook for). `Session` connects them:
events come in from the hooks, go into the open step, and at each step boundary the step's
snapshot goes to the recorder thread.

Everything here runs on the training thread (or autograd's threads, for gradient hooks) and is
guarded: an exception inside gradscope becomes an ``internal-error`` finding, never the user's.
"""

from __future__ import annotations

import dataclasses
import operator
import threading
import weakref
from pathlib import Path

import torch

from .distributed import unwrap
from .findings import internal_error
from .record.paths import new_record_path
from .record.writer import RecordWriter
from .settings import DEFAULTS, Settings
from .trace import keepalive, patches
from .trace.autograd import walk
from .trace.batch import row_keys
from .trace.capture import gradient_rows, named_values
from .trace.guard import guarded
from .trace.modules import ModuleHooks
from .trace.optimizers import Optimizers, describe_groups
from .trace.patches import in_backward
from .trace.params import ParamTracker
from .trace.registry import Registry
from .trace.schedule import Schedule
from .trace.shards import placement
from .trace.stats import summarize
from .trace.step import OpenStep, ends_step


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _process_group_gone() -> bool:
    """Whether the script called ``destroy_process_group()`` (distributed tensors then outlive
    their group, and any operation on them would try to reach it)."""
    dist = torch.distributed
    return dist.is_available() and not dist.is_initialized()


class Session:
    """Watches models and optimizers and records every step. Use `gradscope.watch` to make one.

    Parameters: `record` — the record file (default: a new file under ``.gradscope/runs``);
    `settings` — what to record and how often (`gradscope.settings.Settings`; parameter
    gradients, updates and the loss are recorded every step);
    `analyzer` — a `gradscope.analysis.Analyzer` whose plugins judge each step in the recorder
    thread (None: record only); `control` — a `gradscope.control.Control` consulted at every
    step boundary (pause, single-step, break on error).
    """

    def __init__(
        self,
        record: str | Path | None = None,
        *,
        settings: Settings = DEFAULTS,
        run: dict | None = None,
        analyzer=None,
        control=None,
    ):
        self.settings = settings
        self.path = Path(record) if record is not None else new_record_path("watch")
        run = dict(run or {})
        run.setdefault("torch", torch.__version__)
        run["settings"] = dataclasses.asdict(settings)  # how often what was taken, for whoever reads the record
        self._writer = RecordWriter(self.path, run, analyzer)
        self.path = self._writer.path  # a generated name taken meanwhile moves on to a free one
        self._control = control  # gradscope.control.Control when a terminal UI drives the run
        tails: dict[str, list] = {}
        for request in analyzer.tail_requests if analyzer is not None else ():
            for type_name in request.module_types:
                tails.setdefault(type_name, []).append(request)
        self._schedule = Schedule(
            stats_every=self.settings.stats_every,
            graph_every=self.settings.graph_every,
            dense_steps=self.settings.dense_steps,
        )
        self._tracker = ParamTracker(self.settings.sample)
        self._registry = Registry()
        self._optimizers = Optimizers()
        self._handles: list = []  # optimizer hooks
        self._failures: set[tuple[str, str]] = set()
        self._closed = False
        self._placements: dict[str, dict] = {}  # sharded parameter -> its layout (a run field)
        self._scaler_open = None  # (open step, its optimizer steps) when GradScaler.step began
        self._threads = {threading.get_ident()}  # threads that train watched models
        self._root_threads: dict[str, int] = {}  # root prefix -> the thread of its latest forward
        self._param_roots: dict[str, str | None] = {}  # parameter name -> its root's prefix
        self.step = 0
        self.open = self._new_step(want_graph=self._schedule.walk_graph(0, None))
        self._modules = ModuleHooks(self, max_calls=self.settings.max_calls, tails=tails)
        patches.add_listener(self)

    @property
    def alarm(self) -> bool:
        """Whether the recorder saw a non-finite value (every later step gets full statistics)."""
        return self._writer.alarm

    # -- attaching ------------------------------------------------------------------------
    def knows(self, module: torch.nn.Module) -> bool:
        """Whether `module` is watched (as a root or inside one, or as the wrapper of one)."""
        return self._registry.knows(module)

    @guarded
    def attach_running(self, module: torch.nn.Module, args, name: str | None = None) -> None:
        """Watch a root module whose forward has already begun (its own pre-hook missed it)."""
        self.add_model(module, name)
        name, target = self._modules.resolve(module)  # a wrapper's inner module gets its own call
        if name is not None:
            self._modules.enter(name, target, args)

    @property
    def module_hooks_out(self) -> bool:
        """Whether the global module hooks are out for the rest of a light step."""
        return self._modules.quiet

    def module_hooks(self, pre, post) -> None:
        """Add global module hooks that go with the session's own: installed while it watches,
        out for the rest of a light step once its root call began (see `ModuleHooks`)."""
        self._modules.add_global(pre, post)

    def free_prefix(self, name: str) -> str:
        """`name`, or `name` with a number, whichever no watched model uses yet."""
        return self._registry.free_prefix(name)

    def add_model(self, module: torch.nn.Module, name: str | None = None) -> str:
        """Hook `module` and its submodules and parameters; returns the prefix of their names.
        Wrappers (DistributedDataParallel, DataParallel, torch.compile) are seen through: the
        names are the inner module's (``fc1.weight``, not ``module.fc1.weight``)."""
        inner = unwrap(module)
        if inner is not module:
            self._registry.add_wrapper(module, inner)
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
            self._registry.add_module(sub, full, prefix)
            own = sum(1 for _ in sub.parameters(recurse=False))
            rows.append({"name": full, "type": type(sub).__name__, "root": prefix, "params": own})
        self._writer.send("modules", rows)
        self._add_params(
            [(_join(prefix, n), p, n.rpartition(".")[0]) for n, p in module.named_parameters()],
            prefix,
        )
        if self.open.pending_zero_grads:
            self.open.book_zero_grads(self._owner_name)
        return prefix

    def _add_params(self, named, prefix: str | None) -> None:
        rows = []
        sharded = {}
        for full, param, owner in named:
            if self._registry.param_name(param) is not None:
                continue
            self._registry.add_param(full, param)
            if (layout := placement(param)) is not None:
                sharded[full] = layout
            self._param_roots[full] = prefix
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
        if sharded:
            self._placements.update(sharded)
            self._writer.send("run", {"placements": dict(self._placements)})

    def add_optimizer(self, optimizer: torch.optim.Optimizer, *, hooks: bool = True) -> int:
        """Watch `optimizer`'s steps; `hooks=False` when a global hook already delivers them."""
        entry = self._optimizers.get(optimizer)
        if entry is not None:
            return entry.index
        entry = self._optimizers.add(optimizer)
        if hooks:
            self._handles.append(optimizer.register_step_pre_hook(lambda o, a, k: self.on_optimizer_pre(o)))
            self._handles.append(optimizer.register_step_post_hook(lambda o, a, k: self.on_optimizer_post(o)))
        self._sync_optimizer(optimizer, entry)
        if self.open.pending_zero_grads:
            self.open.book_zero_grads(self._owner_name)
        return entry.index

    def _sync_optimizer(self, optimizer, entry) -> None:
        params = self._optimizers.changed_params(optimizer, entry)
        if params is None:
            return
        self._add_params([(f"{entry.name}.param{i}", p, "") for i, p in enumerate(params)], None)
        entry.params = [self._registry.param_name(p) for p in params]
        self._writer.send("optimizer", {
            "index": entry.index, "type": type(optimizer).__name__, "params": entry.params,
            "groups": describe_groups(optimizer), "first_step": self.step,
        })

    # -- threads ------------------------------------------------------------------------------
    def entered_root(self, module) -> None:
        """A watched module starts a forward in the calling thread, outside any other."""
        ident = threading.get_ident()
        root = self._registry.module_root(module)
        if self._root_threads.get(root) != ident:
            self._root_threads = {**self._root_threads, root: ident}
            self._threads = {*self._threads, ident}

    @property
    def threads(self) -> set[int]:
        """The threads known to train this session's models."""
        return self._threads

    def owns_thread(self) -> bool:
        """Whether the calling thread trains this session's models (backward events go only
        to the sessions that own the thread)."""
        return threading.get_ident() in self._threads

    def _own_params(self) -> dict:
        """name -> weak reference of the parameters this thread trains: all of them unless the
        session's roots run in several threads; then those of the roots this thread ran."""
        params = dict(self._registry.params)  # copies: another thread may add parameters or roots
        threads = dict(self._root_threads)
        if len(set(threads.values())) <= 1:
            return params
        ident = threading.get_ident()
        mine = {root for root, thread in threads.items() if thread == ident}
        return {name: ref for name, ref in params.items() if self._param_roots.get(name) in mine}

    # -- autograd and zero_grad (via trace.patches) ------------------------------------------
    @guarded
    def before_backward(self, tensors):
        if isinstance(tensors, (tuple, list)) and len(tensors) == 1:
            tensors = tensors[0]
        if not isinstance(tensors, torch.Tensor):
            return
        step = self.open
        if step.want_graph and step.graph is None and tensors.grad_fn is not None:
            step.graph = walk(tensors.grad_fn, self._registry.live_param_ids(), scopes=True)
        key = [("loss", step.backwards, "")]
        if tensors.numel() == 1 and tensors.layout == torch.strided and tensors.device.type != "meta":
            step.batch.add("loss", key, [1], tensors.detach().reshape(1))  # the recorder expands it
            return
        values = summarize(tensors)
        if values is not None:
            step.batch.add("loss", key, [tensors.numel()], values)

    @guarded
    def after_backward(self):
        step = self.open
        if step.eval_modules is None:
            step.eval_modules = self._eval_modules()
        step.backwards += 1
        names, grads = named_values(self._own_params(), operator.attrgetter("grad"))
        step.grads = gradient_rows(names, grads, step.full)  # the latest backward's (accumulated) gradients

    def _owner_name(self, owner) -> str | None:
        """How the record names the module or optimizer that called zero_grad (None: not watched)."""
        if isinstance(owner, torch.optim.Optimizer):
            entry = self._optimizers.get(owner)
            return None if entry is None else entry.name
        return self._registry.module_name(owner)

    @guarded
    def on_zero_grad(self, owner, set_to_none):
        who = self._owner_name(owner)
        if who is None:
            if self.owns_thread():  # perhaps a model or optimizer this session meets later
                step = self.open
                step.pending_zero_grads.append((len(step.zero_grads), weakref.ref(owner), bool(set_to_none)))
            return
        self.boundary("zero_grad")
        self.open.zero_grads.append({"by": who, "set_to_none": bool(set_to_none)})

    # -- optimizer hooks ------------------------------------------------------------------
    @guarded
    def on_optimizer_pre(self, optimizer):
        entry = self._optimizers.get(optimizer)
        if entry is None:
            return
        if self._modules.quiet and (ident := threading.get_ident()) not in self._threads and not in_backward():
            # a thread whose forward may have gone unseen (this light step's module hooks are
            # out): the next steps keep them in, so its root calls are seen (not autograd's own
            # threads, where an optimizer may step inside a backward pass)
            self._threads = {*self._threads, ident}
        self._sync_optimizer(optimizer, entry)
        self._optimizers.note_step(entry)
        self._tracker.before_step(entry.params)

    @guarded
    def on_optimizer_post(self, optimizer):
        entry = self._optimizers.get(optimizer)
        if entry is None:
            return
        ends = ends_step("optimizer", self.open, optimizers=True, primary=self._optimizers.is_primary(entry))
        try:  # a failed audit costs the audit, not the step
            for names, rows in self._tracker.after_step(entry.params, closing=self.open.number if ends else None):
                self.open.batch.add("update", row_keys(tuple(names), entry.index), [1] * len(names), rows)
        except Exception as exc:
            self._failed("on_optimizer_post", exc)
        self.open.optimizer_steps.append(entry.index)
        if ends:
            self._end_step()

    # -- GradScaler (via trace.patches) ----------------------------------------------------
    @guarded
    def before_scaler_step(self, optimizer):
        self._scaler_open = (self.open, len(self.open.optimizer_steps))

    @guarded
    def after_scaler_step(self, optimizer):
        entry = self._optimizers.get(optimizer)
        before = self._scaler_open
        self._scaler_open = None
        if entry is None or before is None:
            return
        step, count = before
        if step is not self.open or entry.index in step.optimizer_steps[count:]:
            return  # the optimizer stepped
        step.skipped.append(entry.index)
        self._optimizers.note_step(entry)
        self.boundary("optimizer", primary=self._optimizers.is_primary(entry))

    # -- step boundary --------------------------------------------------------------------
    def _new_step(self, want_graph: bool) -> OpenStep:
        full = self._schedule.full_stats(self.step, self._writer.alarm)
        # Light: module hooks record the first root call only. Not while models train in several threads
        # or the boundary came inside a forward (hooks count the depth of the calls they see).
        hooks = getattr(self, "_modules", None)
        light = (not full and not want_graph and bool(self._optimizers) and len(self._threads) <= 1
                 and hooks is not None and hooks.depth == 0)
        return OpenStep(number=self.step, full=full, want_graph=want_graph, light=light)

    def boundary(self, event: str, *, primary: bool = False, device: bool = True) -> None:
        """An event that may end the open step (see `gradscope.trace.step.ends_step`);
        `device=False` records the step without touching any tensor."""
        if ends_step(event, self.open, optimizers=bool(self._optimizers), primary=primary):
            self._end_step(device)

    def _eval_modules(self) -> list[str]:
        return self._registry.in_eval()

    def _end_step(self, device: bool = True) -> None:
        step = self.open
        for position, ref, set_to_none in reversed(step.pending_zero_grads):
            owner = ref()  # an optimizer that never stepped is still named by its class
            if isinstance(owner, torch.optim.Optimizer):
                step.zero_grads.insert(position, {"by": type(owner).__name__, "set_to_none": set_to_none})
        eval_modules = step.eval_modules if step.eval_modules is not None else self._eval_modules()
        lrs = self._optimizers.learning_rates()
        try:
            snapshot = step.snapshot(self._tracker, self._registry.params, eval_modules, lrs, device=device)
        except Exception as exc:  # the step's statistics are lost, not the step
            self._failed("step", exc)
            snapshot = step.snapshot(self._tracker, self._registry.params, eval_modules, lrs, device=False)
        self._writer.send_step(snapshot)
        self.step += 1
        self.open = self._new_step(want_graph=self._schedule.walk_graph(self.step, *step.signature()))
        self._modules.resume()
        keepalive.release_dead()
        if self._control is not None:
            self._control.at_boundary(self._writer, self.step - 1, self._announce_pause)

    def _announce_pause(self, paused: bool) -> None:
        self._writer.send("run", {"paused": self.step if paused else None})

    # -- failures and closing ---------------------------------------------------------------
    def _failed(self, where: str, exc: Exception) -> None:
        key = (where, type(exc).__name__)
        if key in self._failures:
            return
        self._failures.add(key)
        try:
            self._writer.send("finding", internal_error(where, exc, self.step))
        except Exception:
            pass

    @property
    def recorder(self) -> RecordWriter:
        """The record's writer: whether recording stopped and which steps were dropped."""
        return self._writer

    def annotate(self, **fields) -> None:
        """Store extra fields in the record's run table (e.g. the exit status)."""
        self._writer.send("run", fields)

    def close(self, status: str = "finished", **fields) -> Path:
        """Finish the step in progress, remove every hook and close the record."""
        if self._closed:
            return self.path
        self._closed = True
        patches.remove_listener(self)
        self._modules.remove()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        try:
            self.boundary("close", device=not (self._placements and _process_group_gone()))
        except Exception as exc:
            self._failed("close", exc)
        self._writer.close(status=status, **fields)
        keepalive.release_dead()
        return self.path

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("crashed" if exc_type is not None and not issubclass(exc_type, SystemExit) else "finished")
