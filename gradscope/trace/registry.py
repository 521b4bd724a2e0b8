"""What a session watches, by weak reference: modules and parameters with their qualified names.

Python reuses the id of a freed object, so every lookup by id also checks that the weak
reference still points at the very object asked about. A freed module's entry goes with it, and
a parameter-free root built afresh every step (``nn.MSELoss()(out, y)`` inside the loop) takes
over the name of a freed root of its class, so such modules never grow the registry or the
record's module table.
"""

from __future__ import annotations

import itertools
import operator
import weakref

import torch


_training = operator.attrgetter("training")


class Registry:
    def __init__(self):
        self._modules: dict[int, tuple[weakref.ref, str, str]] = {}  # id -> (ref, name, root prefix)
        self._wrappers: list[tuple[weakref.ref, weakref.ref]] = []  # (wrapper, the module inside)
        self._roots: dict[str, tuple[weakref.ref, str, bool]] = {}  # prefix -> (ref, class, has params)
        self._prefixes: set[str] = set()
        self._prefixed_models = False  # a root with parameters was given a prefix by name
        self._param_ids: dict[int, str] = {}
        self._root_ids: set[int] = set()  # ids of watched root modules (checked against `_modules`)
        self.params: dict[str, weakref.ref] = {}  # qualified name -> parameter
        self._listed: tuple[list, list] | None = None  # (refs, names) of `_modules`; None: to list anew

    def _entry(self, module) -> tuple | None:
        entry = self._modules.get(id(module))
        return entry if entry is not None and entry[0]() is module else None

    def module_name(self, module) -> str | None:
        """The qualified name of a watched module, else None."""
        entry = self._entry(module)
        return None if entry is None else entry[1]

    def module_root(self, module) -> str | None:
        """The name prefix of the root a watched module belongs to, else None."""
        entry = self._entry(module)
        return None if entry is None else entry[2]

    def is_root(self, module) -> bool:
        """Whether `module` is a watched root, or a ``torch.compile`` wrapper of one."""
        if id(module) in self._root_ids:
            entry = self._entry(module)
            return entry is not None and entry[1] == entry[2]
        if not self._wrappers:
            return False
        inner = self.compiled_inner(module)
        return inner is not None and self.is_root(inner)

    def may_watch(self, module) -> bool:
        """A quick first test for module hooks: False means `module` is surely not watched."""
        return id(module) in self._modules or bool(self._wrappers)

    def knows(self, module) -> bool:
        """Whether `module` is watched, or wraps a watched module (DDP, torch.compile)."""
        return self.module_name(module) is not None or any(ref() is module for ref, _ in self._wrappers)

    def add_wrapper(self, wrapper, inner) -> None:
        self._wrappers = [(w, i) for w, i in self._wrappers if w() is not None]
        self._wrappers.append((weakref.ref(wrapper), weakref.ref(inner)))

    def compiled_inner(self, module):
        """The watched module inside `module` when `module` is a ``torch.compile`` wrapper."""
        if not self._wrappers or type(module).__name__ != "OptimizedModule":
            return None
        for wrapper, inner in self._wrappers:
            if wrapper() is module:
                return inner()
        return None

    def new_prefix(self, module: torch.nn.Module, name: str | None) -> str:
        """The name prefix of a new root: `name` when given; else '' for the first one with
        parameters while no other root with parameters has a prefix (so names read
        ``fc1.weight``), else its class name (``MSELoss``, ``Discriminator2``). A parameter-free
        root takes the prefix of a freed parameter-free root of its class."""
        has_params = any(True for _ in module.parameters())
        cls = type(module).__name__
        if name is None:
            if has_params and "" not in self._prefixes and not self._prefixed_models:
                name = ""
            else:
                name = None if has_params else self._freed_root(cls)
                if name is None:
                    name = self.free_prefix(cls)
        elif has_params and name:
            self._prefixed_models = True
        self._prefixes.add(name)
        self._roots[name] = (weakref.ref(module), cls, has_params)
        return name

    def free_prefix(self, base: str) -> str:
        """`base`, or `base` followed by a number, whichever no root uses yet."""
        n, name = 1, base
        while name in self._prefixes:
            n += 1
            name = f"{base}{n}"
        return name

    def _freed_root(self, cls: str) -> str | None:
        for prefix, (ref, root_cls, has_params) in self._roots.items():
            if root_cls == cls and not has_params and ref() is None:
                return prefix
        return None

    def add_module(self, module, name: str, root: str) -> None:
        key = id(module)

        def forget(ref, key=key, modules=self._modules, registry=weakref.ref(self)):
            entry = modules.get(key)
            if entry is not None and entry[0] is ref:
                del modules[key]
                if (alive := registry()) is not None:
                    alive._listed = None

        self._modules[key] = (weakref.ref(module, forget), name, root)
        self._listed = None
        if name == root:
            self._root_ids.add(key)

    def in_eval(self) -> list[str]:
        """Names of the watched modules in eval mode (every step: C-level passes over the
        modules listed once, no object per module)."""
        listed = self._listed
        if listed is None:
            entries = list(self._modules.values())
            listed = self._listed = ([entry[0] for entry in entries], [entry[1] for entry in entries])
        refs, names = listed
        try:
            return list(itertools.compress(names, map(operator.not_, map(_training, map(operator.call, refs)))))
        except AttributeError:  # a module freed since it was listed
            return [name for ref, name in zip(refs, names) if (module := ref()) is not None and not module.training]

    def __len__(self) -> int:
        """How many watched modules are alive."""
        return len(self._modules)

    def param_name(self, param) -> str | None:
        name = self._param_ids.get(id(param))
        return name if name is not None and self.params[name]() is param else None

    def add_param(self, name: str, param) -> None:
        self._param_ids[id(param)] = name
        self.params[name] = weakref.ref(param)

    def live_param_ids(self) -> dict[int, str]:
        """id(parameter) -> name for the parameters still alive (for the autograd walk)."""
        return {id(p): name for name, ref in list(self.params.items()) if (p := ref()) is not None}
