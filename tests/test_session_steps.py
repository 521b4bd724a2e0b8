"""Step boundaries: each event belongs to the step in which it happened, with or without an
optimizer; compiled models step quietly."""

import copy
import gc
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules import module as nn_module

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
    """Past the dense start too: gradscope's global hooks are traced into the compiled frame,
    and a guard on anything they read (whether the step is light) would compile it again."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    compiled = torch.compile(model, backend="eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradscope.watch(compiled, opt, record=tmp_path / "r.sqlite", checks=False, stats_every=1000, graph_every=0):
            for _ in range(DEFAULTS.dense_steps + 4):
                opt.zero_grad()
                compiled(torch.randn(4, 8)).sum().backward()
                opt.step()
    assert [str(w.message) for w in caught] == []
    assert not counters["graph_break"] and not counters["recompiles"]
    assert counters["stats"]["unique_graphs"] == 1
    record = gradscope.open_record(tmp_path / "r.sqlite")
    assert len(record.steps()) == DEFAULTS.dense_steps + 4
    assert [c["module"] for c in record.calls(step=3)] == [""]  # the compiled model's call
    assert record.stats(step=3, kind="grad")
    light = record.step(DEFAULTS.dense_steps + 2)
    assert not light.described and [c["module"] for c in light.calls] == [""]
    assert not compiled._forward_hooks and not model._forward_hooks
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
    assert validated.described  # and marked so: the record gives its own calls, not an older step's
    assert {c.step for c in record.calls_as_of(DEFAULTS.dense_steps + 2)} == {DEFAULTS.dense_steps + 2}
    assert "dropout-at-eval" in {f["check"] for f in record.findings()}


class _Probe(nn.Module):
    """Notes, at each of its calls, whether any global module hook was installed: while one is,
    every module call in the process takes torch's slower path."""

    def __init__(self):
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(bool(nn_module._global_forward_pre_hooks or nn_module._global_forward_hooks))
        return x


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.probe = nn.Linear(4, 2), _Probe()

    def forward(self, x, *, scale):
        if x.shape[1] != 4:
            raise ValueError(f"bad width {x.shape[1]}")
        return self.probe(self.fc(x)) * scale


def _quiet_session(path, **settings):
    """A session whose steps are light after the first two. Module hooks stay in for good once
    torch.compile compiled anything in the process: its counters are cleared (an earlier test's
    compiled model is gone)."""
    from torch._dynamo.utils import counters

    from gradscope.session import Session
    from gradscope.settings import Settings

    counters.clear()
    return Session(path, settings=Settings(**{"stats_every": 1000, "graph_every": 0, "dense_steps": 2, **settings}))


def _watched_scaled(path):
    """A `_Scaled` model and its optimizer, watched by a `_quiet_session`."""
    torch.manual_seed(0)
    model = _Scaled()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    session = _quiet_session(path)
    session.add_model(model)
    session.add_optimizer(opt)
    return model, opt, session


def test_light_steps_take_the_global_module_hooks_out_once_their_root_call_began(tmp_path):
    """After a light step's root call began, nothing else of the step is described, so torch's
    global module hooks are taken out until the step ends: the model's inner calls take torch's
    fast path. The root call is recorded as it began (its positional inputs), nothing is put on
    the user's module, and after the step the hooks are back (a validation forward there is
    seen)."""
    model, opt, session = _watched_scaled(tmp_path / "r.sqlite")
    between = []
    with session:
        for step in range(6):
            opt.zero_grad()
            model(torch.randn(3 + step, 4), scale=torch.ones(1)).sum().backward()
            opt.step()
            between.append((bool(nn_module._global_forward_pre_hooks), len(model._forward_hooks)))
        with torch.no_grad():
            model(torch.randn(2, 4), scale=torch.ones(1))  # validation: opens step 6, described
    assert model.probe.seen == [True, True, False, False, False, False, True]
    assert between == [(True, 0)] * 6
    assert not nn_module._global_forward_pre_hooks and not nn_module._global_forward_hooks
    record = gradscope.open_record(tmp_path / "r.sqlite")
    for step in range(2, 6):
        data = record.step(step)
        assert not data.described and [c["module"] for c in data.calls] == [""]
        root = data.calls[0]
        assert [i.get("shape") for i in root["inputs"]] == [[3 + step, 4]] and root["outputs"] == []
        assert root["training"]
    assert [c["module"] for c in record.step(6).calls] == ["fc", "probe", ""]  # described whole
    assert record.step(6).described
    # the report's latest calls of the model: those of the last step that described every call
    # (the validation's, not the light steps' root calls recorded as they began)
    (latest,) = record.latest_calls()[""]
    assert latest.step == 6 and latest.outputs[0]["shape"] == [2, 2] and len(latest.inputs) == 2


def _train_with_a_failing_forward(model, opt, steps):
    """`steps` training steps of a `_Scaled` model; in step 3 a forward first raises the
    user's error, which must reach the user as it is."""
    for step in range(steps):
        opt.zero_grad()
        if step == 3:
            with pytest.raises(ValueError, match="bad width 5"):
                model(torch.randn(3, 5), scale=torch.ones(1))
        model(torch.randn(3, 4), scale=torch.ones(1)).sum().backward()
        opt.step()


def test_a_light_steps_root_forward_that_raises_leaves_nothing_behind(tmp_path):
    """A forward that raises on a light step raises the user's error, leaves nothing on the
    module, and the following steps are light again."""
    model, opt, session = _watched_scaled(tmp_path / "r.sqlite")
    with session:
        _train_with_a_failing_forward(model, opt, 6)
    assert not model._forward_hooks and session._modules.depth == 0
    assert model.probe.seen == [True, True, False, False, False, False]
    record = gradscope.open_record(tmp_path / "r.sqlite")
    assert len(record.steps()) == 6 and not record.step(5).described
    assert [c["module"] for c in record.step(3).calls] == [""]  # the failed call (the step's first)


def test_a_thread_first_seen_stepping_its_optimizer_turns_the_next_steps_described(tmp_path):
    """A second training thread whose forward ran while a light step's hooks were out is known
    from its optimizer's step: from the next step on, module hooks stay in and see its model."""
    import threading

    torch.manual_seed(0)
    main_model, side_model = nn.Linear(4, 1), nn.Linear(4, 1)
    main_opt = torch.optim.SGD(main_model.parameters(), lr=0.1)
    side_opt = torch.optim.SGD(side_model.parameters(), lr=0.1)

    def side_step():
        side_opt.zero_grad()
        side_model(torch.randn(2, 4)).sum().backward()
        side_opt.step()

    session = _quiet_session(tmp_path / "r.sqlite")
    session.add_model(main_model, "main")
    session.add_model(side_model, "side")
    session.add_optimizer(main_opt)
    session.add_optimizer(side_opt)
    with session:
        for step in range(6):
            main_opt.zero_grad()
            loss = main_model(torch.randn(3, 4)).sum()
            if step >= 3:  # inside a light step, after its root call began
                thread = threading.Thread(target=side_step)
                thread.start()
                thread.join()
            loss.backward()
            main_opt.step()
    record = gradscope.open_record(tmp_path / "r.sqlite")
    assert [record.step(s).described for s in range(6)] == [True, True, False, False, True, True]
    assert [c["module"] for c in record.step(4).calls] == ["main", "side"]
    assert [c["module"] for c in record.step(3).calls] == ["main"]  # the side thread's forward went unseen


def test_steps_of_several_root_calls_do_not_walk_the_graph_for_light_steps_recording_one(tmp_path):
    """A light step records its first root call only; a described step all of them (here the
    model and its loss module). Their shapes are compared by the first root call, so moving
    between light and described steps is no new graph to walk."""
    torch.manual_seed(0)
    model, loss_fn = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1)), nn.MSELoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    session = _quiet_session(tmp_path / "r.sqlite", stats_every=3, graph_every=1000)
    session.add_model(model)
    session.add_model(loss_fn, "loss")
    session.add_optimizer(opt)
    with session:
        for _ in range(12):
            opt.zero_grad()
            loss_fn(model(torch.randn(3, 4)), torch.zeros(3, 1)).backward()
            opt.step()
    record = gradscope.open_record(tmp_path / "r.sqlite")
    steps = [record.step(s) for s in range(12)]
    assert [s.described for s in steps] == [True, True, False, True, False, False, True, False, False, True, False, False]
    assert [c["module"] for c in steps[4].calls] == [""] and {c["module"] for c in steps[3].calls} >= {"", "loss"}
    assert [s.step for s in steps if s.graph is not None] == [0, 1]


def _light_loop(session, model, opt, steps, forward):
    session.add_model(model)
    session.add_optimizer(opt)
    with session:
        for step in range(steps):
            opt.zero_grad()
            forward(step).sum().backward()
            opt.step()


def test_ctrl_c_in_a_light_steps_forward_leaves_the_model_copyable(tmp_path):
    """torch runs no hook after a KeyboardInterrupt: whatever a light step changed must not be
    on the user's module, whose script saves it on Ctrl-C."""
    def interrupted(module, args):
        raise KeyboardInterrupt

    model, opt, session = _watched_scaled(tmp_path / "r.sqlite")
    with session:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(3, 4), scale=torch.ones(1)).sum().backward()
            opt.step()
        handle = model.fc.register_forward_pre_hook(interrupted)
        with pytest.raises(KeyboardInterrupt):
            model(torch.randn(3, 4), scale=torch.ones(1))
        handle.remove()
        assert not model._forward_hooks and not model._forward_pre_hooks
        copy.deepcopy(model)
        pickle.loads(pickle.dumps(model))
        opt.zero_grad()  # the interrupted step goes on
        model(torch.randn(3, 4), scale=torch.ones(1)).sum().backward()
        opt.step()
    record = gradscope.open_record(tmp_path / "r.sqlite")
    assert len(record.steps()) == 4 and record.step(3).backwards == 1


class _Recursive(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, depth=1):
        return self.fc(x) if depth == 0 else self(x[: len(x) // 2], depth - 1).repeat(2, 1)


def test_a_root_calling_itself_is_recorded_as_the_outer_call(tmp_path):
    torch.manual_seed(0)
    model = _Recursive()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _light_loop(_quiet_session(tmp_path / "r.sqlite"), model, opt, 5, lambda step: model(torch.randn(8, 4)))
    record = gradscope.open_record(tmp_path / "r.sqlite")
    light = record.step(4)
    assert not light.described and [c["inputs"][0]["shape"] for c in light.calls] == [[8, 4]]


def test_a_scripted_root_has_light_steps_like_any_other(tmp_path):
    torch.manual_seed(0)
    model = torch.jit.script(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    session = _quiet_session(tmp_path / "r.sqlite")
    _light_loop(session, model, opt, 5, lambda step: model(torch.randn(3, 4)))
    record = gradscope.open_record(tmp_path / "r.sqlite")
    assert [record.step(s).described for s in range(5)] == [True, True, False, False, False]
    assert [c["module"] for c in record.step(4).calls] == [""] and not record.findings()


def test_two_sessions_on_one_model_keep_the_users_error(tmp_path):
    torch.manual_seed(0)
    model = _Scaled()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first, second = _quiet_session(tmp_path / "a.sqlite"), _quiet_session(tmp_path / "b.sqlite")
    for session in (first, second):
        session.add_model(model)
        session.add_optimizer(opt)
    with first, second:
        _train_with_a_failing_forward(model, opt, 5)
    assert first._modules.depth == second._modules.depth == 0 and not model._forward_hooks
    for name in ("a", "b"):
        record = gradscope.open_record(tmp_path / f"{name}.sqlite")
        assert len(record.steps()) == 5 and not record.step(4).described


def test_modules_called_from_another_thread_keep_the_hooks_in(tmp_path):
    """Hooks going out and back in for the whole process would cut another thread's module
    calls in two (its submodules seen without their parent): once modules are called from a
    second thread, light steps keep the hooks in."""
    import threading

    model, opt, session = _watched_scaled(tmp_path / "r.sqlite")
    with session:
        helper = threading.Thread(target=lambda: nn.Tanh()(torch.randn(2)))  # unwatched, elsewhere
        helper.start()
        helper.join()
        for _ in range(5):
            opt.zero_grad()
            model(torch.randn(3, 4), scale=torch.ones(1)).sum().backward()
            opt.step()
    assert model.probe.seen == [True] * 5
    record = gradscope.open_record(tmp_path / "r.sqlite")
    assert not record.step(4).described and [c["module"] for c in record.step(4).calls] == [""]


def test_each_step_records_the_modules_in_eval_mode_as_they_are_then(tmp_path):
    """The modules listed once are followed: one switched to eval and back, one freed (replaced
    by a new module the session learns of), and the rest."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.1), nn.Linear(4, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(8, 3), torch.randn(8, 2)

    def step():
        opt.zero_grad()
        F.mse_loss(net(x), y).backward()
        opt.step()

    with gradscope.watch(net, opt, record=tmp_path / "r.sqlite") as session:
        step()
        net[1].eval()
        step()
        net[1].train()
        step()
        extra = nn.Sequential(nn.Tanh(), nn.Identity())
        session.add_model(extra, "extra")
        extra[0].eval()
        step()
        del extra
        gc.collect()
        step()
    with gradscope.open_record(tmp_path / "r.sqlite") as record:
        assert [s.eval_modules for s in record.steps()] == [[], ["1"], [], ["extra.0"], []]
