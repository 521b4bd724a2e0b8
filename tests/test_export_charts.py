"""Charts (export --chart grad-flow / loss): plain SVG read back as XML, png and pdf through Graphviz."""

import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from test_export import needs_dot

SVG = "{http://www.w3.org/2000/svg}"

TRAIN = """
import torch
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
for step in range(6):
    x = torch.randn(16, 4)
    if step == 3:
        x[0, 0] = float("inf")
    loss = model(x).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
"""


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One training run (loss non-finite from step 3 on) shared by the tests of this file."""
    folder = tmp_path_factory.mktemp("charts")
    (folder / "train.py").write_text(TRAIN)
    subprocess.run([sys.executable, "-m", "gradscope", "run", "--headless", "--record", "r.sqlite", "train.py"],
                   cwd=folder, check=True, capture_output=True, timeout=600)
    return folder


@pytest.fixture
def record(recorded, tmp_path):
    (tmp_path / "r.sqlite").write_bytes((recorded / "r.sqlite").read_bytes())
    return "r.sqlite"


def _svg(path):
    root = ET.parse(path).getroot()
    texts = [t.text for t in root.iter(f"{SVG}text")]
    tips = [t.text for t in root.iter(f"{SVG}title")]
    return root, texts, tips


def test_grad_flow_chart_shows_layers_in_forward_order_on_a_log_axis(run_cli, record, tmp_path):
    run_cli("export", record, "--chart", "grad-flow", "--step", "1", "-o", "flow.svg", check=0)
    root, texts, tips = _svg(tmp_path / "flow.svg")
    layers = [t for t in texts if t and t.endswith((".weight", ".bias"))]
    assert layers == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert "gradient flow, step 1" in texts[0]
    assert any(t.startswith("1e-") for t in texts)  # decades on the log axis
    lines = [p.get("points").split() for p in root.iter(f"{SVG}polyline")]
    assert sum(len(points) == 4 for points in lines) == 2  # rms and max, one point per layer
    assert not any("non-finite" in (t or "") for t in tips)


def test_grad_flow_marks_non_finite_gradients_and_findings_and_bands_a_range(run_cli, record, tmp_path):
    run_cli("export", record, "--chart", "grad-flow", "--steps", "0:5", "-o", "flow.svg", check=0)
    root, texts, tips = _svg(tmp_path / "flow.svg")
    assert "steps 0..5 (6 recorded)" in texts[0]
    bands = [t for t in tips if t and ": rms " in t]
    assert len(bands) == 4
    assert sum("non-finite gradient" in (t or "") for t in tips) == 4
    assert any("error: nonfinite" in (t or "") for t in tips)


def test_loss_chart_has_loss_lr_findings_and_non_finite_steps(run_cli, record, tmp_path):
    run_cli("export", record, "--chart", "loss", "-o", "loss.svg", check=0)
    root, texts, tips = _svg(tmp_path / "loss.svg")
    assert "loss and learning rate, steps 0..5" in texts[0]
    assert [t for t in tips if t and "non-finite loss" in t] == [f"step {s}: non-finite loss" for s in (3, 4, 5)]
    assert any(t and "nonfinite" in t and t.startswith("steps 3") for t in tips)
    colours = [p.get("stroke") for p in root.iter(f"{SVG}polyline")]
    assert "#2ca02c" in colours and "#1f77b4" in colours  # learning rate and loss
    loss_line = next(p for p in root.iter(f"{SVG}polyline") if p.get("stroke") == "#1f77b4" and p.get("stroke-width") == "2")
    assert len(loss_line.get("points").split()) == 3  # the finite steps 0..2


@needs_dot
def test_charts_as_png_and_pdf_and_bad_ranges(run_cli, record, tmp_path):
    run_cli("export", record, "--chart", "grad-flow", "-o", "flow.png", check=0)
    assert (tmp_path / "flow.png").read_bytes()[:4] == b"\x89PNG"
    run_cli("export", record, "--chart", "loss", "-o", "loss.pdf", check=0)
    assert (tmp_path / "loss.pdf").read_bytes()[:4] == b"%PDF"
    proc = run_cli("export", record, "--chart", "grad-flow", "--steps", "40:50", "-o", "x.svg")
    assert proc.returncode == 2 and "no steps in 40:50" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("export", record, "--chart", "loss", "--steps", "5-2", "-o", "x.svg")
    assert proc.returncode == 2 and "A:B" in proc.stderr
    assert not (tmp_path / "x.svg").exists()


def test_grad_flow_of_a_light_step_follows_the_last_described_forward(run_cli, tmp_path):
    """A light step records its root call only: the chart orders its layers by the module calls
    of the last step that described them all, not by the order the layers were registered."""
    import torch
    from torch import nn

    import gradscope
    from gradscope.settings import DEFAULTS

    class Reversed(nn.Module):
        def __init__(self):
            super().__init__()
            self.late = nn.Linear(8, 1)  # registered first, runs last
            self.early = nn.Linear(4, 8)

        def forward(self, x):
            return self.late(self.early(x).relu())

    torch.manual_seed(0)
    model = Reversed()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt, record=tmp_path / "r.sqlite", checks=False):
        for _ in range(DEFAULTS.dense_steps + 3):
            opt.zero_grad()
            model(torch.randn(16, 4)).pow(2).mean().backward()
            opt.step()
    light = DEFAULTS.dense_steps + 2
    assert not gradscope.open_record(tmp_path / "r.sqlite").step(light).described
    run_cli("export", "r.sqlite", "--chart", "grad-flow", "--step", str(light), "-o", "flow.svg", check=0)
    _, texts, _ = _svg(tmp_path / "flow.svg")
    assert [t for t in texts if t and t.endswith((".weight", ".bias"))] == [
        "early.weight", "early.bias", "late.weight", "late.bias"]


def test_loss_chart_of_a_long_run_keeps_its_extremes_at_two_points_a_column(recorded, tmp_path, monkeypatch):
    """A run of 30,000 steps charted: every point drawn was megabytes of SVG (2.5 MB at 100,000
    steps). The loss and learning-rate lines get each pixel column's lowest and highest value,
    so they reach exactly as high and as low as all the points would; non-finite steps get one
    mark per column."""
    import sqlite3

    from gradscope.export import charts
    from gradscope.record.reader import Record

    path = tmp_path / "long.sqlite"
    path.write_bytes((recorded / "r.sqlite").read_bytes())
    conn = sqlite3.connect(path)
    repeat = "WITH RECURSIVE k(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM k WHERE n < 4999) "
    for table, where in (("steps", ""), ("stats", " WHERE kind = 'loss'")):
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})") if row[1] != "step"]
        conn.execute(f"{repeat}INSERT INTO {table} (step, {', '.join(columns)}) SELECT step + 6 * n, "
                     f"{', '.join(columns)} FROM {table}, k{where}")
    conn.execute("UPDATE stats SET mean = mean * 1000 WHERE kind = 'loss' AND step = 15001")  # one spike
    conn.commit()
    conn.close()

    def lines(scene):  # the loss and the learning rate
        return {(colour, width): points for kind, points, colour, width, *_ in scene.items
                if kind == "line" and (colour, width) in ((charts._BLUE, 2), (charts._GREEN, 1.5))}

    with Record(path) as record:
        thin = charts.loss_chart(record)
        monkeypatch.setattr(charts, "thinned", lambda xs, ys, runs: (xs, ys))
        whole = charts.loss_chart(record)
    thin_lines, whole_lines = lines(thin), lines(whole)
    assert thin_lines.keys() == whole_lines.keys() and len(thin_lines) == 2
    for key, points in thin_lines.items():
        every = whole_lines[key]
        assert len(every) >= 15_000 and len(points) <= 2 * 1200 + 1
        assert min(y for _, y in points) == min(y for _, y in every) and max(y for _, y in points) == max(y for _, y in every)
        assert points[-1] == every[-1]
    crosses = [item for item in thin.items if item[0] == "mark" and item[3] == "cross"]
    assert 0 < len(crosses) <= 1200 + 1
