"""Combining the ranks' figures of sharded parameters, checked against torch on real tensors."""

import math

import torch

from gradscope.data import Stat
from gradscope.distributed import combine, describe, one_replica, rank_ranges, same_values
from gradscope.trace.stats import FIELDS, summarize


def _stat(t: torch.Tensor) -> Stat:
    values = dict(zip(FIELDS, summarize(t).tolist()))
    return Stat("grad", "w", 0, "", t.numel(), values["mean"], values["std"], values["min"],
                values["max"], values["norm"], int(values["zeros"]), int(values["nonfinite"]))


def test_shards_combine_into_the_whole_tensor_statistics():
    torch.manual_seed(0)
    whole = torch.randn(7, 5)
    whole[0, 0] = 0.0
    shards = whole.tensor_split(3)  # uneven, as FSDP's last shard
    got = combine([_stat(s) for s in shards] + [Stat("grad", "w", 0, "", 0, *[math.nan] * 5, 0, 0)])
    want = _stat(whole)
    assert got.count == 35 and got.zeros == 1 and got.nonfinite == 0
    for field in ("mean", "std", "min", "max", "norm"):
        assert math.isclose(getattr(got, field), getattr(want, field), rel_tol=1e-6), field


def test_a_non_finite_shard_makes_the_whole_non_finite():
    got = combine([_stat(torch.tensor([1.0, float("nan")])), _stat(torch.tensor([2.0]))])
    assert got.nonfinite == 1 and math.isnan(got.norm)
    assert combine([]) is None


def _layout(placements, mesh, coordinate):
    return {"placements": placements, "mesh": mesh, "dims": None, "coordinate": coordinate, "local_shape": [1]}


def test_only_ranks_holding_the_same_shard_are_compared():
    fsdp = [_layout(["Shard(0)"], [2], [r]) for r in (0, 1)]
    assert not same_values(fsdp[0], fsdp[1])
    hsdp = {r: _layout(["Replicate()", "Shard(0)"], [2, 2], [r // 2, r % 2]) for r in range(4)}
    assert same_values(hsdp[0], hsdp[2]) and not same_values(hsdp[0], hsdp[1])
    assert same_values(None, None)  # DDP: every rank holds the whole parameter
    assert not same_values(None, fsdp[0])


def test_one_whole_copy_is_found_among_the_ranks():
    hsdp = {r: _layout(["Replicate()", "Shard(0)"], [2, 2], [r // 2, r % 2]) for r in range(4)}
    assert one_replica(hsdp) == [0, 1]
    assert one_replica({r: hsdp[r] for r in (0, 2)}) is None  # shard 1 is missing
    assert one_replica({0: None, 1: None}) == [0]
    assert describe(hsdp[0]) == "Replicate(), Shard(0) over 2x2 ranks" and describe(None) == ""


def test_rank_ranges_fold_runs():
    assert rank_ranges(range(2, 8)) == "2..7"
    assert rank_ranges([4, 1, 3]) == "1, 3..4"
    assert rank_ranges([5]) == "5"
