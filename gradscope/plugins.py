"""The plugin manager: built-in and third-party plugins, selection, and their settings.

Plugins come from the ``gradscope.plugins`` entry-point group; gradscope's own checks are
registered there too, exactly like a third-party plugin. An entry point names a module, an
object, or a class (instantiated once per run, so per-run state starts fresh). Selection:

- ``-p no:NAME`` (repeatable) switches a plugin off, built-in or not;
- ``GRADSCOPE_PLUGINS=a,b`` loads only those third-party plugins (empty: none); built-ins load
  unless switched off with ``-p no:NAME``.

Call order: pluggy calls every hook's implementations in one order: gradscope's built-in checks
first, then third-party plugins, each group by entry-point name; ``tryfirst=True`` /
``trylast=True`` on a ``@gradscope.hookimpl`` move an implementation ahead of or after all of
them, and hook wrappers (``wrapper=True``) run around the whole call. Findings are recorded in
that order.

Settings come from ``--set CHECK.KEY=VALUE`` and ``[tool.gradscope.CHECK]`` tables in the
nearest pyproject.toml (the command line wins); plugins read them in ``gradscope_configure``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pluggy

from . import hookspecs
from .errors import GradscopeError

GROUP = "gradscope.plugins"
ENV_ALLOW = "GRADSCOPE_PLUGINS"
hookimpl = pluggy.HookimplMarker("gradscope")


@dataclass
class PluginInfo:
    """What `gradscope plugins` shows about one loaded plugin."""

    name: str
    version: str
    source: str
    hooks: list[str] = field(default_factory=list)


class Config:
    """Plugin settings: ``get(check, key, default)``; values take the type of `default`."""

    def __init__(self, values: dict[str, dict] | None = None):
        self.values = values or {}
        self.given: set[tuple[str, str]] = set()  # set with --set: checked against what plugins read
        self.read: set[tuple[str, str]] = set()  # what plugins asked for: their declared keys

    def get(self, check: str, key: str, default):
        self.read.add((check, key))
        value = self.values.get(check, {}).get(key, default)
        if isinstance(value, str) and not isinstance(default, str) and default is not None:
            return _coerce(f"{check}.{key}", value, default)
        return value

    @classmethod
    def load(cls, sets: list[str] | None = None, start: Path | None = None) -> "Config":
        """Settings from the nearest pyproject.toml's [tool.gradscope], then `sets` on top."""
        values = _pyproject_settings(start or Path.cwd())
        given = set()
        for item in sets or []:
            name, sep, value = item.partition("=")
            check, dot, key = name.partition(".")
            if not sep or not dot or not check or not key:
                raise GradscopeError(f"--set {item!r}: expected CHECK.KEY=VALUE, e.g. dead-relu.fraction=0.8")
            values.setdefault(check, {})[key] = value
            given.add((check, key))
        config = cls(values)
        config.given = given
        return config

    def check_known(self) -> None:
        """Refuse a ``--set`` that no plugin reads (after ``gradscope_configure``): a misspelt
        key would otherwise be ignored in silence. The error lists the keys plugins read."""
        checks = sorted({c for c, _ in self.read})
        for check, key in sorted(self.given - self.read):
            keys = sorted(k for c, k in self.read if c == check)
            if keys:
                raise GradscopeError(f"--set {check}.{key}: no such setting; {check} has: {', '.join(keys)}")
            raise GradscopeError(f"--set {check}.{key}: no check {check!r} with settings is loaded; "
                                 f"checks with settings: {', '.join(checks) or 'none'}")


def _coerce(name: str, text: str, default):
    try:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        return type(default)(text)
    except ValueError:
        kind = "true or false" if isinstance(default, bool) else f"a {type(default).__name__}"
        raise GradscopeError(f"setting {name}: expected {kind}, got {text!r}") from None


def _pyproject_settings(start: Path) -> dict:
    import tomllib

    for folder in [start, *start.parents]:
        path = folder / "pyproject.toml"
        if path.is_file():
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise GradscopeError(f"{path}: cannot read [tool.gradscope] ({exc})") from None
            table = data.get("tool", {}).get("gradscope", {})
            return {k: dict(v) for k, v in table.items() if isinstance(v, dict)}
    return {}


def _entry_points():
    return metadata.entry_points(group=GROUP)


def _dist_of(ep) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"], dist.version


def load(disabled: set[str] | frozenset = frozenset()) -> tuple[pluggy.PluginManager, list[PluginInfo]]:
    """A plugin manager with every selected plugin registered, and what was loaded."""
    pm = pluggy.PluginManager("gradscope")
    pm.add_hookspecs(hookspecs)
    allow = os.environ.get(ENV_ALLOW)
    allowed = None if allow is None else {n.strip() for n in allow.split(",") if n.strip()}
    selected: dict[str, object] = {}
    for ep in sorted(_entry_points(), key=call_order):  # a name taken twice: the built-in wins
        builtin = _dist_of(ep)[0] == "gradscope"
        if ep.name in disabled or (not builtin and allowed is not None and ep.name not in allowed):
            continue
        selected.setdefault(ep.name, ep)
    infos = []
    for ep in reversed(selected.values()):  # pluggy calls the plugin registered last first
        dist, version = _dist_of(ep)
        try:
            plugin = ep.load()
            if isinstance(plugin, type):  # a class: one fresh instance per run
                plugin = plugin()
            pm.register(plugin, name=ep.name)
        except Exception as exc:
            raise GradscopeError(f"plugin {ep.name!r} (from {dist}) failed to load: {type(exc).__name__}: {exc}") from None
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        infos.append(PluginInfo(ep.name, version, "built-in" if dist == "gradscope" else dist, hooks))
    return pm, sorted(infos, key=lambda i: i.name)


def call_order(ep) -> tuple[bool, str]:
    """Built-in checks first, then third-party plugins, each in name order."""
    return _dist_of(ep)[0] != "gradscope", ep.name


def parse_switches(switches: list[str] | None) -> set[str]:
    """Names from ``-p no:NAME`` switches."""
    disabled = set()
    for item in switches or []:
        if not item.startswith("no:") or len(item) == 3:
            raise GradscopeError(f"-p {item}: expected no:NAME (e.g. -p no:dead-relu)")
        disabled.add(item[3:])
    return disabled


def known_names() -> set[str]:
    return {ep.name for ep in _entry_points()}


def check_disabled(disabled: set[str]) -> None:
    unknown = disabled - known_names()
    if unknown:
        raise GradscopeError(
            f"-p no:{sorted(unknown)[0]}: no such plugin (see: gradscope plugins)"
        )


def print_table(infos: list[PluginInfo], out=sys.stdout) -> None:
    width = max((len(i.name) for i in infos), default=4)
    for info in infos:
        print(f"{info.name:{width}}  {info.version:8}  {info.source:10}  {', '.join(info.hooks)}", file=out)
