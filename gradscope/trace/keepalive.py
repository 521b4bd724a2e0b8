"""Release the Python objects of walked autograd nodes in an order that cannot overflow the stack.

Walking ``next_functions`` gives every node a Python object. In recent torch releases a node's
lifetime is then tied to that object, and a graph whose nodes all have one is freed
recursively, one C stack frame chain per node: dropping a 50,000-deep graph after a walk
crashes the process. gradscope therefore keeps the node objects of each walk, and lets one go
only when nothing but gradscope holds its node (torch then adds no reference of its own to the
object, so ``sys.getrefcount`` sees only ours). Freed that way, each node is freed alone: its
inputs are still held here, and are let go on a later pass, the same way.

Passes run at each walk, when a session closes, and at every full garbage collection (a
`gc.callbacks` entry): a graph the user still held when the session closed is let go later,
so the parameters its accumulator nodes reference are freed with their model.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import sys
import threading

_held: list[list] = []
_ids: set[int] = set()  # of the node objects in `_held`
_lock = threading.Lock()


def hold(nodes: list) -> None:
    """Keep `nodes` (node objects, the root first) until their graph is otherwise unreferenced.
    A node already kept by an earlier walk is kept once (a parameter's accumulator node lives on
    from step to step while some graph uses it)."""
    with _lock:
        fresh = [n for n in nodes if id(n) not in _ids]
        _ids.update(map(id, fresh))
        _held.append(fresh)
        if _on_collection not in gc.callbacks:
            gc.callbacks.append(_on_collection)
    release_dead()


def release_dead() -> None:
    """Let go of every held node that only gradscope still holds, repeating while that frees more."""
    with _lock:
        _release()


def _on_collection(phase: str, info: dict) -> None:
    # After a full collection, in whichever thread ran it; never waits for the lock (the
    # collection may have interrupted this very module).
    if phase == "stop" and info.get("generation") == 2 and _held and _lock.acquire(blocking=False):
        try:
            _release()
        finally:
            _lock.release()


def _release() -> None:
    freed = True
    while freed:
        freed = False
        for nodes in _held:
            for i in range(len(nodes)):
                if nodes[i] is not None and sys.getrefcount(nodes[i]) == 2:
                    _ids.discard(id(nodes[i]))
                    nodes[i] = None
                    freed = True
        _held[:] = [kept for kept in ([n for n in nodes if n is not None] for nodes in _held) if kept]


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
