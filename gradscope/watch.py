"""`gradscope.watch`: attach to models and optimizers from inside a training script."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .analysis import Analyzer
from .distributed import record_path, run_fields, unwrap
from .plugins import Config, check_disabled, load
from .session import Session
from .settings import DEFAULTS, Settings


def make_analyzer(disabled: set[str], settings: dict | None = None, sets: list[str] | None = None) -> Analyzer:
    """The plugins of a run: loaded, configured, ready for the recorder thread."""
    check_disabled(disabled)
    config = Config.load(sets)
    for check, values in (settings or {}).items():
        config.values.setdefault(check, {}).update(values)
    pm, _ = load(disabled)
    analyzer = Analyzer(pm, config)
    config.check_known()
    return analyzer


def _as_list(value, kind) -> list:
    if value is None:
        return []
    if isinstance(value, kind):
        return [value]
    if isinstance(value, dict):
        return list(value.items())
    return list(value)


def _unwrap_optimizer(opt):
    """The torch optimizer inside framework wrappers (Lightning's, accelerate's)."""
    while isinstance(getattr(opt, "optimizer", None), torch.optim.Optimizer) and opt.optimizer is not opt:
        opt = opt.optimizer
    return opt


def watch(
    model,
    optimizer=None,
    *,
    record: str | Path | None = None,
    sample: int = DEFAULTS.sample,
    max_calls: int = DEFAULTS.max_calls,
    graph_every: int = DEFAULTS.graph_every,
    stats_every: int = DEFAULTS.stats_every,
    checks: bool = True,
    disable: tuple[str, ...] = (),
    settings: dict[str, dict] | None = None,
) -> Session:
    """Watch `model` (a module, a list of modules, or a dict name -> module) and `optimizer`
    (one or a list) and record every step.

    Use it as a context manager (``with gradscope.watch(model, opt): ...``) or keep the
    returned `Session` and call ``.close()``. On close every hook is removed and the record is
    finished. `record` is the record file (default: a new file in ``.gradscope/runs/``); see
    `gradscope.settings.Settings` for `sample`, `max_calls`, `graph_every` and `stats_every`. `checks=False` records without
    running any plugin; `disable` names plugins to switch off (like ``-p no:NAME``);
    `settings` overrides check settings, e.g. ``{"dead-relu": {"fraction": 0.9}}`` (on top of
    ``[tool.gradscope]`` in pyproject.toml). Watching never changes what training computes.
    """
    models = _as_list(model, torch.nn.Module)
    optimizers = [_unwrap_optimizer(o) for o in _as_list(optimizer, torch.optim.Optimizer)]
    if not models:
        raise TypeError("gradscope.watch needs at least one torch.nn.Module")
    chosen = Settings(sample=sample, max_calls=max_calls, graph_every=graph_every, stats_every=stats_every)
    analyzer = make_analyzer(set(disable), settings) if checks else None
    session = Session(
        record_path(record, "watch"),
        settings=chosen,
        analyzer=analyzer,
        run={"mode": "watch", "argv": list(sys.argv), **run_fields()},
    )
    try:
        for item in models:
            name, module = item if isinstance(item, tuple) else (None, item)
            if not isinstance(module, torch.nn.Module):
                raise TypeError(f"gradscope.watch: expected a torch.nn.Module, got {type(module).__name__}")
            if name is None and len(models) > 1:  # several models: each name says whose it is
                name = session.free_prefix(type(unwrap(module)).__name__)
            session.add_model(module, name)
        for opt in optimizers:
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(f"gradscope.watch: expected a torch.optim.Optimizer, got {type(opt).__name__}")
            session.add_optimizer(opt)
    except BaseException:
        session.close("failed")
        raise
    return session
