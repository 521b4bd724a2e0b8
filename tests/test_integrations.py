"""Framework callbacks driving the real frameworks on CPU with tiny models built here."""

import subprocess
import sys
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradscope


def _data(n=32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return x, x.sum(1, keepdim=True)


def test_lightning_callback(tmp_path):
    import lightning.pytorch as pl

    from gradscope.integrations.lightning import GradscopeCallback

    class Regressor(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 16), nn.Linear(16, 1)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.mse_loss(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    callback = GradscopeCallback(record=tmp_path / "pl.sqlite")
    trainer = pl.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                         default_root_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Regressor(), DataLoader(TensorDataset(*_data()), batch_size=4))
    record = gradscope.open_record(tmp_path / "pl.sqlite")
    assert record.run()["mode"] == "lightning" and record.run()["status"] == "finished"
    assert len(record.steps()) == 6
    assert {p["name"] for p in record.parameters()} == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert all(p["in_optimizer"] for p in record.parameters())
    assert all(s["zero_grad"] for s in record.steps())
    assert [f for f in record.findings() if f["severity"] != "info"] == []


def test_transformers_trainer_callback(tmp_path):
    from transformers import Trainer, TrainingArguments

    from gradscope.integrations.transformers import GradscopeCallback

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 1)

        def forward(self, inputs=None, labels=None):
            out = self.fc(inputs)
            return {"loss": nn.functional.mse_loss(out, labels), "logits": out}

    x, y = _data()
    dataset = [{"inputs": a, "labels": b} for a, b in zip(x, y)]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=5, per_device_train_batch_size=4,
                             report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no",
                             learning_rate=0.05, disable_tqdm=True)
    torch.manual_seed(0)
    callback = GradscopeCallback(record=tmp_path / "hf.sqlite")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(model=Tiny(), args=args, train_dataset=dataset, callbacks=[callback]).train()
    record = gradscope.open_record(tmp_path / "hf.sqlite")
    assert record.run()["mode"] == "transformers"
    assert len(record.steps()) == 5
    assert {p["name"] for p in record.parameters()} == {"fc.weight", "fc.bias"}
    assert record.optimizers()[0]["type"] == "AdamW"
    assert all(u.delta for u in record.updates(step=4))


def test_missing_framework_gives_a_clear_import_error(tmp_path):
    code = (
        "import sys; sys.modules['lightning'] = None; sys.modules['pytorch_lightning'] = None\n"
        "import gradscope.integrations.lightning\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "pip install gradscope[lightning]" in proc.stderr.strip().splitlines()[-1]
