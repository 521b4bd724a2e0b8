"""Waiting for a condition, with a deadline: the machines running the tests are loaded, so a
test never sleeps a fixed time for something to happen."""

import time


def wait_for(condition, what, timeout=120.0):
    """Return once `condition()` holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
