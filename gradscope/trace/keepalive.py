"""Release the Python objects of walked autograd nodes in an order that cannot overflow the stack.

Walking ``next_functions`` gives every node a Python object. In recent torch releases a node's
lifetime is then tied to that object, and a graph whose nodes all have one is freed
recursively, one C stack frame chain per node: dropping a 50,000-deep graph after a walk
crashes the process. gradscope therefore keeps the node objects of each walk, and lets one go
only when nothing but gradscope holds its node (torch then adds no reference of its own to the
object, so ``sys.getrefcount`` sees only ours). Freed that way, each node is freed alone: its
inputs are still held here, and are let go on a later pass, the same way.
"""

from __future__ import annotations

import atexit
import ctypes
import sys
import threading

_held: list[list] = []
_lock = threading.Lock()


def hold(nodes: list) -> None:
    """Keep `nodes` (node objects, the root first) until their graph is otherwise unreferenced."""
    with _lock:
        _held.append(nodes)
    release_dead()


def release_dead() -> None:
    """Let go of every held node that only gradscope still holds, repeating while that frees more."""
    with _lock:
        for nodes in list(_held):
            freed = True
            while freed:
                freed = False
                for i in range(len(nodes)):
                    if nodes[i] is not None and sys.getrefcount(nodes[i]) == 2:
                        nodes[i] = None
                        freed = True
                nodes[:] = [n for n in nodes if n is not None]
            if not nodes:
                _held.remove(nodes)


def held() -> int:
    """How many node objects are still kept."""
    with _lock:
        return sum(len(nodes) for nodes in _held)


@atexit.register
def _keep_at_exit() -> None:
    # At interpreter exit the user's graphs may outlive this module's globals; freeing the node
    # objects first would make freeing those graphs recursive. The process is ending: keep them.
    for nodes in _held:
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(nodes))
