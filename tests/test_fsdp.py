"""FSDP2 (``fully_shard``) and HSDP with two real processes on the gloo backend (CPU), under
torchrun: steps on every rank, original names with placements, shard statistics that combine
into the unsharded model's figures, ddp-desync on replicated copies only, and ranks on separate
machines (no shared filesystem) merged after the fact."""

import json
import math
import shutil
import socket
import subprocess
import sys
import textwrap

import torch
from torch import nn

import gradscope
from gradscope.distributed import combine
from gradscope.tui.state import read_details

STEPS = 6
LR = 0.05

# Each Linear and the root are sharded; `scale` is left out of FSDP (ignored_params) and kept
# replicated by hand, as code mixing sharded and replicated parameters does: its gradient is
# averaged over the ranks inside backward. argv: "fsdp" (a 1-D mesh of 2: Shard(0)) or "hsdp"
# (2 replicas of 1 shard: Replicate(), Shard(0)); "bad": rank 1 changes a replicated parameter.
TRAIN = textwrap.dedent("""
    import sys, torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    hsdp = "hsdp" in sys.argv
    mesh = init_device_mesh("cpu", (2, 1), mesh_dim_names=("replicate", "shard")) if hsdp else init_device_mesh("cpu", (2,))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.body(x) * self.scale

    torch.manual_seed(0)
    model = Net()
    for layer in model.body:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh, ignored_params={model.scale})

    def average(param):
        dist.all_reduce(param.grad)
        param.grad.div_(2)

    model.scale.register_post_accumulate_grad_hook(average)
    opt = torch.optim.SGD(model.parameters(), lr=%(lr)r)
    for step in range(%(steps)d):
        torch.manual_seed(100 + 2 * step + rank)  # each rank its own batch
        opt.zero_grad()
        model(torch.randn(8, 16)).pow(2).mean().backward()
        opt.step()
        if "bad" in sys.argv and rank == 1 and step == 3:
            with torch.no_grad():  # one replica changes behind the others' back
                target = model.body[0].weight.to_local() if hsdp else model.scale
                target.add_(0.1)
    dist.destroy_process_group()
""") % {"lr": LR, "steps": STEPS}

NAMES = ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias", "body.4.weight",
         "body.4.bias", "scale"]
SHAPES = [[64, 16], [64], [32, 64], [32], [1, 32], [1], [1]]


def _gradscope_run(folder, *launch, args=("fsdp",)):
    """torchrun ... -m gradscope run on the training script, in `folder`."""
    script = folder / "train.py"
    script.write_text(TRAIN)
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *launch,
         "-m", "gradscope", "run", "--headless", "--record", "run.sqlite", "--report", "run.json",
         "--set", "ddp-desync.every=1", str(script), *args],
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _finish(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return err


def torchrun(tmp_path, *args):
    _finish(_gradscope_run(tmp_path, "--standalone", "--nproc-per-node", "2", args=args))
    return [gradscope.open_record(tmp_path / f"run-rank{r}.sqlite") for r in (0, 1)]


def reference_grad_norms() -> list[dict[str, float]]:
    """The unsharded model in one process, on both ranks' batches: gradient norms per step."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))
    scale = nn.Parameter(torch.ones(1))
    named = [(f"body.{n}", p) for n, p in body.named_parameters()] + [("scale", scale)]
    opt = torch.optim.SGD([p for _, p in named], lr=LR)
    norms = []
    for step in range(STEPS):
        batches = []
        for rank in (0, 1):
            torch.manual_seed(100 + 2 * step + rank)
            batches.append(torch.randn(8, 16))
        opt.zero_grad()
        (body(torch.cat(batches)) * scale).pow(2).mean().backward()  # the mean of the ranks' means
        norms.append({name: p.grad.norm().item() for name, p in named})
        opt.step()
    return norms


def _assert_close(got: float, want: float):
    assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-8), (got, want)


def test_fsdp_records_every_step_on_every_rank_with_the_unsharded_figures(tmp_path):
    records = torchrun(tmp_path, "fsdp")
    for rank, record in enumerate(records):
        assert record.step_numbers() == list(range(STEPS))
        params = {p["name"]: p["shape"] for p in record.parameters()}
        assert params == dict(zip(NAMES, SHAPES))
        layouts = record.run()["placements"]
        assert {p["name"]: p["placement"] for p in record.parameters()} == dict(layouts, scale=None)
        assert read_details(record, "param", "body.0.weight", STEPS - 1).info["placement"] == layouts["body.0.weight"]
        assert sorted(layouts) == sorted(NAMES[:-1])  # scale is an ordinary (replicated) parameter
        assert layouts["body.0.weight"]["placements"] == ["Shard(0)"]
        assert layouts["body.0.weight"]["mesh"] == [2] and layouts["body.0.weight"]["coordinate"] == [rank]
        assert layouts["body.0.weight"]["local_shape"] == [32, 16]
        assert layouts["body.4.weight"]["local_shape"] == [[1, 32], [0, 32]][rank]
        assert [f for f in record.findings() if f["severity"] != "info"] == []
        report = json.loads((tmp_path / f"run-rank{rank}.json").read_text())
        reported = {p["name"]: p for p in report["parameters"]}
        assert reported["body.0.weight"]["placement"]["text"] == "Shard(0) over 2 ranks"
        assert reported["body.0.weight"]["grad"]["count"] == 512
        assert reported["body.0.weight"]["grad"]["scope"] == "local shard"
        assert reported["scale"]["placement"] is None and "scope" not in reported["scale"]["grad"]

    # The shards' statistics combine into the whole gradient's, step by step.
    for step, want in enumerate(reference_grad_norms()):
        for name in NAMES:
            parts = [s for r in records for s in r.stats(step=step, kind="grad", subject=name)]
            whole = combine(parts) if name != "scale" else parts[0]
            _assert_close(whole.norm, want[name])

    merged = subprocess.run(
        [sys.executable, "-m", "gradscope", "report", "run-rank0.sqlite", "run-rank1.sqlite"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )
    report = json.loads(merged.stdout)
    assert report["findings"] == []
    whole = report["global"]
    assert whole["step"] == STEPS - 1 and whole["incomplete"] == []
    last = reference_grad_norms()[-1]
    by_name = {p["name"]: p for p in whole["parameters"]}
    assert sorted(by_name) == sorted(NAMES)
    assert by_name["body.0.weight"]["ranks"] == [0, 1] and by_name["scale"]["ranks"] == [0]
    assert by_name["body.0.weight"]["grad"]["count"] == 1024
    assert by_name["body.0.weight"]["weight"]["count"] == 1024
    for name in NAMES:
        _assert_close(by_name[name]["grad"]["norm"], last[name])


def test_hsdp_replicas_that_diverge_are_caught_and_shards_are_not(tmp_path):
    rank0, rank1 = torchrun(tmp_path, "hsdp", "bad")
    layout = rank0.run()["placements"]["body.0.weight"]
    assert layout["placements"] == ["Replicate()", "Shard(0)"] and layout["mesh"] == [2, 1]
    assert layout["dims"] == ["replicate", "shard"]
    desync = [f for f in rank0.findings() if f["check"] == "ddp-desync"]
    assert [(f["subject"], f["step"], f["severity"]) for f in desync] == [("body.0.weight", 4, "error")]
    assert "rank 1" in desync[0]["message"]
    assert len(rank1.step_numbers()) == STEPS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_on_separate_machines_are_checked_and_merged_after_the_fact(tmp_path):
    """Two 'machines' (torchrun --nnodes 2, one process each) with their own folders: rank 0
    says that it cannot see rank 1; the records copied together give the global figures and
    the cross-rank check (a replicated parameter changed on rank 1 only)."""
    port = _free_port()
    procs = []
    for node in (0, 1):
        folder = tmp_path / f"node{node}"
        folder.mkdir()
        procs.append(_gradscope_run(
            folder, "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1",
            "--master-addr", "127.0.0.1", "--master-port", str(port), args=("fsdp", "bad"),
        ))
    for proc in procs:
        _finish(proc)
    with gradscope.open_record(tmp_path / "node0" / "run-rank0.sqlite") as rank0:
        findings = rank0.findings()
    assert [(f["check"], f["severity"], f["message"]) for f in findings] == [
        ("ddp-desync", "info", "rank 1: no record here; cross-rank checks skipped")]

    together = tmp_path / "together"
    together.mkdir()
    for node in (0, 1):
        shutil.copy(tmp_path / f"node{node}" / f"run-rank{node}.sqlite", together)
    merged = subprocess.run(
        [sys.executable, "-m", "gradscope", "report", "run-rank0.sqlite", "run-rank1.sqlite"],
        cwd=together, capture_output=True, text=True, check=True,
    )
    report = json.loads(merged.stdout)
    assert [r["rank"] for r in report["ranks"]] == [0, 1]
    assert [(f["check"], f["subject"], f["step"]) for f in report["findings"]] == [("ddp-desync", "scale", 4)]
    whole = {p["name"]: p for p in report["global"]["parameters"]}
    assert whole["body.0.weight"]["ranks"] == [0, 1] and whole["body.0.weight"]["grad"]["count"] == 1024
