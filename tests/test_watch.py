"""gradscope.watch on real training loops: numerics untouched, data agreeing with torch."""

import dataclasses
import time

import pytest
import torch
from torch import nn

import gradscope
from gradscope import report
from gradscope.settings import Settings
from gradscope.trace import patches


class Block(nn.Module):
    """Conv, batch-norm, in-place ReLU (torchvision style), dropout, a shared layer used twice."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.3)
        self.shared = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.drop(self.relu(self.bn(self.conv(x))))
        x = x.mean(1).flatten(1)
        x = torch.tanh(self.shared(x))
        x = torch.tanh(self.shared(x))
        return self.head(x)


def wait_until(condition, timeout=60.0):
    """Poll `condition` until it holds; fail the test if it does not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the recorder"
        time.sleep(0.01)


def recorded_steps(path) -> list[int]:
    with gradscope.open_record(path) as record:
        return record.step_numbers()


def train(steps=4, record=None, watch=True):
    torch.manual_seed(0)
    model = Block()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = torch.randn(steps, 8, 1, 4, 4)
    target = torch.randint(0, 3, (steps, 8))
    session = gradscope.watch(model, opt, record=record) if watch else None
    try:
        for i in range(steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(data[i]), target[i])
            loss.backward()
            opt.step()
    finally:
        if session is not None:
            session.close()
    return model, session


def test_weights_bit_identical_with_and_without_watch(tmp_path):
    bare, _ = train(watch=False)
    watched, _ = train(record=tmp_path / "r.sqlite")
    for (name, a), (_, b) in zip(bare.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), name


def test_every_hook_is_removed_on_close(tmp_path):
    model, _ = train(steps=1, record=tmp_path / "r.sqlite")
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert torch.autograd.backward.__module__ == "torch.autograd"
    assert not patches._listeners


def test_statistics_agree_with_torch(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(6, 5)
    seen = {}
    model[0].register_forward_hook(lambda m, i, o: seen.update(act=o.detach().clone()) or o.retain_grad() or seen.update(out=o))
    with gradscope.watch(model, opt, record=tmp_path / "r.sqlite"):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        grad_w = model[2].weight.grad.clone()
        before = model[2].weight.detach().clone()
        opt.step()
        after = model[2].weight.detach().clone()
    step = gradscope.open_record(tmp_path / "r.sqlite").step(0)

    act = step.stat("activation", "0")
    assert act.count == 42
    assert act.mean == pytest.approx(seen["act"].mean().item(), rel=1e-6)
    assert act.std == pytest.approx(seen["act"].std(correction=0).item(), rel=1e-6)
    assert act.norm == pytest.approx(seen["act"].norm().item(), rel=1e-6)
    out_grad = step.stat("grad-output", "0")
    assert out_grad.norm == pytest.approx(seen["out"].grad.norm().item(), rel=1e-6)
    assert out_grad.zeros == int((seen["out"].grad == 0).sum())
    grad = step.stat("grad", "2.weight")
    assert grad.norm == pytest.approx(grad_w.norm().item(), rel=1e-6)
    assert grad.max == pytest.approx(grad_w.max().item(), rel=1e-6)
    assert step.stat("loss", "loss").mean == pytest.approx(loss.item(), rel=1e-6)
    update = step.updates["2.weight"]
    assert update.delta == pytest.approx((after - before).norm().item(), rel=1e-5)
    assert update.weight == pytest.approx(before.norm().item(), rel=1e-6)
    assert update.ratio == pytest.approx(0.1 * grad_w.norm().item() / before.norm().item(), rel=1e-4)
    assert update.outside == 0.0


def test_large_parameters_are_sampled_not_copied(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(100, 100)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with gradscope.watch(model, opt, record=tmp_path / "r.sqlite", sample=128) as session:
        assert 64 < session._tracker._entries["weight"].last.numel() <= 128
        opt.zero_grad()
        model(torch.randn(3, 100)).sum().backward()
        opt.step()
    record = gradscope.open_record(tmp_path / "r.sqlite")
    params = {p["name"]: p for p in record.parameters()}
    assert params["weight"]["sampled"] and not params["bias"]["sampled"]
    assert record.step(0).updates["weight"].delta > 0


def test_calls_shapes_weight_sharing_and_inplace(tmp_path):
    train(steps=2, record=tmp_path / "r.sqlite")
    record = gradscope.open_record(tmp_path / "r.sqlite")
    calls = record.calls(step=1)
    shared = [c for c in calls if c["module"] == "shared"]
    assert [c["call"] for c in shared] == [0, 1]
    assert shared[0]["inputs"][0]["shape"] == [8, 16]
    relu = next(c for c in calls if c["module"] == "relu")
    assert relu["outputs"][0]["shape"] == [8, 4, 4, 4]
    step = record.step(1)
    assert step.stat("grad-output", "relu") is not None  # in-place module, gradient still seen
    assert step.stat("activation", "shared", call=1) is not None
    assert step.zero_grad == [{"by": "optimizer0", "set_to_none": True}]
    assert step.optimizer_steps == [0]
    graph = record.graph()
    ops = {n["op"] for n in graph.nodes}
    assert "ConvolutionBackward0" in ops and "NllLossBackward0" in ops
    conv = next(n for n in graph.nodes if n["op"] == "ConvolutionBackward0")
    assert conv["scope"] == "conv"


@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    extra: object = None


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x, scale=1.0):
        y = self.fc(x) * scale
        return {"pair": (y, None), "out": Out(y.sum(1), extra="tag"), "count": 3,
                "ints": torch.arange(3), "cplx": torch.ones(2, dtype=torch.complex64),
                "sparse": torch.eye(2).to_sparse(), "meta": torch.empty(2, device="meta")}


def test_nested_outputs_and_unusual_tensors(tmp_path):
    model = Nested()
    with gradscope.watch(model, record=tmp_path / "r.sqlite"):
        out = model(torch.randn(4, 3), scale=2.0)
        out["out"].logits.sum().backward()
    record = gradscope.open_record(tmp_path / "r.sqlite")
    call = next(c for c in record.calls(step=0) if c["module"] == "")
    by_path = {o["path"]: o for o in call["outputs"]}
    assert by_path["pair.0"]["shape"] == [4, 2]
    assert by_path["pair.1"]["type"] == "NoneType"
    assert by_path["out.logits"]["shape"] == [4]
    assert by_path["out.extra"]["type"] == "str"
    assert by_path["count"]["type"] == "int"
    assert by_path["ints"]["dtype"] == "int64"
    assert by_path["sparse"]["layout"] == "sparse_coo"
    assert by_path["meta"]["device"] == "meta"
    assert {i.get("type") for i in call["inputs"]} >= {"float"}  # the scale keyword
    step = record.step(0)
    assert step.stat("activation", "", path="cplx").max == pytest.approx(1.0)
    assert step.stat("activation", "", path="sparse").count == 2  # its stored values
    assert step.stat("grad", "fc.weight") is not None


def test_several_models_and_optimizers_and_accumulation(tmp_path):
    torch.manual_seed(0)
    gen, disc = nn.Linear(2, 2), nn.Linear(2, 1)
    og, od = torch.optim.SGD(gen.parameters(), lr=0.1), torch.optim.SGD(disc.parameters(), lr=0.1)
    with gradscope.watch({"gen": gen, "disc": disc}, [od, og], record=tmp_path / "r.sqlite"):
        for _ in range(2):
            od.zero_grad()
            for _ in range(3):  # gradient accumulation: three backwards per step
                disc(gen(torch.randn(4, 2)).detach()).mean().backward()
            od.step()
            og.zero_grad()
            disc(gen(torch.randn(4, 2))).mean().backward()
            og.step()
    record = gradscope.open_record(tmp_path / "r.sqlite")
    names = {p["name"] for p in record.parameters()}
    assert names == {"gen.weight", "gen.bias", "disc.weight", "disc.bias"}
    assert [o["type"] for o in record.optimizers()] == ["SGD", "SGD"]
    steps = record.steps()
    assert [s["backwards"] for s in steps] == [3, 4, 1]  # og's pass belongs to the next step
    assert steps[1]["optimizer_steps"] == [1, 0]


def test_forward_only_and_model_without_parameters(tmp_path):
    with gradscope.watch(nn.ReLU(), record=tmp_path / "r.sqlite"):
        with torch.no_grad():
            nn.ReLU()(torch.randn(2))
    record = gradscope.open_record(tmp_path / "r.sqlite")
    assert record.parameters() == [] and record.steps() == []
    model = nn.Linear(2, 2)
    with gradscope.watch(model, record=tmp_path / "f.sqlite"):
        with torch.no_grad():
            model(torch.randn(3, 2))
    record = gradscope.open_record(tmp_path / "f.sqlite")
    assert len(record.steps()) == 1 and record.calls(step=0)[0]["inputs"][0]["shape"] == [3, 2]


def test_failure_inside_gradscope_becomes_a_finding(tmp_path, monkeypatch):
    from gradscope.trace import structure

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(structure, "describe", broken)  # every module call's description fails
    model, _ = train(steps=2, record=tmp_path / "r.sqlite")
    bare, _ = train(steps=2, watch=False)
    assert torch.equal(model.head.weight, bare.head.weight)
    findings = gradscope.open_record(tmp_path / "r.sqlite").findings()
    assert [f["check"] for f in findings] == ["internal-error"]
    assert "boom" in findings[0]["message"] and findings[0]["subject"] == "_on_post"


def test_record_is_readable_while_written(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt, record=tmp_path / "r.sqlite"):
        for i in range(3):
            opt.zero_grad()
            model(torch.randn(2, 3)).sum().backward()
            opt.step()
        wait_until(lambda: recorded_steps(tmp_path / "r.sqlite") == [0, 1, 2])
        with gradscope.open_record(tmp_path / "r.sqlite") as live:
            assert live.run()["status"] == "running"
            assert [s.step for s in live.steps()] == [0, 1, 2]
    assert gradscope.open_record(tmp_path / "r.sqlite").run()["status"] == "finished"


def test_the_record_and_its_report_say_how_the_run_was_recorded(tmp_path):
    """A record read later (a replay, a JSON report in CI) tells how often statistics were
    taken, so that a gradient row without a mean reads as "not measured", not as missing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.watch(model, opt, record=tmp_path / "r.sqlite", stats_every=7, graph_every=0, checks=False):
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(2, 3)).sum().backward()
            opt.step()
    expected = dataclasses.asdict(Settings(stats_every=7, graph_every=0))
    with gradscope.open_record(tmp_path / "r.sqlite") as record:
        assert record.run()["settings"] == expected
        assert report.build(record)["run"]["settings"] == expected


def test_module_statistics_schedule_and_alarm(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.watch(model, opt, record=tmp_path / "r.sqlite", stats_every=5, checks=False):
        for step in range(30):
            opt.zero_grad()
            x = torch.randn(2, 3)
            if step == 26:
                x[0, 0] = float("inf")
            model(x).sum().backward()
            opt.step()
            if step == 26:  # the recorder sees step 26 before step 27 starts
                wait_until(lambda: 26 in recorded_steps(tmp_path / "r.sqlite"))
    record = gradscope.open_record(tmp_path / "r.sqlite")
    with_activations = sorted({s for s in range(30) if record.stats(step=s, kind="activation")})
    assert with_activations[:21] == list(range(21))  # dense start
    assert 21 not in with_activations and 25 in with_activations  # then every 5th step
    assert {27, 28, 29} <= set(with_activations)  # and every step once something went non-finite
    assert all(record.stats(step=s, kind="grad") for s in range(26))  # gradients: every step
