"""Run a small training loop under gradscope.watch and return its findings."""

import torch

import gradscope


def findings_of(tmp_path, build, loop, steps=6, **watch_kwargs):
    """`build()` -> (model, optimizer or None); `loop(model, optimizer, step)` trains one step."""
    torch.manual_seed(0)
    model, optimizer = build()
    path = tmp_path / "r.sqlite"
    with gradscope.watch(model, optimizer, record=path, **watch_kwargs):
        for step in range(steps):
            loop(model, optimizer, step)
    return gradscope.open_record(path).findings()


def only(findings, check):
    return [f for f in findings if f["check"] == check]


def serious(findings):
    return [f for f in findings if f["severity"] in ("error", "warning")]
