"""A watched model is the user's: copies, pickles, saves and scripting work during and after
watching, and leave gradscope behind."""

import copy
import io
import pickle

import torch
from torch import nn

import gradscope


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def _step(model, opt):
    opt.zero_grad()
    model(torch.randn(3, 4)).sum().backward()
    opt.step()


def _roundtrips(model):
    """deepcopy, pickle, torch.save/load and torch.jit.script of `model`: all must work."""
    clone = copy.deepcopy(model)
    unpickled = pickle.loads(pickle.dumps(model))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    scripted = torch.jit.script(model)
    x = torch.randn(2, 4)
    expected = model(x)
    for other in (clone, unpickled, loaded, scripted):
        assert torch.equal(other(x), expected)
    return clone


def test_copy_pickle_save_and_script_during_and_after_watching(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt, record=tmp_path / "r.sqlite", checks=False):
        _step(model, opt)
        clone = _roundtrips(model)
        _step(model, opt)
        with torch.no_grad():
            clone(torch.randn(2, 4))  # the copy is not watched: none of its calls is recorded
    _roundtrips(model)
    record = gradscope.open_record(tmp_path / "r.sqlite")
    assert [m["name"] for m in record.modules()] == ["", "0", "1", "2"]
    assert len(record.steps()) == 2
    assert len(record.calls(step=1)) == 8  # the step's forward and the one in _roundtrips
    for module in [*model.modules(), *clone.modules()]:
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_copy_running_as_a_root_under_run_is_watched_under_its_own_name(tmp_path):
    from gradscope import launch

    script = tmp_path / "train.py"
    script.write_text(
        "import copy, torch\n"
        "from torch import nn\n"
        "torch.manual_seed(0)\n"
        "model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for i in range(3):\n"
        "    opt.zero_grad()\n"
        "    model(torch.randn(3, 4)).sum().backward()\n"
        "    opt.step()\n"
        "    if i == 0:\n"
        "        teacher = copy.deepcopy(model)\n"
        "    with torch.no_grad():\n"
        "        teacher(torch.randn(3, 4))\n"
        "torch.save(model, 'model.pt')\n"
    )
    target = launch.Target(str(script), [])
    session = launch.new_session(target, tmp_path / "r.sqlite")
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert launch.run(target, session) == 0
    finally:
        os.chdir(cwd)
    assert (tmp_path / "model.pt").exists()
    record = gradscope.open_record(tmp_path / "r.sqlite")
    roots = {m["root"] for m in record.modules()}
    assert roots == {"", "Sequential"}  # the teacher is its own root


def test_global_hooks_and_warning_filter_leave_with_the_last_session(tmp_path):
    import warnings

    from torch.nn.modules import module as nn_module

    before = (dict(nn_module._global_forward_pre_hooks), dict(nn_module._global_forward_hooks), list(warnings.filters))
    model = _model()
    first = gradscope.watch(model, record=tmp_path / "a.sqlite", checks=False)
    second = gradscope.watch(_model(), record=tmp_path / "b.sqlite", checks=False)
    assert len(nn_module._global_forward_hooks) == len(before[1]) + 2
    first.close()
    second.close()
    after = (dict(nn_module._global_forward_pre_hooks), dict(nn_module._global_forward_hooks), list(warnings.filters))
    assert after == before
