"""Watched training loops: what fused capture records equals torch's own numbers, the extra work
of a step without statistics does not grow with the model, and gradscope never reads a device
value back on the training thread."""

import math
import threading
from collections import Counter

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradscope
from gradscope.settings import DEFAULTS
from gradscope.trace import blocks, capture
from kernel_count import Count, from_gradscope

DENSE = DEFAULTS.dense_steps


def mlp(tensors: int) -> nn.Module:
    layers = []
    for _ in range(tensors // 2):
        layers += [nn.Linear(6, 6), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def step(net, opt, x, y):
    opt.zero_grad()
    F.cross_entropy(net(x), y).backward()
    opt.step()


def extra_ops_of_a_quiet_step(tensors: int, tmp_path) -> int:
    torch.manual_seed(0)
    net = mlp(tensors)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(4, 6), torch.randint(0, 6, (4,))
    step(net, opt, x, y)
    with Count() as bare:
        step(net, opt, x, y)
    with gradscope.watch(net, opt, record=tmp_path / f"{tensors}.sqlite", stats_every=1000):
        for _ in range(DENSE + 1):
            step(net, opt, x, y)
        with Count() as watched:
            step(net, opt, x, y)
    return sum(watched.ops.values()) - sum(bare.ops.values())


@pytest.mark.parametrize("path", ["gpu", "cpu-runs", "cpu-blocks"])
def test_extra_work_of_a_step_without_statistics_does_not_grow_with_parameters(tmp_path, monkeypatch, path):
    """The launches a GPU would make (segments reduced directly), and the CPU's packed paths:
    runs of equal lengths as views, and by blocks (whatever the lengths)."""
    if path == "gpu":
        monkeypatch.setattr(capture, "BLOCKED", set())
    else:  # always packed (the CPU's choice otherwise depends on the number of tensors)
        monkeypatch.setattr(capture, "FEW", 0)
        monkeypatch.setattr(capture, "BLOCKS_FROM", 0)
    if path == "cpu-blocks":
        monkeypatch.setattr(blocks, "RUNS", 0)
    small = extra_ops_of_a_quiet_step(2 * capture.RUN, tmp_path)  # weights and biases: two runs to pack
    large = extra_ops_of_a_quiet_step(200, tmp_path)
    assert 0 < small == large  # a constant number of multi-tensor launches, not one per tensor


def test_no_host_reads_on_the_training_thread(tmp_path, monkeypatch):
    """Neither `aten._local_scalar_dense` (.item(), bool(t)...) nor .tolist() runs from
    gradscope's code on the training thread in watched steps, with and without full statistics
    (Adam's own reads of its step counter are the user's)."""
    trainer = threading.get_ident()
    reads = Counter()
    for method in ("tolist", "item"):
        original = getattr(torch.Tensor, method)

        def counted(self, *a, _original=original, _method=method, **k):
            if threading.get_ident() == trainer and from_gradscope():
                reads[_method] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, method, counted)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3), nn.Sigmoid())
    opt = torch.optim.Adam(net.parameters())
    x, y = torch.randn(2, 1, 8, 8), torch.randint(0, 3, (2,))
    with gradscope.watch(net, opt, record=tmp_path / "r.sqlite", stats_every=3):
        with Count() as watched:
            for _ in range(DENSE + 6):
                step(net, opt, x, y)
    assert watched.ops["gradscope host read"] == 0
    assert not reads


def test_gradients_and_updates_equal_torch_per_tensor(tmp_path):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    net.half_head = nn.Linear(3, 3).to(torch.bfloat16)  # a second dtype group
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    expected = {}
    path = tmp_path / "r.sqlite"
    with gradscope.watch(net, opt, record=path, stats_every=10):
        for i in range(DENSE + 2):
            opt.zero_grad()
            out = net[2](net[1](net[0](x)))
            loss = F.cross_entropy(out, y) + net.half_head(out.bfloat16()).float().sum() * 0
            loss.backward()
            expected[i] = {n: p.grad.clone() for n, p in net.named_parameters()}
            opt.step()
    record = gradscope.open_record(path)
    for number in (DENSE - 1, DENSE + 1):  # a full-statistics step, then one without
        data = record.step(number)
        for name, grad in expected[number].items():
            stat = data.stat("grad", name)
            g = grad.double()
            assert stat.count == grad.numel()
            assert stat.norm == pytest.approx(torch.linalg.vector_norm(g).item(), rel=1e-3), name
            assert stat.nonfinite == 0
            if number < DENSE:
                assert stat.mean == pytest.approx(g.mean().item(), rel=1e-4, abs=1e-7)
                assert (stat.min, stat.max) == pytest.approx((g.min().item(), g.max().item()), rel=1e-3)
                assert stat.zeros == int((g == 0).sum())
            else:
                assert math.isnan(stat.mean) and stat.zeros is None  # only every stats_every steps
    assert set(record.step(DENSE + 1).updates) == {n for n, _ in net.named_parameters()}


def test_large_activations_on_the_cpu_route_equal_torch(tmp_path):
    """Activations large enough for the CPU's block reductions are recorded as torch computes
    them."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 5))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(256, 64), torch.randint(0, 5, (256,))
    seen = {}
    net[1].register_forward_hook(lambda m, a, out: seen.update(relu=out.detach().double()))
    path = tmp_path / "r.sqlite"
    with gradscope.watch(net, opt, record=path):
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    relu = seen["relu"]  # the last step's
    assert relu.numel() >= capture.BLOCKS_FROM and capture.BLOCKED == {"cpu"}
    stat = gradscope.open_record(path).step(1).stat("activation", "1")
    assert stat.count == relu.numel() and stat.zeros == int((relu == 0).sum()) and stat.nonfinite == 0
    assert (stat.min, stat.max) == (relu.min().item(), pytest.approx(relu.max().item(), rel=1e-7))
    assert stat.mean == pytest.approx(relu.mean().item(), rel=1e-6)
    assert stat.std == pytest.approx(relu.std(correction=0).item(), rel=1e-6)
    assert stat.norm == pytest.approx(torch.linalg.vector_norm(relu).item(), rel=1e-6)


def test_sparse_gradients_are_recorded_and_their_nonfinite_values_found(tmp_path):
    torch.manual_seed(2)
    emb = nn.Embedding(20, 4, sparse=True)
    opt = torch.optim.SparseAdam(emb.parameters())
    path = tmp_path / "r.sqlite"
    grads = []
    with gradscope.watch(emb, opt, record=path, stats_every=1000):
        for i in range(DENSE + 2):
            opt.zero_grad()
            scale = float("nan") if i == DENSE + 1 else 1.0
            (emb(torch.tensor([1, 1, 5])).sum() * scale).backward()
            grads.append(emb.weight.grad.coalesce())
            opt.step()
    record = gradscope.open_record(path)
    good = record.step(DENSE).stat("grad", "weight")
    assert good.count == 8  # two stored rows of 4
    assert good.norm == pytest.approx(torch.linalg.vector_norm(grads[DENSE].values()).item())
    assert good.nonfinite == 0
    assert record.step(DENSE + 1).stat("grad", "weight").nonfinite == 1
    assert any(f["check"] == "nonfinite" for f in record.findings())


def test_statistics_steps_reuse_their_output_gradient_hooks(tmp_path):
    """Every statistics step hooks each module output for its gradient: the same hook object
    from step to step (new ones were objects per module call that outlived the step)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    outputs = []
    model[1].register_forward_hook(lambda module, args, out: outputs.append(out))
    with gradscope.watch(model, opt, record=tmp_path / "r.sqlite", stats_every=1):
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(5, 3)).pow(2).mean().backward()
            opt.step()
    (first, *later) = [list(out._backward_hooks.values()) for out in outputs]
    assert len(first) == 1 and all(len(hooks) == 1 and hooks[0] is first[0] for hooks in later)
    with gradscope.open_record(tmp_path / "r.sqlite") as record:
        assert [s for s, _ in record.stat_series("grad-output", "1")] == [0, 1, 2]


def test_a_statistics_step_keeps_few_objects_alive_per_module_tensor(tmp_path, monkeypatch):
    """What a step keeps alive until its end (and until the recorder has read it) outlives young
    collections and brings the next full collection nearer, which walks every object of the
    process: with thousands of modules, hundreds of milliseconds. Row keys are the same objects
    from step to step, and a module tensor taken for its statistics is one object (with its
    weak reference); the user's tensors (gradients, outputs) are not counted."""
    import gc

    from gradscope.record.writer import RecordWriter
    from gradscope.trace.step import OpenStep

    torch.manual_seed(0)
    net = mlp(80)  # 40 linear layers and 39 tanh: 79 activations and 79 output gradients
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(4, 6), torch.randint(0, 6, (4,))
    alive = {}
    snapshot = OpenStep.snapshot

    def counted(self, *args, **kwargs):
        if "before" in alive and "new" not in alive:
            alive["new"] = [o for o in gc.get_objects()
                            if id(o) not in alive["before"] and not isinstance(o, torch.Tensor)]
        return snapshot(self, *args, **kwargs)

    monkeypatch.setattr(OpenStep, "snapshot", counted)
    monkeypatch.setattr(RecordWriter, "send_step", lambda self, snapshot: None)  # no recorder at work meanwhile
    with gradscope.watch(net, opt, record=tmp_path / "r.sqlite", stats_every=1):
        for _ in range(DENSE + 2):
            step(net, opt, x, y)
        gc.collect()
        gc.disable()
        try:
            alive["before"] = {id(o) for o in gc.get_objects()}
            step(net, opt, x, y)
        finally:
            gc.enable()
    module_tensors = 2 * 79
    assert len(alive["new"]) <= 3 * module_tensors, collections_of(alive["new"])  # 2.4; 8.9 with new keys per row


def collections_of(objects) -> list:
    return Counter(type(o).__name__ for o in objects).most_common(6)
