"""Real training patterns that must neither break nor confuse a session: threads, activation
checkpointing, throw-away loss modules, tracing inside a step."""

import threading

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import gradscope


def test_two_threads_each_with_its_own_watch_do_not_cross(tmp_path):
    errors, results = [], {}
    start = threading.Barrier(2)

    def train(label, width):
        try:
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 1))
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            path = tmp_path / f"{label}.sqlite"
            with gradscope.watch({label: model}, opt, record=path, checks=False):
                start.wait(timeout=60)
                for _ in range(300):
                    opt.zero_grad()
                    model(torch.randn(16, 8)).pow(2).mean().backward()
                    opt.step()
            results[label] = path
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=train, args=(label, w)) for label, w in (("a", 16), ("b", 32))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    for label, width in (("a", 16), ("b", 32)):
        record = gradscope.open_record(results[label])
        assert {p["name"] for p in record.parameters()} == {f"{label}.{n}" for n in ("0.weight", "0.bias", "2.weight", "2.bias")}
        steps = record.steps()
        assert len(steps) == 300
        assert all(s["backwards"] == 1 for s in steps)  # only its own thread's backward
        zero_grads = [z for s in range(300) for z in record.step(s).zero_grad]
        assert {z["by"] for z in zero_grads} == {"optimizer0"} and len(zero_grads) == 300
        assert not [f for f in record.findings() if f["check"] == "internal-error"]


def test_two_threads_under_one_run_session_record_both_models(tmp_path, run_cli, script):
    path = script(
        "import threading, torch\n"
        "from torch import nn\n"
        "class Left(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.fc = nn.Linear(8, 16); self.out = nn.Linear(16, 1)\n"
        "    def forward(self, x): return self.out(torch.relu(self.fc(x)))\n"
        "class Right(Left):\n"
        "    pass\n"
        "def train(cls):\n"
        "    torch.manual_seed(0)\n"
        "    model = cls(); opt = torch.optim.SGD(model.parameters(), lr=0.01)\n"
        "    for _ in range(300):\n"
        "        opt.zero_grad(); model(torch.randn(16, 8)).pow(2).mean().backward(); opt.step()\n"
        "threads = [threading.Thread(target=train, args=(c,)) for c in (Left, Right)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
    )
    proc = run_cli("run", "--headless", "--no-checks", "--record", tmp_path / "r.sqlite", path)
    assert proc.returncode == 0, proc.stderr
    record = gradscope.open_record(tmp_path / "r.sqlite")
    roots = {m["root"] for m in record.modules()}
    assert len(roots) == 2  # each thread's model under its own prefix (its variable name)
    assert len({p["name"] for p in record.parameters()}) == 8
    assert not [f for f in record.findings() if f["check"] == "internal-error"]


class Segmented(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.b = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        x = checkpoint(self.a, x, use_reentrant=True)
        x = checkpoint(self.b, x, use_reentrant=True)
        return self.head(x)


def test_reentrant_checkpointing_counts_only_the_users_backward(tmp_path):
    torch.manual_seed(0)
    model = Segmented()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt, record=tmp_path / "r.sqlite", checks=False):
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(5, 4, requires_grad=True)).pow(2).mean().backward()
            opt.step()
    record = gradscope.open_record(tmp_path / "r.sqlite")
    assert [s["backwards"] for s in record.steps()] == [1, 1, 1]
    for s in range(3):
        losses = record.stats(step=s, kind="loss")
        assert [row.call for row in losses] == [0]
        calls = [c["module"] for c in record.calls(step=s)]
        assert calls.count("a.0") == 1 and calls.count("b.0") == 1  # recomputation is not a call
        assert record.stats(step=s, kind="grad")  # every parameter's gradient still recorded
    assert not [f for f in record.findings() if f["check"] == "internal-error"]


def test_loss_module_built_every_step_does_not_grow_the_session(tmp_path):
    from gradscope import launch

    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    session = launch.new_session(launch.Target("x.py", []), tmp_path / "r.sqlite")
    hooks = launch._AutoAttach(session)
    try:
        for _ in range(1000):
            opt.zero_grad()
            nn.MSELoss()(model(torch.randn(4, 3)), torch.zeros(4, 1)).backward()
            opt.step()
    finally:
        hooks.remove()
        session.close()
    assert len(session._registry) <= 3
    record = gradscope.open_record(tmp_path / "r.sqlite")
    assert {m["name"] for m in record.modules()} == {"", "MSELoss"}
    assert len(record.steps()) == 1000


def test_jit_trace_inside_a_step_keeps_the_step(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt, record=tmp_path / "r.sqlite", checks=False):
        for step in range(3):
            opt.zero_grad()
            x = torch.randn(2, 4)
            model(x).sum().backward()
            if step == 1:
                traced = torch.jit.trace(model, x)
                assert torch.allclose(traced(x), model(x))
            opt.step()
    record = gradscope.open_record(tmp_path / "r.sqlite")
    assert len(record.steps()) == 3
    assert not [f for f in record.findings() if f["check"] == "internal-error"]


def test_description_is_json_safe_whatever_the_values():
    import json

    from gradscope.trace.structure import describe

    class Odd:
        pass

    value = {("tuple", "key"): torch.zeros(2), 3: [Odd(), float("nan")], "\udcff": torch.zeros(1, 3)}
    described, tensors = describe(value)
    json.dumps(described, allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert len(tensors) == 2 and described[-1]["shape"] == [1, 3]

    def traced(x):
        shapes.append(describe(x)[0])
        return x * 2

    shapes = []
    torch.jit.trace(traced, torch.zeros(2, 3))
    json.dumps(shapes)
