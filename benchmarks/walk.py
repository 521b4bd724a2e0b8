"""Autograd walk speed: gradscope.autograd_graph against torchviz.make_dot, same graph.

    python benchmarks/walk.py [--steps 2000]

Builds an unrolled nn.RNNCell graph and times, interleaved, gradscope's walk (to a networkx
graph) and torchviz's make_dot (to a graphviz source, no rendering). torchviz is optional
(`pip install torchviz`); its recursive walk needs a raised recursion limit on deep graphs.
"""

import statistics
import sys
import time

import torch
from torch import nn

import gradscope
from common import steps_and_repeats


def main() -> None:
    args = steps_and_repeats(repeat=5)
    cell = nn.RNNCell(8, 8)
    h, x = torch.zeros(1, 8), torch.randn(1, 8)
    for _ in range(args.steps):
        h = cell(x, h)
    loss = h.sum()
    try:
        from torchviz import make_dot
    except ImportError:
        make_dot = None
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20 * args.steps))
    ours, theirs = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        g = gradscope.autograd_graph(loss, cell)
        ours.append(time.perf_counter() - t)
        if make_dot is not None:
            t = time.perf_counter()
            dot = make_dot(loss, params=dict(cell.named_parameters()))
            dot.source
            theirs.append(time.perf_counter() - t)
    print(f"graph: {g.number_of_nodes()} nodes, RNNCell unrolled {args.steps} steps")
    print(f"gradscope.autograd_graph  median {statistics.median(ours) * 1e3:8.1f} ms")
    if theirs:
        print(f"torchviz.make_dot         median {statistics.median(theirs) * 1e3:8.1f} ms")
        print(f"ratio gradscope / torchviz       {statistics.median(ours) / statistics.median(theirs):8.2f}")


if __name__ == "__main__":
    main()
