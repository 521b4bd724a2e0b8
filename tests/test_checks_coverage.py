"""Branches of the built-in checks and of watching that other tests leave out: saturation staying
quiet, each source `nonfinite` names, gradient growth over time, weak references to the user's
objects and the optimizer hooks' removal."""

import gc
import weakref

import torch
from torch import nn
from torch.nn import functional as F

import gradscope

from checks_helpers import findings_of, only


def regression(scale=lambda step: 1.0, loss_extra=None):
    def loop(model, opt, step):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 8, generator=g) * scale(step)
        if opt is not None:
            opt.zero_grad()
        loss = F.mse_loss(model(x), x.sum(1, keepdim=True))
        (loss if loss_extra is None else loss + loss_extra()).backward()
        if opt is not None:
            opt.step()
    return loop


# -- saturation -------------------------------------------------------------------------------

def test_saturation_stays_quiet_on_tanh_and_sigmoid_at_their_usual_scale(tmp_path):
    for act in (nn.Tanh, nn.Sigmoid):
        build = lambda: (m := nn.Sequential(nn.Linear(8, 32), act(), nn.Linear(32, 1)),
                         torch.optim.SGD(m.parameters(), lr=0.01))
        found = findings_of(tmp_path, build, regression(), steps=12)
        assert only(found, "saturation") == [], act.__name__


def test_saturation_waits_for_its_patience(tmp_path):
    """Saturated inputs on two steps (patience is three) are not a finding; three are."""
    def build():
        return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)), None

    def saturated_for(steps):
        return regression(scale=lambda step: 100.0 if step < steps else 0.01)

    assert only(findings_of(tmp_path, build, saturated_for(2), steps=6), "saturation") == []
    found = only(findings_of(tmp_path, build, saturated_for(3), steps=6), "saturation")
    assert [(f["subject"], f["step"]) for f in found] == [("1", 2)]


# -- nonfinite: where the values start ---------------------------------------------------------

def test_nonfinite_in_the_loss_only(tmp_path):
    build = lambda: (nn.Linear(8, 1), None)
    loop = regression(loss_extra=lambda: torch.log(torch.zeros(())))  # finite model, -inf loss
    (finding,) = only(findings_of(tmp_path, build, loop, steps=2), "nonfinite")
    assert finding["subject"] == "loss" and "loss is non-finite" in finding["message"]
    assert (finding["step"], finding["last_step"], finding["count"]) == (0, 1, 2)


def test_nonfinite_in_a_parameter_gradient_only(tmp_path):
    def build():
        model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 1))
        model[0].weight.register_hook(lambda grad: grad / 0.0)  # outputs' gradients stay finite
        return model, None

    (finding,) = only(findings_of(tmp_path, build, regression(), steps=1), "nonfinite")
    assert finding["subject"] == "0.weight"
    assert "the gradient of 0.weight" in finding["message"] and finding["evidence"]["kind"] == "grad"


def test_nonfinite_weight_after_the_step_then_carried(tmp_path):
    def build():
        model = nn.Linear(8, 1)  # finite gradients, but an infinite learning rate for the weight
        groups = [{"params": [model.weight], "lr": float("inf")}, {"params": [model.bias], "lr": 0.0}]
        return model, torch.optim.SGD(groups)

    (finding,) = only(findings_of(tmp_path, build, regression(), steps=3), "nonfinite")
    assert finding["subject"] == "weight" and finding["step"] == 0
    assert "after the step" in finding["message"] and finding["evidence"]["kind"] == "weight"
    # later steps compute NaN everywhere: still reported on the weight where it started
    assert finding["count"] == 3 and finding["last_step"] == 2


# -- exploding-grad over time ------------------------------------------------------------------

def test_exploding_gradients_growing_over_time(tmp_path):
    build = lambda: (nn.Linear(8, 1), None)
    found = only(findings_of(tmp_path, build, regression(scale=lambda step: 10.0 ** step), steps=5),
                 "exploding-grad")
    (growth,) = [f for f in found if "growth" in f["evidence"]]
    # 100x per step: past 1000x from step 2, for two steps in a row (the patience) at step 3
    assert growth["step"] == 3 and growth["evidence"]["growth"] > 1000
    assert "grew" in growth["message"]


def test_steady_gradients_do_not_count_as_growth(tmp_path):
    build = lambda: (nn.Linear(8, 1), None)
    found = findings_of(tmp_path, build, regression(scale=lambda step: 10.0 if step % 2 else 1.0), steps=8)
    assert only(found, "exploding-grad") == []


# -- what watching holds on to -----------------------------------------------------------------

def test_watched_model_and_optimizer_are_held_weakly(tmp_path):
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    refs = [weakref.ref(model), weakref.ref(opt)]
    session = gradscope.watch(model, opt, record=tmp_path / "r.sqlite", checks=False)
    for step in range(3):
        regression()(model, opt, step)
    del model, opt
    gc.collect()
    assert [r() for r in refs] == [None, None]  # freed while the session is open
    session.close()
    with gradscope.open_record(tmp_path / "r.sqlite") as record:
        assert record.step_numbers() == [0, 1, 2] and record.run()["status"] == "finished"


def test_optimizer_hooks_are_removed_on_close(tmp_path):
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = (dict(opt._optimizer_step_pre_hooks), dict(opt._optimizer_step_post_hooks))
    with gradscope.watch(model, opt, record=tmp_path / "r.sqlite", checks=False):
        assert opt._optimizer_step_pre_hooks and opt._optimizer_step_post_hooks
        for step in range(2):
            regression()(model, opt, step)
    assert (dict(opt._optimizer_step_pre_hooks), dict(opt._optimizer_step_post_hooks)) == before
    for step in range(2):  # training on after close touches the record no more
        regression()(model, opt, step)
    with gradscope.open_record(tmp_path / "r.sqlite") as record:
        assert record.step_numbers() == [0, 1]
        assert all(s.optimizer_steps == [0] for s in record.steps())


def test_gradscope_run_removes_its_global_hooks(tmp_path):
    from torch.nn.modules import module as nn_module
    from torch.optim import optimizer as optim_module

    from gradscope import launch

    def global_hooks():
        return [dict(d) for d in (nn_module._global_forward_pre_hooks, nn_module._global_forward_hooks,
                                  optim_module._global_optimizer_pre_hooks,
                                  optim_module._global_optimizer_post_hooks)]

    script = tmp_path / "train.py"
    script.write_text(
        "import torch\nfrom torch import nn\n"
        "model = nn.Linear(2, 1)\nopt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for _ in range(2):\n    opt.zero_grad()\n    model(torch.ones(3, 2)).sum().backward()\n    opt.step()\n"
    )
    before = global_hooks()
    target = launch.Target(str(script), [])
    session = launch.new_session(target, tmp_path / "r.sqlite")
    assert launch.run(target, session) == 0
    assert global_hooks() == before
    with gradscope.open_record(tmp_path / "r.sqlite") as record:
        assert record.step_numbers() == [0, 1] and [o.type for o in record.optimizers()] == ["SGD"]
