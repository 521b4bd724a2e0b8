"""On-device tensor statistics.

Every statistic is computed where the tensor lives and stays there: `summarize` only launches
kernels and returns a small device tensor. Nothing here reads a value back to the host; the
recorder thread does that once per step for all rows together (see `session.py`).

`std` is the population standard deviation (``correction=0``) so that a one-element tensor has a
finite spread; it comes from the same pass as the norm (sqrt(E[x^2] - E[x]^2)), accurate to
float32 rounding unless the mean dwarfs the spread by orders of magnitude. Complex tensors are summarized by their magnitude, integer and bool tensors as
float32. Sparse, meta and empty tensors have no statistics (only a shape).
"""

from __future__ import annotations

import torch

#: Order of the values in a statistics row; ``count`` travels separately (it is known on the host).
FIELDS = ("mean", "std", "min", "max", "norm", "zeros", "nonfinite")


def has_values(t: torch.Tensor) -> bool:
    """Whether `t` holds values gradscope can summarize without touching the host."""
    return t.layout == torch.strided and t.device.type != "meta" and t.numel() > 0


def summarize(t: torch.Tensor) -> torch.Tensor | None:
    """Return a float64 device tensor of `FIELDS` for `t`, or None when `t` has no values."""
    if not has_values(t):
        return None
    x = t.detach()
    if x.is_complex():
        x = x.abs()
    if not x.is_floating_point():
        x = x.float()
    elif x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    flat = x.reshape(-1)
    n = flat.numel()
    total = flat.sum()
    squares = torch.dot(flat, flat)  # one BLAS pass: the norm, and with the sum, the spread
    mean = total / n
    std = (squares / n - mean * mean).clamp(min=0).sqrt()
    low, high = torch.aminmax(flat)
    floats = torch.stack((mean, std, low, high, squares.sqrt()))
    counts = torch.stack((n - torch.count_nonzero(flat), n - torch.count_nonzero(torch.isfinite(flat))))
    return torch.cat((floats.double(), counts.double()))



#: Bins of the gradient histograms (parameters, on steps with full statistics).
HIST_BINS = 16


def histogram(t: torch.Tensor, bins: int = HIST_BINS) -> torch.Tensor | None:
    """Device tensor [2 + bins]: low, high, then element counts of `bins` equal-width bins.

    Computed without reading the range back to the host (scatter_add into a fixed-size
    tensor); non-finite elements fall into the edge bins.
    """
    if not has_values(t) or not t.is_floating_point():
        return None
    x = t.detach().reshape(-1).float()
    low, high = torch.aminmax(x)
    width = (high - low).clamp(min=torch.finfo(torch.float32).tiny) / bins
    index = ((x - low) / width).nan_to_num(0.0).floor().clamp(0, bins - 1).long()
    counts = torch.zeros(bins, device=x.device).scatter_add_(0, index, torch.ones_like(x))
    return torch.cat((low.reshape(1), high.reshape(1), counts)).double()
