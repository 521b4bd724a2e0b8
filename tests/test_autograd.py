"""autograd_graph agrees with torch's own grad_fn.next_functions, at any depth."""

import gc
import subprocess
import sys
import weakref

import networkx as nx
import torch
from torch import nn

import gradscope
from gradscope.trace import keepalive


class Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 3

    @staticmethod
    def backward(ctx, grad):
        return grad * 3


def _by_torch(root):
    """Every node reachable from `root`, by identity, walked with an explicit stack."""
    seen, stack = {root}, [root]
    while stack:
        for child, _ in stack.pop().next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def test_graph_matches_next_functions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    loss = nn.functional.mse_loss(model(torch.randn(5, 4)), torch.randn(5, 2))
    g = gradscope.autograd_graph(loss, model)
    assert g.number_of_nodes() == len(_by_torch(loss.grad_fn))
    root = g.nodes["n0"]
    assert root["op"] == "MseLossBackward0"
    children = sorted(g.out_edges("n0", data=True), key=lambda e: e[2]["index"])
    assert [g.nodes[v]["op"] for _, v, _ in children] == [
        type(fn).__name__ for fn, _ in loss.grad_fn.next_functions if fn is not None
    ]
    params = {d["param"]: d for _, d in g.nodes(data=True) if d["kind"] == "param"}
    assert set(params) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert params["0.weight"]["shape"] == [3, 4]
    assert nx.is_directed_acyclic_graph(g)


def test_saved_tensor_shapes_before_backward_and_none_after():
    x = torch.randn(2, 3, requires_grad=True)
    w = torch.randn(3, 4, requires_grad=True)
    y = (x @ w).sum()
    before = gradscope.autograd_graph(y)
    mm = next(d for _, d in before.nodes(data=True) if d["op"] == "MmBackward0")
    assert mm["saved"]["self"] == {"shape": [2, 3], "dtype": "float32"}
    assert mm["saved"]["mat2"]["shape"] == [3, 4]
    y.backward()
    after = gradscope.autograd_graph(y)  # saved tensors are freed now: no crash, no shapes
    mm = next(d for _, d in after.nodes(data=True) if d["op"] == "MmBackward0")
    assert "self" not in mm.get("saved", {})
    leaves = [d for _, d in after.nodes(data=True) if d["kind"] == "leaf"]
    assert sorted(d["shape"] for d in leaves) == [[2, 3], [3, 4]]


def test_custom_function_is_marked():
    x = torch.randn(3, requires_grad=True)
    g = gradscope.autograd_graph(Scale.apply(x).sum())
    custom = [d for _, d in g.nodes(data=True) if d["kind"] == "custom"]
    assert len(custom) == 1
    assert custom[0]["op"] == "ScaleBackward"
    assert custom[0]["function"].endswith("Scale")


def test_edges_keep_input_index_and_shared_nodes_once():
    x = torch.randn(3, requires_grad=True)
    y = x * 2
    z = (y + y).sum()  # y's node is an input twice
    g = gradscope.autograd_graph(z)
    add = next(n for n, d in g.nodes(data=True) if d["op"] == "AddBackward0")
    mul = next(n for n, d in g.nodes(data=True) if d["op"] == "MulBackward0")
    # one networkx edge for the pair, but the node itself appears once
    assert g.has_edge(add, mul)
    assert sum(1 for _, d in g.nodes(data=True) if d["op"] == "MulBackward0") == 1


def test_unrolled_rnn_cell_17000_steps_deep():
    torch.manual_seed(0)
    cell = nn.RNNCell(2, 2)
    h = torch.zeros(1, 2)
    x = torch.randn(1, 2)
    for _ in range(17_000):
        h = cell(x, h)
    assert sys.getrecursionlimit() < 17_000  # a recursive walk could not get to the bottom
    g = gradscope.autograd_graph(h.sum(), cell, saved=False)
    assert g.number_of_nodes() > 100_000
    # the longest chain really is as deep as the unrolling
    tanh = sum(1 for _, d in g.nodes(data=True) if d["op"] == "TanhBackward0")
    assert tanh == 17_000
    params = {d["param"] for _, d in g.nodes(data=True) if d["kind"] == "param"}
    assert params == {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}


def test_freeing_a_deep_graph_after_a_walk_does_not_crash():
    # Run in a child process: a stack overflow would kill the test run itself.
    code = (
        "import torch, gradscope\n"
        "from gradscope.trace import keepalive\n"
        "x = torch.randn(2, requires_grad=True); h = x.clone()\n"
        "for _ in range(60000): h = torch.tanh(h * 1.0001)\n"
        "g = gradscope.autograd_graph(h.sum())\n"
        "del h\n"
        "keepalive.release_dead()\n"
        "assert keepalive.held() == 0\n"
        "h = x.clone()\n"
        "for _ in range(60000): h = h * 1.0001\n"
        "g = gradscope.autograd_graph(h)\n"
        "print('ok', g.number_of_nodes())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ok", "60002"]  # 60,000 muls, the clone, x


def test_a_model_deleted_after_its_session_frees_its_weights(tmp_path):
    """The last loss was still held when the session closed, so its graph (and the parameters'
    accumulator nodes gradscope walked, at several steps) could not be let go then; once the
    user lets go of the loss and the model, the weights are freed."""
    def train():
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with gradscope.watch(model, opt, record=tmp_path / "r.sqlite", graph_every=1, checks=False):
            for _ in range(3):
                opt.zero_grad()
                loss = model(torch.randn(2, 4)).sum()
                loss.backward()
                opt.step()
        return weakref.ref(model[0].weight), loss

    weight, loss = train()
    assert weight() is not None  # the loss's graph holds it
    del loss
    gc.collect()
    assert weight() is None
    assert keepalive.held() == 0


def test_tensor_without_grad_fn_gives_empty_graph():
    assert gradscope.autograd_graph(torch.ones(3)).number_of_nodes() == 0
