"""Closing after the script tore down torch.distributed: the session touches no distributed
tensor once its process group is gone, and still records the step in progress."""

import subprocess
import sys
import textwrap

import gradscope

SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist, gradscope
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_module, distribute_tensor

    folder = sys.argv[1]
    dist.init_process_group("gloo", init_method=f"file://{folder}/group", rank=0, world_size=1)
    mesh = init_device_mesh("cpu", (1,))
    torch.manual_seed(0)
    model = distribute_module(nn.Linear(4, 1), mesh)  # parameters are DTensors
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    session = gradscope.watch(model, opt, record=f"{folder}/r.sqlite", checks=False)
    x = distribute_tensor(torch.randn(2, 4), mesh, [Replicate()])
    for _ in range(3):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    model(x)  # the step in progress when the group goes
    dist.destroy_process_group()
    session.close()
""")


def test_close_after_destroy_process_group_touches_no_distributed_tensor(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    record = gradscope.open_record(tmp_path / "r.sqlite")
    assert len(record.steps()) == 4  # the last, closed after the group was gone, too
    assert record.calls(step=3)
    where = {f["subject"] for f in record.findings() if f["check"] == "internal-error"}
    assert not where & {"close", "recorder (step)"}, where
