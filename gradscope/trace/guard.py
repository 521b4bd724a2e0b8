"""Hooks run inside the user's training: an exception in gradscope must never become theirs."""

from __future__ import annotations

import functools


def guarded(method):
    """Run a hook method; an exception goes to ``self._failed(method name, exc)`` instead of
    the training loop (it becomes an ``internal-error`` finding) and the hook returns None."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            self._failed(method.__name__, exc)
            return None

    return wrapper
