"""Run the plugins' checks in the recorder thread, each plugin isolated from the others.

`Analyzer` is built on the thread that starts a run (it calls ``gradscope_configure`` and
collects ``gradscope_statistics`` there) and then lives in the recorder thread: it follows the
run's metadata (`observe`), judges each step (`step`) and the end of the run (`finish`). Hooks
are called through pluggy (its order, its hook wrappers), with every plugin's implementations
guarded (`_Isolated`), so that a plugin that raises only loses itself: its error becomes a
``plugin-error`` finding and it is unregistered, and the other plugins go on.
"""

from __future__ import annotations

import functools
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pluggy

from .data import StepData
from .distributed import peer_paths
from .errors import GradscopeError
from .findings import Finding
from .trace.autograd import to_networkx
from .trace.tails import DeadUnits, TailCount


@dataclass
class RunView:
    """What the run has shown so far: modules, parameters, optimizers, forward order; the run's
    fields (`info`, with `rank` and `world_size` under torch.distributed) and its `record`."""

    modules: dict[str, dict] = field(default_factory=dict)
    parameters: dict[str, dict] = field(default_factory=dict)
    optimizers: dict[int, dict] = field(default_factory=dict)
    forward_order: list[str] = field(default_factory=list)
    steps: int = 0
    #: the run's fields (target, rank, world_size...) and the record being written
    info: dict = field(default_factory=dict)
    record: Path | None = None

    @property
    def rank(self) -> int | None:
        return self.info.get("rank")

    @property
    def world_size(self) -> int:
        return self.info.get("world_size") or 1

    def peer_records(self) -> list[Path]:
        """The records of every rank of this job, in rank order (this run's alone when it is
        not distributed); a rank's record may not exist yet."""
        if self.record is None:
            return []
        return peer_paths(self.record, self.world_size)

    def optimized(self) -> set[str]:
        """Names of parameters some optimizer holds."""
        return {name for opt in self.optimizers.values() for name in opt["params"]}

    def module_of(self, param: str) -> str | None:
        return self.parameters.get(param, {}).get("module")

    def placement(self, param: str) -> dict | None:
        """How a sharded parameter (a DTensor: FSDP2, tensor parallel) is laid out over the
        ranks, with this rank's ``local_shape`` (see `gradscope.trace.shards.placement`); None
        for an ordinary parameter. Statistics of a sharded parameter are this rank's shard's."""
        return (self.info.get("placements") or {}).get(param)


class Analyzer:
    """The plugins of one run, called through pluggy, each plugin isolated from the others."""

    def __init__(self, pm: pluggy.PluginManager, config):
        self.pm = pm
        self.run = RunView()
        self.errors: list[Finding] = []
        for name, plugin in list(pm.list_name_plugin()):  # registration order, so call order holds
            if plugin is None:  # blocked
                continue
            isolated = _Isolated(pm, plugin, name, self._fail)
            pm.unregister(name=name)
            pm.register(isolated, name=name)
        self.pm.hook.gradscope_configure(config=config)
        self.tail_requests: list[TailCount] = []
        for result in self.pm.hook.gradscope_statistics():
            self.tail_requests.extend(result)

    def start(self, record: Path, info: dict) -> None:
        """The record this run writes, and its run fields (recorder thread, before any step)."""
        self.run.record = record
        self.run.info = dict(info)

    def observe(self, kind: str, payload) -> None:
        """Follow metadata messages (modules, parameters, optimizer) as the recorder sees them."""
        if kind == "modules":
            for row in payload:
                self.run.modules[row["name"]] = row
        elif kind == "parameters":
            for row in payload:
                self.run.parameters[row["name"]] = row
        elif kind == "optimizer":
            self.run.optimizers[payload["index"]] = payload
        elif kind == "run":
            self.run.info.update(payload)

    def step(self, data: StepData) -> list[dict]:
        """Findings for one step (plugin errors included)."""
        known = set(self.run.forward_order)
        for call in data.calls:
            if call["module"] not in known:
                known.add(call["module"])
                self.run.forward_order.append(call["module"])
        self.run.steps = data.step + 1
        findings = []
        if data.graph is not None and data.graph.nodes:
            graph = to_networkx(data.graph)
            graph.graph["functions"] = data.graph.functions
            findings += self._findings(self.pm.hook.gradscope_graph(step=data.step, graph=graph, run=self.run))
        return findings + self._findings(self.pm.hook.gradscope_step(step=data, run=self.run))

    def finish(self) -> list[dict]:
        """Findings at the end of the run."""
        return self._findings(self.pm.hook.gradscope_run_end(run=self.run))

    def ranks(self, records: dict) -> list[dict]:
        """Findings across the ranks of a distributed job (rank -> `Record`), after the fact."""
        return self._findings(self.pm.hook.gradscope_ranks(records=records))

    def _findings(self, results: list) -> list[dict]:
        out = [item.to_dict() for result in results for item in result]
        out += [f.to_dict() for f in self.errors]
        self.errors.clear()
        return out

    def _fail(self, plugin: str, hook: str, exc: Exception) -> None:
        if self.pm.get_plugin(plugin) is not None:
            self.pm.unregister(name=plugin)
        where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        self.errors.append(Finding(
            check="plugin-error",
            severity="error",
            subject=plugin,
            step=self.run.steps - 1 if self.run.steps else None,
            message=f"plugin {plugin} failed in {hook}: {type(exc).__name__}: {exc}; it is off for the rest of the run",
            evidence={"hook": hook, "exception": type(exc).__name__,
                      "where": f"{where[0].filename}:{where[0].lineno}" if where else ""},
            hint=f"Report it to the plugin's authors, or run without it: -p no:{plugin}",
        ))


#: what each hook's implementations may return (items of the returned list), None for nothing
_RETURNS = {
    "gradscope_configure": None,
    "gradscope_statistics": (TailCount, DeadUnits),
    "gradscope_graph": Finding,
    "gradscope_step": Finding,
    "gradscope_run_end": Finding,
    "gradscope_ranks": Finding,
}


class _Isolated:
    """A plugin as the analyzer registers it: the same hook implementations (same names, options
    and so call order), each guarded so that a failure switches this plugin off and the call goes
    on with the others. A failure is an exception, or a result that is not a list of what the hook
    returns. A bad setting (`GradscopeError` from ``gradscope_configure``) is not isolated: the run
    must not start."""

    def __init__(self, pm: pluggy.PluginManager, plugin, name: str, fail):
        self.plugin = plugin
        marker = f"{pm.project_name}_impl"
        for caller in pm.get_hookcallers(plugin) or ():
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin:
                    if impl.wrapper or impl.hookwrapper:
                        guard = _guard_wrapper(impl.function, name, caller.name, fail, impl.wrapper)
                    else:
                        guard = _guard(impl.function, name, caller.name, fail)
                    guarded = functools.wraps(impl.function)(guard)
                    setattr(guarded, marker, dict(impl.opts))
                    setattr(self, impl.function.__name__, guarded)


def _checked(hook: str, result) -> list | None:
    """`result` as a list, or TypeError when it is not a list of what `hook` returns."""
    expected = _RETURNS.get(hook)
    if result is None or expected is None:
        return result
    result = list(result)
    wrong = next((item for item in result if not isinstance(item, expected)), None)
    if wrong is not None:
        names = " or ".join(t.__name__ for t in expected) if isinstance(expected, tuple) else expected.__name__
        raise TypeError(f"returned {type(wrong).__name__}, not a {names}")
    return result


def _guard(function, plugin: str, hook: str, fail):
    def guarded(*args, **kwargs):
        try:
            result = _checked(hook, function(*args, **kwargs))
        except Exception as exc:
            if isinstance(exc, GradscopeError) and hook == "gradscope_configure":
                raise  # a bad setting: the run must not start
            fail(plugin, hook, exc)
            return None
        return result

    return guarded


def _guard_wrapper(function, plugin: str, hook: str, fail, new_style: bool):
    """A hook wrapper (``wrapper=True`` or ``hookwrapper=True``) that fails before or after its
    ``yield``, or (new style) returns results of the wrong kind, is switched off and leaves the
    call's outcome as it was."""

    def guarded(*args, **kwargs):
        teardown = function(*args, **kwargs)
        try:
            next(teardown)
        except Exception as exc:
            fail(plugin, hook, exc)
            return (yield)
        try:
            sent = yield
        except BaseException as inner:  # another implementation raised: let this wrapper see it
            try:
                teardown.throw(inner)
            except StopIteration as stop:
                return stop.value
            except Exception as exc:
                if exc is not inner:
                    fail(plugin, hook, exc)
            raise inner
        try:
            teardown.send(sent)
        except StopIteration as stop:
            if not new_style:
                return stop.value  # pluggy ignores it: old-style wrappers force results instead
            try:
                return [_checked(hook, result) for result in stop.value]
            except Exception as exc:
                fail(plugin, hook, exc)
                return sent
        except Exception as exc:
            fail(plugin, hook, exc)
            return sent
        teardown.close()
        fail(plugin, hook, RuntimeError("the hook wrapper yielded twice"))
        return sent

    return guarded
