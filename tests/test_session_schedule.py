"""The statistics and graph schedule, and the settings it comes from: pure logic, no torch."""

import sys

import pytest

from gradscope.settings import DEFAULTS, HELP, Settings
from gradscope.trace.schedule import Schedule


def test_full_statistics_dense_start_then_every_nth_and_on_alarm():
    schedule = Schedule(stats_every=5, graph_every=100, dense_steps=20)
    full = [s for s in range(40) if schedule.full_stats(s)]
    assert full == [*range(20), 20, 25, 30, 35]
    assert schedule.full_stats(21, alarm=True)


def test_graph_walk_on_first_steps_on_new_shapes_and_every_nth():
    schedule = Schedule(stats_every=10, graph_every=4, dense_steps=0)
    assert schedule.walk_graph(0, None)  # the first step
    assert schedule.walk_graph(1, "a", "a1")  # the first signature is new
    assert not schedule.walk_graph(2, "a", "a1") and not schedule.walk_graph(3, "a")
    assert schedule.walk_graph(4, "a")  # every 4th
    assert schedule.walk_graph(5, "b")  # the root calls' shapes changed
    assert not schedule.walk_graph(6, "b")


def test_graph_walk_when_inner_calls_change_between_described_steps():
    """A light step records its root calls only: its missing inner calls are no change, but
    described steps are compared with the last described one."""
    schedule = Schedule(stats_every=10, graph_every=100, dense_steps=0)
    schedule.walk_graph(0, None)
    assert schedule.walk_graph(1, "r", "r+a")
    assert not schedule.walk_graph(2, "r", None)  # light: root calls only
    assert not schedule.walk_graph(3, "r", "r+a")
    assert schedule.walk_graph(4, "r", "r+b")  # same roots, other inner calls
    assert not schedule.walk_graph(5, "r", None)


def test_graph_walk_off():
    schedule = Schedule(stats_every=10, graph_every=0, dense_steps=20)
    assert not any(schedule.walk_graph(s, s, s) for s in range(10))


def test_settings_reject_bad_values_and_feed_the_help():
    with pytest.raises(ValueError):
        Settings(graph_every=-5)
    with pytest.raises(ValueError):
        Settings(sample=0)
    with pytest.raises(TypeError):
        Settings(stats_every=2.5)
    assert f"default {DEFAULTS.sample}" in HELP["sample"]
    assert f"first {DEFAULTS.dense_steps} steps" in HELP["stats_every"]


def test_schedule_and_settings_do_not_import_torch():
    import subprocess

    # gradscope/__init__ imports torch: load the two modules by path instead
    code = (
        "import importlib.util, sys\n"
        "for name in ('settings', 'trace/schedule'):\n"
        "    spec = importlib.util.spec_from_file_location(name[-8:], 'gradscope/' + name + '.py')\n"
        "    sys.modules[spec.name] = module = importlib.util.module_from_spec(spec)\n"
        "    spec.loader.exec_module(module)\n"
        "print('torch' in sys.modules)"
    )
    import gradscope

    root = __import__("pathlib").Path(gradscope.__file__).parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
