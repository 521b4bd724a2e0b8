"""What a session watches, by weak reference: modules and parameters with their qualified names.

Python reuses the id of a freed object, so every lookup by id also checks that the weak
reference still points at the very object asked about.
"""

from __future__ import annotations

import weakref
from typing import Iterator

import torch


class Registry:
    def __init__(self):
        self._modules: dict[int, tuple[weakref.ref, str]] = {}
        self._wrappers: list[weakref.ref] = []
        self._prefixes: set[str] = set()
        self._prefixed_models = False  # a root with parameters was given a prefix by name
        self._param_ids: dict[int, str] = {}
        self.params: dict[str, weakref.ref] = {}  # qualified name -> parameter

    def module_name(self, module) -> str | None:
        """The qualified name of a watched module, else None."""
        entry = self._modules.get(id(module))
        return entry[1] if entry is not None and entry[0]() is module else None

    def knows(self, module) -> bool:
        """Whether `module` is watched, or wraps a watched module (DDP, torch.compile)."""
        return self.module_name(module) is not None or any(ref() is module for ref in self._wrappers)

    def add_wrapper(self, wrapper) -> None:
        self._wrappers.append(weakref.ref(wrapper))

    def new_prefix(self, module: torch.nn.Module, name: str | None) -> str:
        """The name prefix of a new root: `name` when given; else '' for the first one with
        parameters while no other root with parameters has a prefix (so names read
        ``fc1.weight``), else its class name (``MSELoss``, ``Discriminator2``)."""
        has_params = any(True for _ in module.parameters())
        if name is None:
            if has_params and "" not in self._prefixes and not self._prefixed_models:
                name = ""
            else:
                name = self.free_prefix(type(module).__name__)
        elif has_params and name:
            self._prefixed_models = True
        self._prefixes.add(name)
        return name

    def free_prefix(self, base: str) -> str:
        """`base`, or `base` followed by a number, whichever no root uses yet."""
        n, name = 1, base
        while name in self._prefixes:
            n += 1
            name = f"{base}{n}"
        return name

    def add_module(self, module, name: str) -> None:
        self._modules[id(module)] = (weakref.ref(module), name)

    def modules(self) -> Iterator[tuple[torch.nn.Module, str]]:
        """(module, name) of every watched module still alive."""
        for ref, name in self._modules.values():
            module = ref()
            if module is not None:
                yield module, name

    def param_name(self, param) -> str | None:
        name = self._param_ids.get(id(param))
        return name if name is not None and self.params[name]() is param else None

    def add_param(self, name: str, param) -> None:
        self._param_ids[id(param)] = name
        self.params[name] = weakref.ref(param)

    def live_param_ids(self) -> dict[int, str]:
        """id(parameter) -> name for the parameters still alive (for the autograd walk)."""
        return {id(p): name for name, ref in self.params.items() if (p := ref()) is not None}
