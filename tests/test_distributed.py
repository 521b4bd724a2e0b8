"""torchrun with two real processes on the gloo backend (CPU): one record per rank, inner
module names through DistributedDataParallel, and ddp-desync."""

import json
import subprocess
import sys
import textwrap

import gradscope

TRAIN = textwrap.dedent("""
    import sys, torch
    import torch.distributed as dist
    from torch import nn

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 1)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    model = nn.parallel.DistributedDataParallel(Net())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(8):
        torch.manual_seed(100 + 2 * step + rank)  # each rank its own batch
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
        if sys.argv[1:] == ["bad"] and rank == 1 and step == 4:
            with torch.no_grad():
                model.module.fc1.weight.add_(0.1)  # one replica changes behind DDP's back
    dist.destroy_process_group()
""")


def torchrun(tmp_path, *script_args):
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "gradscope", "run", "--headless", "--record", "ddp.sqlite", "--report", "ddp.json",
         "--set", "ddp-desync.every=1", str(script), *script_args],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [gradscope.open_record(tmp_path / f"ddp-rank{r}.sqlite") for r in (0, 1)]


def test_healthy_ddp_run_records_each_rank_without_findings(tmp_path):
    records = torchrun(tmp_path)
    for rank, record in enumerate(records):
        run = record.run()
        assert run["rank"] == rank and run["world_size"] == 2
        assert {p["name"] for p in record.parameters()} == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
        assert len(record.steps()) == 8
        assert record.findings() == []
        report = json.loads((tmp_path / f"ddp-rank{rank}.json").read_text())
        assert report["run"]["rank"] == rank


def test_one_rank_changing_a_weight_is_caught(tmp_path):
    rank0, rank1 = torchrun(tmp_path, "bad")
    desync = [f for f in rank0.findings() if f["check"] == "ddp-desync"]
    assert [(f["subject"], f["step"], f["severity"]) for f in desync] == [("fc1.weight", 5, "error")]
    assert "rank 1" in desync[0]["message"]
    behind = [f for f in rank1.findings() if f["check"] == "out-of-step-update"]
    assert [f["subject"] for f in behind] == ["fc1.weight"]
    merged = subprocess.run(
        [sys.executable, "-m", "gradscope", "report", "ddp-rank1.sqlite", "ddp-rank0.sqlite"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )
    ranks = json.loads(merged.stdout)["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert [f["check"] for f in ranks[0]["findings"]] == ["ddp-desync"]


async def test_view_switches_between_ranks(tmp_path):
    from gradscope.tui.app import make_app
    from test_tui import loaded, status

    torchrun(tmp_path)
    app = make_app(tmp_path / "ddp-rank0.sqlite")
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        assert "rank 0 of 2" in status(app)
        await pilot.press("r")
        await loaded(pilot)
        assert "rank 1 of 2" in status(app) and app.sub_title == "ddp-rank1.sqlite"
