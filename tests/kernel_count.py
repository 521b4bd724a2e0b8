"""Counting the aten operations a training step runs (each one a kernel launch on a GPU).

Used by tests/test_capture_session.py, which asserts on these counts, and by
benchmarks/kernels.py, which reports them (it puts this folder on its import path). The counter
lives with the tests rather than with the benchmarks because the tests are what vouch for it:
the test suite imports only from its own folder (like checks_helpers), while a benchmark
script may well reach into the test suite's helpers; the other way round would make the tests
depend on a folder of scripts that is neither a package nor run by pytest.
"""

import sys
from collections import Counter
from pathlib import Path

from torch.utils._python_dispatch import TorchDispatchMode

import gradscope

PACKAGE = str(Path(gradscope.__file__).parent)


def from_gradscope() -> bool:
    """Whether gradscope's code is on the calling stack (the user's own reads do not count)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.startswith(PACKAGE):
            return True
        frame = frame.f_back
    return False


class Count(TorchDispatchMode):
    """Non-view aten operations run on this thread, by name. With `host_reads` (the default),
    the reads of a device value made from gradscope's code (``aten._local_scalar_dense``) are
    also tallied under "gradscope host read"."""

    def __init__(self, host_reads: bool = True):
        super().__init__()
        self.ops = Counter()
        self.host_reads = host_reads

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops[func.__name__] += 1
            if self.host_reads and func.__name__ == "_local_scalar_dense" and from_gradscope():
                self.ops["gradscope host read"] += 1
        return func(*args, **(kwargs or {}))
