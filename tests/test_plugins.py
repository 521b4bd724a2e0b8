"""The plugin system: entry points, isolation, selection, settings, the CLI around them."""

import inspect
import json
import textwrap
from pathlib import Path

import pluggy
import pytest
import torch
from torch import nn

import gradscope
from gradscope import hookspecs, plugins

from checks_helpers import findings_of, only

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "gradscope-loss-spike"

BUILTINS = {
    "nonfinite", "exploding-grad", "vanishing-grad", "dead-relu", "saturation",
    "missing-zero-grad", "param-not-in-optimizer", "param-without-grad", "update-ratio",
    "out-of-step-update", "eval-mode-training", "loss-broadcast", "softmax-before-ce",
    "gradcheck-mismatch", "ddp-desync", "dropout-at-eval", "no-optimizer-step", "no-progress",
}

RAISING = '''
import gradscope

class Raising:
    calls = 0

    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        if step.step == 1:
            raise ZeroDivisionError("oops")
        return None
'''


def fake_dist(site: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """Make `site` look like site-packages holding distribution `name` (no pip needed)."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[gradscope.plugins]\n{lines}")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(source)
    return site


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    site = fake_dist(tmp_path / "site", "gradscope-loss-spike",
                     {"loss-spike": "gradscope_loss_spike:LossSpike"},
                     {"gradscope_loss_spike": (EXAMPLE / "gradscope_loss_spike.py").read_text()})
    fake_dist(site, "raising-plugin", {"raising": "raising_plugin:Raising"}, {"raising_plugin": RAISING})
    monkeypatch.syspath_prepend(str(site))
    return site


def spiky_loop(model, opt, step):
    opt.zero_grad()
    x = torch.ones(4, 2) * (100.0 if step == 6 else 1.0)
    model(x).pow(2).mean().backward()
    opt.step()


def build():
    model = nn.Linear(2, 1)
    return model, torch.optim.SGD(model.parameters(), lr=1e-4)


def test_builtins_come_through_the_entry_point_group():
    _, infos = plugins.load()
    by_name = {i.name: i for i in infos}
    assert set(by_name) >= BUILTINS
    assert all(by_name[n].source == "built-in" for n in BUILTINS)
    assert "gradscope_step" in by_name["nonfinite"].hooks


def test_third_party_plugin_and_isolation(tmp_path, third_party):
    found = findings_of(tmp_path, build, spiky_loop, steps=8)
    spike = only(found, "loss-spike")
    assert [(f["subject"], f["step"]) for f in spike] == [("loss", 6)]
    errors = only(found, "plugin-error")
    assert len(errors) == 1 and errors[0]["subject"] == "raising" and errors[0]["count"] == 1
    assert "ZeroDivisionError" in errors[0]["message"] and errors[0]["step"] == 1
    assert "-p no:raising" in errors[0]["hint"]


def test_switch_off_allow_list_and_settings(tmp_path, third_party, monkeypatch):
    found = findings_of(tmp_path, build, spiky_loop, steps=8, disable=("raising", "loss-spike"))
    assert not only(found, "loss-spike") and not only(found, "plugin-error")
    monkeypatch.setenv("GRADSCOPE_PLUGINS", "loss-spike")
    found = findings_of(tmp_path, build, spiky_loop, steps=8)
    assert only(found, "loss-spike") and not only(found, "plugin-error")
    found = findings_of(tmp_path, build, spiky_loop, steps=8, settings={"loss-spike": {"factor": 1e9}})
    assert not only(found, "loss-spike")
    monkeypatch.setenv("GRADSCOPE_PLUGINS", "")
    _, infos = plugins.load()
    assert {i.name for i in infos} == BUILTINS


def test_unknown_plugin_name_is_one_line_error():
    with pytest.raises(gradscope.errors.GradscopeError, match="no such plugin"):
        gradscope.watch(nn.Linear(1, 1), disable=("no-such-check",))


def test_config_from_pyproject_and_command_line(tmp_path):
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent("""
        [tool.gradscope.dead-relu]
        fraction = 0.9
        patience = 5
    """))
    config = plugins.Config.load(["dead-relu.patience=7"], start=tmp_path / "sub")
    assert config.get("dead-relu", "fraction", 0.7) == 0.9
    assert config.get("dead-relu", "patience", 3) == 7
    assert config.get("saturation", "fraction", 0.5) == 0.5
    with pytest.raises(gradscope.errors.GradscopeError, match="expected a float"):
        plugins.Config(values={"x": {"y": "abc"}}).get("x", "y", 1.0)
    with pytest.raises(gradscope.errors.GradscopeError, match="CHECK.KEY=VALUE"):
        plugins.Config.load(["nodot=1"], start=tmp_path)


def test_call_order_is_pluggys(tmp_path):
    """Plugins registered later run first, as in pluggy; tryfirst beats that (the analyzer keeps
    pluggy's order)."""
    from gradscope.analysis import Analyzer

    seen = []

    class A:
        @gradscope.hookimpl(tryfirst=True)
        def gradscope_run_end(self, run):
            seen.append("A")

    class B:
        @gradscope.hookimpl
        def gradscope_run_end(self, run):
            seen.append("B")

    class C:
        @gradscope.hookimpl
        def gradscope_run_end(self, run):
            seen.append("C")

    pm = pluggy.PluginManager("gradscope")
    pm.add_hookspecs(hookspecs)
    for p in (A(), B(), C()):
        pm.register(p)
    Analyzer(pm, plugins.Config()).finish()
    assert seen == ["A", "C", "B"]


def test_builtins_are_called_before_third_party_plugins(third_party):
    pm, _ = plugins.load()
    called = [impl.plugin_name for impl in reversed(pm.hook.gradscope_step.get_hookimpls())]
    third = ["loss-spike", "raising"]
    assert called[-2:] == third and set(called[:-2]) <= BUILTINS and called[:-2] == sorted(called[:-2])


def _finding(check):
    return gradscope.Finding(check, "info", "loss", None, check)


def test_hook_wrappers_run_around_the_call_and_failures_stay_isolated():
    from gradscope.analysis import Analyzer

    class Plain:
        @gradscope.hookimpl
        def gradscope_run_end(self, run):
            return [_finding("plain")]

    class Wrapper:  # new style: sees and extends the other plugins' results
        @gradscope.hookimpl(wrapper=True)
        def gradscope_run_end(self, run):
            results = yield
            return [*results, [_finding(f"wrapped {len(results)}")]]

    class OldWrapper:
        seen = []

        @gradscope.hookimpl(hookwrapper=True)
        def gradscope_run_end(self, run):
            outcome = yield
            OldWrapper.seen.append(len(outcome.get_result()))

    class BrokenWrapper:
        @gradscope.hookimpl(wrapper=True)
        def gradscope_run_end(self, run):
            yield
            raise RuntimeError("teardown")

    class Raising:
        @gradscope.hookimpl
        def gradscope_run_end(self, run):
            raise KeyError("k")

    class BadWrapper:  # new style, returning what is not findings
        @gradscope.hookimpl(wrapper=True)
        def gradscope_run_end(self, run):
            yield
            return "nonsense"

    class NotFindings:
        @gradscope.hookimpl
        def gradscope_run_end(self, run):
            return ["a string"]

    pm = pluggy.PluginManager("gradscope")
    pm.add_hookspecs(hookspecs)
    for plugin in (Plain(), Wrapper(), OldWrapper(), BrokenWrapper(), BadWrapper(), Raising(), NotFindings()):
        pm.register(plugin, name=type(plugin).__name__)
    analyzer = Analyzer(pm, plugins.Config())
    found = analyzer.finish()
    assert [f["check"] for f in found if f["check"] != "plugin-error"] == ["plain", "wrapped 1"]
    errors = {f["subject"]: f["message"] for f in found if f["check"] == "plugin-error"}
    assert set(errors) == {"BrokenWrapper", "BadWrapper", "Raising", "NotFindings"}
    assert "RuntimeError: teardown" in errors["BrokenWrapper"]
    assert "returned str, not a Finding" in errors["NotFindings"]
    assert OldWrapper.seen == [2]  # registered later: outside the new-style wrapper
    assert {name for name, _ in pm.list_name_plugin()} == {"Plain", "Wrapper", "OldWrapper"}
    assert [f["check"] for f in analyzer.finish()] == ["plain", "wrapped 1"]  # switched off for good


def test_a_bad_setting_stops_the_run_but_other_configure_errors_are_isolated():
    from gradscope.analysis import Analyzer

    class Strict:
        @gradscope.hookimpl
        def gradscope_configure(self, config):
            config.get("strict", "limit", 1.0)

    class Broken:
        @gradscope.hookimpl
        def gradscope_configure(self, config):
            raise ValueError("no")

        @gradscope.hookimpl
        def gradscope_statistics(self):
            return [gradscope.TailCount("t", ("Tanh",), -1.0, 1.0)]

    def manager(*plugs):
        pm = pluggy.PluginManager("gradscope")
        pm.add_hookspecs(hookspecs)
        for plugin in plugs:
            pm.register(plugin)
        return pm

    with pytest.raises(gradscope.errors.GradscopeError, match="strict.limit"):
        Analyzer(manager(Strict()), plugins.Config({"strict": {"limit": "high"}}))
    analyzer = Analyzer(manager(Strict(), Broken()), plugins.Config())
    assert analyzer.tail_requests == []  # the broken plugin is off before it asks for statistics
    assert [f["check"] for f in analyzer.finish()] == ["plugin-error"]


def test_every_hook_is_documented_and_used_by_a_builtin():
    specs = [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("gradscope_")]
    assert len(specs) == 6
    _, infos = plugins.load()
    used = {h for info in infos for h in info.hooks}
    for spec in specs:
        doc = inspect.getdoc(spec) or ""
        assert len(doc) > 80 and "thread" in doc, f"{spec.__name__} is not documented"
        assert spec.__name__ in used, f"no built-in implements {spec.__name__}"
        for arg in inspect.signature(spec).parameters:
            assert f"`{arg}`" in doc, f"{spec.__name__} does not document {arg}"


def test_cli_plugins_list_fail_on_and_switches(run_cli, script, tmp_path, third_party):
    env = {"PYTHONPATH": str(third_party)}
    out = run_cli("plugins", check=0, env=env).stdout
    assert "loss-spike" in out and "gradscope-loss-spike" in out and "dead-relu" in out
    train = script(textwrap.dedent("""
        import torch
        from torch import nn
        model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 1))
        opt = torch.optim.SGD(model[0].parameters(), lr=0.01)
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(2, 4)).sum().backward()
            opt.step()
    """))
    proc = run_cli("run", "--fail-on", "warning", "--report", "r.json", train, env=env)
    assert proc.returncode == 3
    assert "warning param-not-in-optimizer 1.weight" in proc.stderr
    proc = run_cli("run", "--fail-on", "error", train, env=env)
    assert proc.returncode == 3 and "error   plugin-error raising" in proc.stderr
    proc = run_cli("run", "--fail-on", "error", "-p", "no:raising", train, env=env)
    assert proc.returncode == 0, proc.stderr
    switches = ["-p", "no:param-not-in-optimizer", "-p", "no:raising"]
    proc = run_cli("run", "--fail-on", "warning", *switches, train, env=env)
    assert proc.returncode == 0, proc.stderr
    assert run_cli("run", "-p", "dead-relu", train).stderr.count("expected no:NAME") == 1
    proc = run_cli("run", "--set", "update-ratio.high=abc", train)
    assert proc.returncode == 2 and "expected a float" in proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    finding = next(f for f in report["findings"] if f["check"] == "param-not-in-optimizer")
    assert set(finding) >= {"check", "severity", "subject", "step", "message", "evidence", "hint"}


def test_readme_plugin_example_works(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    source = readme.split("### Writing a plugin")[1].split("```python")[1].split("```")[0]
    assert len(source.strip().splitlines()) < 30
    site = fake_dist(tmp_path / "site", "readme-plugin", {"loss-spike": "readme_plugin:LossSpike"},
                     {"readme_plugin": source})
    monkeypatch.syspath_prepend(str(site))
    found = only(findings_of(tmp_path, build, spiky_loop, steps=8), "loss-spike")
    assert [(f["subject"], f["step"]) for f in found] == [("loss", 6)]
