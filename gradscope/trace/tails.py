"""Statistics plugins can ask for (see the ``gradscope_statistics`` hook): tail counts and
dead units. Both are computed on the tensor's device like every other statistic: a tail count is
one reduction per tensor; for dead units each tensor gives only its per-unit maximum (one
reduction), and the units of all tensors are judged together (`capture.Staging`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .stats import has_values


@dataclass(frozen=True)
class TailCount:
    """Count the elements outside the open interval (`low`, `high`) in every output of modules
    whose class name is in `module_types`; reported as ``step.tails[(module, call, name)]``."""

    name: str
    module_types: tuple[str, ...]
    low: float
    high: float


def count_outside(t: torch.Tensor, request: TailCount) -> torch.Tensor | None:
    """0-d device tensor: how many elements of `t` lie outside (low, high)."""
    if not has_values(t) or not (t.is_floating_point() or t.is_complex()):
        return None
    x = t.detach()
    if x.is_complex():
        x = x.abs()
    if request.high == math.inf:
        inside = torch.count_nonzero(x > request.low)
    elif request.low == -math.inf:
        inside = torch.count_nonzero(x < request.high)
    else:
        inside = torch.count_nonzero((x > request.low) & (x < request.high))
    return x.numel() - inside


@dataclass(frozen=True)
class DeadUnits:
    """Count the units (slices along `unit_dim`) whose every element is <= 0 in every output of
    modules whose class name is in `module_types`: channels of a convolution (dim 1), features
    of a linear layer (dim -1). Reported as ``step.tails[(module, call, name)]`` = (dead units,
    units)."""

    name: str
    module_types: tuple[str, ...]
    unit_dim: int = 1


def unit_maxima(t: torch.Tensor, request: DeadUnits) -> torch.Tensor | None:
    """Device tensor [units]: the largest value of each unit of `t` (a unit is dead when its
    maximum is not above zero; NaN counts as dead)."""
    if not has_values(t) or not t.is_floating_point() or t.dim() < 2:
        return None
    unit = request.unit_dim % t.dim()
    return t.detach().amax(dim=[d for d in range(t.dim()) if d != unit])


def count_dead(maxima: torch.Tensor) -> torch.Tensor:
    """How many of the units whose maxima are given are dead."""
    return torch.count_nonzero(~(maxima > 0))
