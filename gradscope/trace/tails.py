"""Statistics plugins can ask for (see the ``gradscope_statistics`` hook): tail counts and
dead units. Both are computed on the tensor's device like every other statistic."""

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
    """Device tensor [1]: how many elements of `t` lie outside (low, high)."""
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
    return (x.numel() - inside).reshape(1).double()


@dataclass(frozen=True)
class DeadUnits:
    """Count the units (slices along `unit_dim`) whose every element is <= 0 in every output of
    modules whose class name is in `module_types`: channels of a convolution (dim 1), features
    of a linear layer (dim -1). Reported as ``step.tails[(module, call, name)]`` = (dead units,
    units)."""

    name: str
    module_types: tuple[str, ...]
    unit_dim: int = 1


def count_dead(t: torch.Tensor, request: DeadUnits) -> torch.Tensor | None:
    """Device tensor [1]: how many units of `t` never rise above zero."""
    if not has_values(t) or not t.is_floating_point() or t.dim() < 2:
        return None
    x = t.detach().movedim(request.unit_dim, 0).reshape(t.shape[request.unit_dim], -1)
    return torch.count_nonzero(~(x.amax(dim=1) > 0)).reshape(1).double()


def compute(t: torch.Tensor, request) -> tuple[torch.Tensor | None, int]:
    """(device count, how many things were counted) for a `TailCount` or `DeadUnits`."""
    if isinstance(request, DeadUnits):
        return count_dead(t, request), (t.shape[request.unit_dim] if t.dim() >= 2 else 0)
    return count_outside(t, request), t.numel()
