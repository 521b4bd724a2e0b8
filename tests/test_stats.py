"""On-device statistics agree with torch's own reductions."""

import math

import pytest
import torch

from gradscope.trace.stats import FIELDS, summarize


def as_dict(count, values):
    row = dict(zip(FIELDS, values), count=count)
    row["zeros"], row["nonfinite"] = int(row["zeros"]), int(row["nonfinite"])
    return row


def oracle(t):
    x = t.detach().double()
    return {
        "mean": x.mean().item(), "std": x.std(correction=0).item(), "min": x.min().item(),
        "max": x.max().item(), "norm": x.norm().item(), "zeros": int((x == 0).sum()),
        "nonfinite": int((~torch.isfinite(x)).sum()),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_float_statistics_match_torch(dtype):
    torch.manual_seed(0)
    t = torch.randn(7, 13).to(dtype)
    t[0, :5] = 0
    got = as_dict(t.numel(), summarize(t).tolist())
    want = oracle(t.float())
    assert got["count"] == 91
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert got["zeros"] == 5


def test_integer_bool_and_complex_tensors():
    ints = torch.tensor([[0, 2], [3, -4]])
    assert as_dict(4, summarize(ints).tolist())["max"] == 3
    assert as_dict(4, summarize(ints).tolist())["zeros"] == 1
    flags = torch.tensor([True, False, True])
    assert as_dict(3, summarize(flags).tolist())["mean"] == pytest.approx(2 / 3)
    c = torch.tensor([3 + 4j, 0j])
    row = as_dict(2, summarize(c).tolist())
    assert row["max"] == pytest.approx(5.0) and row["zeros"] == 1


def test_nonfinite_values_are_counted():
    t = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0])
    row = as_dict(5, summarize(t).tolist())
    assert row["nonfinite"] == 3
    assert math.isnan(row["mean"])


def test_tensors_without_values_give_no_row():
    assert summarize(torch.empty(0)) is None
    assert summarize(torch.empty(3, device="meta")) is None
    assert summarize(torch.eye(3).to_sparse()) is None


def test_single_element_has_zero_spread():
    row = as_dict(1, summarize(torch.tensor([2.5])).tolist())
    assert row["std"] == 0.0 and row["mean"] == 2.5
    assert len(FIELDS) == len(summarize(torch.tensor([2.5])))


def test_histogram_matches_torch_histc():
    from gradscope.trace.stats import histogram

    torch.manual_seed(0)
    t = torch.randn(1000)
    row = histogram(t, bins=8).tolist()
    low, high, counts = row[0], row[1], row[2:]
    assert (low, high) == (t.min().item(), t.max().item())
    assert counts == torch.histc(t, bins=8, min=low, max=high).tolist()
