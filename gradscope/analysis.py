"""Run the plugins' checks in the recorder thread, each plugin isolated from the others.

`Analyzer` is built on the thread that starts a run (it calls ``gradscope_configure`` and
collects ``gradscope_statistics`` there) and then lives in the recorder thread: it follows the
run's metadata (`observe`), judges each step (`step`) and the end of the run (`finish`). Hooks
are called one implementation at a time, in pluggy's order, so that a plugin that raises only
loses itself: its error becomes a ``plugin-error`` finding and it is unregistered.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pluggy

from .data import StepData
from .errors import GradscopeError
from .findings import Finding
from .trace.autograd import to_networkx
from .trace.tails import TailCount


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

    def optimized(self) -> set[str]:
        """Names of parameters some optimizer holds."""
        return {name for opt in self.optimizers.values() for name in opt["params"]}

    def module_of(self, param: str) -> str | None:
        return self.parameters.get(param, {}).get("module")


class Analyzer:
    """The plugins of one run, called safely."""

    def __init__(self, pm: pluggy.PluginManager, config):
        self.pm = pm
        self.run = RunView()
        self.errors: list[Finding] = []
        self._call("gradscope_configure", config=config)
        self.tail_requests: list[TailCount] = []
        for result in self._call("gradscope_statistics"):
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
            findings += self._findings("gradscope_graph", step=data.step, graph=graph, run=self.run)
        return findings + self._findings("gradscope_step", step=data, run=self.run)

    def finish(self) -> list[dict]:
        """Findings at the end of the run."""
        return self._findings("gradscope_run_end", run=self.run)

    def _findings(self, hook: str, **kwargs) -> list[dict]:
        out = []
        for plugin, result in self._call(hook, with_plugin=True, **kwargs):
            for item in result or ():
                if not isinstance(item, Finding):
                    self._fail(plugin, hook, TypeError(f"returned {type(item).__name__}, not a Finding"))
                    break
                out.append(item.to_dict())
        out += [f.to_dict() for f in self.errors]
        self.errors.clear()
        return out

    def _call(self, hook: str, with_plugin: bool = False, **kwargs) -> list:
        results = []
        caller = getattr(self.pm.hook, hook)
        for impl in reversed(caller.get_hookimpls()):
            try:
                result = impl.function(*[kwargs[name] for name in impl.argnames])
            except Exception as exc:
                if isinstance(exc, GradscopeError) and hook == "gradscope_configure":
                    raise  # a bad setting: the run must not start
                self._fail(impl.plugin_name, hook, exc)
                continue
            if result is not None:
                results.append((impl.plugin_name, result) if with_plugin else result)
        return results

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
