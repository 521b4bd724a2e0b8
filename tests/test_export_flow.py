"""The module data-flow diagram (--graph flow / modules): read back through Graphviz's JSON."""

import torch
from torch import nn

import gradscope
from gradscope.export import export_record
from test_export import Reuse, needs_dot, structure


def _record(tmp_path, model, x, loss=lambda out: out.sum()):
    torch.manual_seed(0)
    with gradscope.watch(model, record=tmp_path / "r.sqlite", checks=False):
        loss(model(x)).backward()
    return gradscope.open_record(tmp_path / "r.sqlite")


def _flow(tmp_path, record, **kw):
    export_record(record, tmp_path / "f.dot", graph="flow", **kw)
    return structure((tmp_path / "f.dot").read_text())


def _one(diagram, text):
    found = diagram.named(text)
    assert len(found) == 1, (text, found)
    return found[0]


@needs_dot
def test_seed_tutorial_flow_is_the_cnn_in_call_order_with_shapes(run_cli, tmp_path):
    from test_cli import SEED

    run_cli("run", "--record", "seed.sqlite", SEED, check=0)
    run_cli("export", "seed.sqlite", "--graph", "modules", "-o", "m.dot", check=0)  # modules = flow
    diagram = structure((tmp_path / "m.dot").read_text())
    chain = [_one(diagram, "<b>input</b>"), _one(diagram, "conv1 (Conv2d)")]
    relus = diagram.named("<b>Relu</b>")
    pools = diagram.named("<b>MaxPool2DWithIndices</b>")
    assert len(relus) == 4 and len(pools) == 2
    conv2, fc1, fc2, fc3 = (_one(diagram, f"{m} (") for m in ("conv2", "fc1", "fc2", "fc3"))
    mse, loss, view = _one(diagram, "MSELoss (MSELoss)"), _one(diagram, "<b>loss</b>"), _one(diagram, "<b>View</b>")
    edges = diagram.edges
    # conv1 -> relu -> pool -> conv2 -> relu -> pool -> view -> fc1 -> relu -> fc2 -> relu -> fc3 -> MSELoss -> loss
    def after(node):
        out = [b for a, b in edges if a == node]
        assert len(out) == 1, (diagram.labels[node], out)
        return out[0]
    node = chain[1]
    for expect in ("Relu", "MaxPool2DWithIndices", "conv2 (Conv2d)", "Relu", "MaxPool2DWithIndices", "View",
                   "fc1 (Linear)", "Relu", "fc2 (Linear)", "Relu", "fc3 (Linear)", "MSELoss (MSELoss)", "loss"):
        node = after(node)
        assert f"<b>{expect}</b>" in diagram.labels[node]
    assert edges[(chain[0], chain[1])] == "[1, 1, 32, 32]"
    assert edges[(view, fc1)] == "[1, 576]" and edges[(fc3, mse)] == "[1, 10]"
    assert "69,240 params" in diagram.labels[fc1]
    net = diagram.cluster("<b>Net (Net)</b>")
    assert {conv2, fc1, fc2, fc3, view} <= net and mse not in net and loss not in net


class Residual(nn.Module):
    def __init__(self, c=4):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + x)


class ResNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.block = Residual()
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).flatten(1))


@needs_dot
def test_residual_block_has_its_skip_edge_and_a_cluster(tmp_path):
    diagram = _flow(tmp_path, _record(tmp_path, ResNetish(), torch.randn(2, 1, 8, 8)))
    stem, add, bn2 = _one(diagram, "stem (Conv2d)"), _one(diagram, "<b>Add</b>"), _one(diagram, "bn2 (BatchNorm2d)")
    assert diagram.edges[(stem, add)] == "[2, 4, 8, 8]"  # the skip connection
    assert diagram.edges[(bn2, add)] == "[2, 4, 8, 8]"
    assert (stem, _one(diagram, "conv1 (Conv2d)")) in diagram.edges
    block = diagram.cluster("<b>block (Residual)</b>")
    assert {add, bn2, _one(diagram, "conv1 (Conv2d)")} <= block and stem not in block
    # --depth 1 collapses the block into one node that the stem feeds and the head reads
    diagram = _flow(tmp_path, gradscope.open_record(tmp_path / "r.sqlite"), depth=1)
    block = _one(diagram, "block (Residual)")
    assert "collapsed" in diagram.labels[block] and not diagram.named("<b>Add</b>")
    assert (_one(diagram, "stem (Conv2d)"), block) in diagram.edges


@needs_dot
def test_reused_module_gives_one_node_per_call_in_order(tmp_path):
    diagram = _flow(tmp_path, _record(tmp_path, Reuse(), torch.randn(2, 4)))
    fcs = [_one(diagram, f"fc (Linear) call {c}<") for c in (1, 2, 3)]
    acts = [_one(diagram, f"act (ReLU) call {c}<") for c in (1, 2, 3)]
    inp = _one(diagram, "inp (Linear)")
    chain = [inp, fcs[0], acts[0], fcs[1], acts[1], fcs[2], acts[2]]
    for a, b in zip(chain, chain[1:]):
        assert diagram.edges[(a, b)] == "[2, 8]"
    assert (acts[2], _one(diagram, "<b>Sum</b>")) in diagram.edges


class Wide(nn.Module):
    """About 5,000 modules: 50 stages of 10 blocks of 9 small layers."""

    def __init__(self):
        super().__init__()
        block = lambda: nn.Sequential(*[nn.Linear(2, 2) if i % 2 == 0 else nn.Tanh() for i in range(9)])
        self.stages = nn.Sequential(*[nn.Sequential(*[block() for _ in range(10)]) for _ in range(50)])

    def forward(self, x):
        return self.stages(x)


@needs_dot
def test_five_thousand_modules_collapse_by_depth(tmp_path):
    model = Wide()
    assert sum(1 for _ in model.modules()) > 5000
    record = _record(tmp_path, model, torch.randn(1, 2))
    diagram = _flow(tmp_path, record)
    assert len(diagram.labels) < 20
    assert _one(diagram, "stages.0 ... stages.49 (Sequential) x50")
    diagram = _flow(tmp_path, record, depth=3)  # stages, then blocks: 10 blocks fold in each stage
    assert len(diagram.labels) <= 55 and len(diagram.clusters) >= 50
