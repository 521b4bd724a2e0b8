"""Every way in detaches completely when training raises: no hook left on the model, torch's
functions restored, the record closed as ``crashed``."""

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradscope

ORIGINAL_BACKWARD = torch.autograd.backward
ORIGINAL_ZERO_GRAD = torch.nn.Module.zero_grad


class Boom(RuntimeError):
    pass


def _detached(model: nn.Module) -> None:
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, type(module).__name__
    assert torch.autograd.backward is ORIGINAL_BACKWARD
    assert torch.nn.Module.zero_grad is ORIGINAL_ZERO_GRAD


def _data(n=32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return x, x.sum(1, keepdim=True)


class Tiny(nn.Module):
    def __init__(self, fail_at):
        super().__init__()
        self.fc = nn.Linear(4, 1)
        self.calls, self.fail_at = 0, fail_at

    def forward(self, inputs=None, labels=None):
        self.calls += 1
        if self.calls == self.fail_at:
            raise Boom("diverged")
        out = self.fc(inputs)
        return {"loss": nn.functional.mse_loss(out, labels), "logits": out}


def _hf_trainer(tmp_path, model, callback, late=False):
    from transformers import Trainer, TrainingArguments

    x, y = _data()
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=4,
                             report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no",
                             disable_tqdm=True)
    dataset = [{"inputs": a, "labels": b} for a, b in zip(x, y)]
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[] if late else [callback])
    if late:
        trainer.add_callback(callback)
    return trainer


@pytest.mark.parametrize("late", [False, True], ids=["constructor", "add_callback"])
def test_transformers_callback_closes_as_crashed(tmp_path, late):
    from gradscope.integrations.transformers import GradscopeCallback

    model = Tiny(fail_at=3)
    callback = GradscopeCallback(record=tmp_path / "hf.sqlite", checks=False)
    trainer = _hf_trainer(tmp_path, model, callback, late)
    with warnings.catch_warnings(), pytest.raises(Boom):
        warnings.simplefilter("ignore")
        trainer.train()
    if late:  # the running train() was not wrapped: the next one (or exit) closes it
        model.fail_at = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
        run = gradscope.open_record(tmp_path / "hf.sqlite").run()
        assert run["status"] == "finished"
    else:
        assert gradscope.open_record(tmp_path / "hf.sqlite").run()["status"] == "crashed"
    _detached(model)


def test_lightning_callback_closes_as_crashed(tmp_path):
    import lightning.pytorch as pl

    from gradscope.integrations.lightning import GradscopeCallback

    class Regressor(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 1)

        def training_step(self, batch, index):
            if index == 2:
                raise Boom("diverged")
            x, y = batch
            return nn.functional.mse_loss(self.fc(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    model = Regressor()
    trainer = pl.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[GradscopeCallback(record=tmp_path / "pl.sqlite", checks=False)],
                         default_root_dir=tmp_path)
    with warnings.catch_warnings(), pytest.raises(Boom):
        warnings.simplefilter("ignore")
        trainer.fit(model, DataLoader(TensorDataset(*_data()), batch_size=4))
    assert gradscope.open_record(tmp_path / "pl.sqlite").run()["status"] == "crashed"
    _detached(model)


def test_watch_context_closes_as_crashed(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(Boom), gradscope.watch(model, opt, record=tmp_path / "w.sqlite", checks=False):
        for step in range(5):
            opt.zero_grad()
            model(torch.randn(2, 4)).sum().backward()
            opt.step()
            if step == 2:
                raise Boom("diverged")
    run = gradscope.open_record(tmp_path / "w.sqlite").run()
    assert run["status"] == "crashed" and run["steps"] == 3
    _detached(model)


def test_run_detaches_after_a_crash(tmp_path):
    from gradscope import launch

    script = tmp_path / "train.py"
    script.write_text(
        "import torch\nfrom torch import nn\nmodel = nn.Linear(4, 1)\nopt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for step in range(3):\n    opt.zero_grad(); model(torch.randn(2, 4)).sum().backward(); opt.step()\n"
        "import builtins; builtins.trained_model = model\nraise RuntimeError('diverged')\n"
    )
    target = launch.Target(str(script), [])
    session = launch.new_session(target, tmp_path / "r.sqlite", analyzer=None)
    assert launch.run(target, session) == 1
    import builtins

    _detached(builtins.trained_model)
    del builtins.trained_model
    assert gradscope.open_record(tmp_path / "r.sqlite").run()["status"] == "crashed"
