"""Walk the autograd graph behind a tensor.

The walk is iterative (a deque, no recursion), so a 17,000-step unrolled RNN or a 100k-node graph
is walked like any other. It produces plain data (`GraphData`: lists of dicts), cheap to hand to
another thread and to store; `to_networkx` turns that into the `networkx.DiGraph` users get.

Edges point the way `grad_fn.next_functions` does: from an op to the ops that produced its inputs.
Each edge keeps `index` (the position in `next_functions`) and `output_nr`.

Module scope comes from marks the module tracer leaves in `Node.metadata` during forward: the
node that produced a module's output carries the module's name and call number, the nodes that
produced its inputs carry "entered here". Walking from the loss, a node takes the scope (and
``call``) of the module call whose output it produced, else its consumer's, and crossing a
module's inputs leaves that module.
"""

from __future__ import annotations

import gc
from collections import deque
from typing import Mapping

import networkx as nx
import torch

from ..data import GraphData, to_networkx  # plain data: reading a record needs no torch
from . import keepalive

OUT_MARK = "gradscope.out"
IN_MARK = "gradscope.in"

_saved_names: dict[type, tuple[str, ...]] = {}
# The C base type: isinstance against it skips torch.Tensor's Python-level __instancecheck__.
_TENSOR = getattr(torch._C, "TensorBase", torch.Tensor)


def _parent(name: str | None) -> str | None:
    if not name:
        return None
    return name.rpartition(".")[0]


def _encloses(outer: str, inner: str | None) -> bool:
    return inner is not None and (outer == "" or inner == outer or inner.startswith(outer + "."))


def _describe_saved(value):
    """Shape and dtype of a saved tensor (or a list of them), plain scalars as they are;
    None for anything else (other sequences are left out)."""
    if isinstance(value, _TENSOR):
        return {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, (tuple, list)):
        if value and isinstance(value[0], _TENSOR):
            return [_describe_saved(v) for v in value]
        if value and type(value[0]) is int:  # sizes, e.g. ExpandBackward0's original shape
            return list(value)
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return None


def _saved(node) -> dict:
    cls = type(node)
    names = _saved_names.get(cls)
    if names is None:
        names = tuple(a for a in dir(cls) if a.startswith("_saved_"))
        _saved_names[cls] = names
    out = {}
    for attr in names:
        try:
            value = getattr(node, attr)
        except RuntimeError:  # freed by backward, or not saved for this call
            continue
        described = _describe_saved(value)
        if described is not None:
            out[attr.removeprefix("_saved_")] = described
    return out


def _scope(node, consumer: tuple) -> tuple:
    """(module, call) a node belongs to, from its marks and its consumer's (module, call)."""
    meta = node.metadata
    outs = meta.get(OUT_MARK)
    if outs:
        return outs[0]  # innermost module call whose output this node produced
    left = [m for m in meta.get(IN_MARK, ()) if _encloses(m, consumer[0])]
    if left:
        return (_parent(min(left, key=len)), None)
    return consumer


def walk(
    root,
    param_names: Mapping[int, str] | None = None,
    *,
    saved: bool = True,
    scopes: bool = False,
) -> GraphData:
    """Walk from the autograd node `root` (a `grad_fn`) and return the graph as plain data.

    `param_names` maps ``id(parameter)`` to its qualified name, used for `AccumulateGrad` nodes.
    `saved` reads saved-tensor shapes (only possible before backward frees them). `scopes` reads
    the module marks left in `Node.metadata` by gradscope's module tracer.
    """
    data = GraphData()
    if root is None:
        return data
    param_names = param_names or {}
    ids: dict = {root: "n0"}
    node_scope = {root: _scope(root, (None, None)) if scopes else (None, None)}
    queue = deque([root])
    while queue:
        node = queue.popleft()
        nid = ids[node]
        info = {"id": nid, "op": type(node).__name__}
        variable = getattr(node, "variable", None) if info["op"] == "AccumulateGrad" else None
        if variable is not None:
            name = param_names.get(id(variable))
            info["kind"] = "param" if name is not None else "leaf"
            info["param"] = name
            info["shape"] = list(variable.shape)
            info["dtype"] = str(variable.dtype).removeprefix("torch.")
            if name is not None:
                node_scope[node] = (_parent(name), None)
        elif isinstance(node, torch.autograd.function.BackwardCFunction):
            info["kind"] = "custom"
            fwd = node._forward_cls
            info["function"] = f"{fwd.__module__}.{fwd.__qualname__}"
            data.functions[info["function"]] = fwd
            if saved:
                try:
                    info["saved"] = {"tensors": [_describe_saved(t) for t in node.saved_tensors]}
                except RuntimeError:  # freed by backward
                    pass
        else:
            info["kind"] = "op"
        if saved and info["kind"] == "op":
            values = _saved(node)
            if values:
                info["saved"] = values
        if scopes:
            info["scope"], call = node_scope[node]
            if call is not None:
                info["call"] = call
        data.nodes.append(info)
        for index, (child, output_nr) in enumerate(node.next_functions):
            if child is None:
                continue
            cid = ids.get(child)
            if cid is None:
                cid = ids[child] = f"n{len(ids)}"
                if scopes:
                    node_scope[child] = _scope(child, node_scope[node])
                queue.append(child)
            data.edges.append((nid, cid, index, output_nr))
    node = child = None
    keepalive.hold(list(ids))
    return data


def param_ids(names: "Mapping[str, torch.Tensor] | torch.nn.Module | None") -> dict[int, str]:
    """``id(tensor) -> name`` from a module (its named parameters) or a name->tensor mapping."""
    if names is None:
        return {}
    if isinstance(names, torch.nn.Module):
        names = dict(names.named_parameters())
    return {id(t): name for name, t in names.items()}


def autograd_graph(
    tensor: torch.Tensor,
    names: "Mapping[str, torch.Tensor] | torch.nn.Module | None" = None,
    *,
    saved: bool = True,
) -> nx.DiGraph:
    """The autograd graph behind `tensor` as a `networkx.DiGraph`.

    One node per autograd node, keyed "n0" (``tensor.grad_fn``), "n1", ... in breadth-first
    order, with attributes ``op`` (the class name torch gives it, e.g. ``AddmmBackward0``),
    ``kind`` (``op``, ``custom``, ``param`` or ``leaf``), for parameters ``param`` (the
    qualified name, when `names` — a module or a name->tensor mapping — knows it), ``shape``
    and ``dtype``, and ``saved`` (shapes of saved tensors, while backward has not freed them).
    Edges carry ``index`` and ``output_nr`` from ``next_functions``. A tensor without
    ``grad_fn`` gives an empty graph.
    """
    enabled = gc.isenabled()
    gc.disable()  # tens of thousands of small dicts: collecting halfway through only costs time
    try:
        return to_networkx(walk(tensor.grad_fn, param_ids(names), saved=saved))
    finally:
        if enabled:
            gc.enable()
