"""Step boundaries: each event belongs to the step in which it happened, with or without an
optimizer; compiled models step quietly."""

import warnings

import torch
from torch import nn
from torch.nn import functional as F

import gradscope
from gradscope.settings import DEFAULTS


def _hand_trained(record, epochs=2, iterations=3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.1), nn.Linear(4, 1))
    x = torch.randn(5, 3)
    with gradscope.watch(model, record=record, checks=False):
        for _ in range(epochs):
            model.train()
            for _ in range(iterations):
                model.zero_grad()
                model(x).pow(2).mean().backward()
                with torch.no_grad():
                    for p in model.parameters():
                        p -= 0.1 * p.grad
            model.eval()
            with torch.no_grad():
                model(x)  # validation


def test_steps_without_an_optimizer_book_each_event_where_it_happened(tmp_path):
    _hand_trained(tmp_path / "r.sqlite")
    record = gradscope.open_record(tmp_path / "r.sqlite")
    steps = [record.step(s["step"]) for s in record.steps()]
    training = [s for s in steps if s.backwards]
    assert len(training) == 6
    for step in training:
        assert step.zero_grad == [{"by": "", "set_to_none": True}]  # its own, the first one too
        assert step.eval_modules == []  # validation's model.eval() came later
    last = steps[-1]
    assert last.backwards == 0 and "1" in last.eval_modules
    assert record.updates(step=last.step) == []  # validation moved nothing
    latest = record.latest_updates()
    assert {step for step, _ in latest.values()} == {training[-1].step}


def test_first_zero_grad_before_the_model_is_known_is_booked(tmp_path, run_cli, script):
    path = script(
        "import torch\n"
        "from torch import nn\n"
        "torch.manual_seed(0)\n"
        "model = nn.Linear(3, 1)\n"
        "for _ in range(3):\n"
        "    model.zero_grad()\n"
        "    model(torch.randn(4, 3)).sum().backward()\n"
        "    with torch.no_grad():\n"
        "        model.weight -= 0.1 * model.weight.grad\n"
    )
    proc = run_cli("run", "--headless", "--no-checks", "--record", tmp_path / "r.sqlite", path)
    assert proc.returncode == 0, proc.stderr
    record = gradscope.open_record(tmp_path / "r.sqlite")
    assert [record.step(s).zero_grad for s in range(3)] == [[{"by": "", "set_to_none": True}]] * 3


def test_compiled_model_under_watch_emits_no_warning_and_compiles_once(tmp_path):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    compiled = torch.compile(model, backend="eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradscope.watch(compiled, opt, record=tmp_path / "r.sqlite", checks=False):
            for _ in range(6):
                opt.zero_grad()
                compiled(torch.randn(4, 8)).sum().backward()
                opt.step()
    assert [str(w.message) for w in caught] == []
    assert not counters["graph_break"] and not counters["recompiles"]
    assert counters["stats"]["unique_graphs"] == 1
    record = gradscope.open_record(tmp_path / "r.sqlite")
    assert len(record.steps()) == 6
    assert [c["module"] for c in record.calls(step=3)] == [""]  # the compiled model's call
    assert record.stats(step=3, kind="grad")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled(torch.randn(4, 8))  # after the session: no global hook of gradscope's is left


def test_call_shapes_follow_each_step_when_the_batch_changes(tmp_path):
    """Descriptions of a call are reused while its shapes stay; a new shape is described anew."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [5, 5, 2, 5, 7]
    with gradscope.watch(model, opt, record=tmp_path / "r.sqlite", checks=False):
        for batch in batches:
            opt.zero_grad()
            model(torch.randn(batch, 3)).sum().backward()
            opt.step()
    record = gradscope.open_record(tmp_path / "r.sqlite")
    for step, batch in enumerate(batches):
        calls = {c["module"]: c for c in record.calls(step=step)}
        assert calls["0"]["inputs"][0]["shape"] == [batch, 3]
        assert calls["2"]["outputs"][0]["shape"] == [batch, 2]
        assert calls["2"]["outputs"][0]["dtype"] == "float32" and calls["0"]["training"]


def test_light_steps_record_root_calls_and_the_record_shows_the_last_described_ones(tmp_path):
    """Between statistics steps module hooks see root calls only; a validation forward (no
    gradients) is still described whole, and the record gives a light step's inner calls as of
    the last step that described them."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Linear(4, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(3, 4), torch.randn(3, 2)
    path = tmp_path / "r.sqlite"
    with gradscope.watch(net, opt, record=path, stats_every=1000, graph_every=0):
        for i in range(DEFAULTS.dense_steps + 3):
            opt.zero_grad()
            F.mse_loss(net(x), y).backward()
            opt.step()
            if i == DEFAULTS.dense_steps + 1:
                with torch.no_grad():
                    net(x)  # validation without model.eval(): belongs to the next step
    record = gradscope.open_record(path)
    described = record.step(DEFAULTS.dense_steps - 1)
    light = record.step(DEFAULTS.dense_steps)
    assert described.described and {c["module"] for c in described.calls} == {"", "0", "1", "2"}
    assert not light.described and [c["module"] for c in light.calls] == [""]
    assert {c.module for c in record.calls_as_of(DEFAULTS.dense_steps)} == {"", "0", "1", "2"}
    validated = record.step(DEFAULTS.dense_steps + 2)
    # the validation forward opened the step: described whole, and so is the rest of the step
    assert [c["module"] for c in validated.calls] == ["0", "1", "2", ""] * 2
    assert "dropout-at-eval" in {f["check"] for f in record.findings()}
