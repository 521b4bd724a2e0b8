"""Sharded parameters (DTensor, as FSDP2's ``fully_shard`` and tensor parallelism make them).

A DTensor reports the global shape, but its values live spread over the ranks of a device
mesh. gradscope never gathers them: every statistic is taken on this rank's own shard
(`local`, no collective, no host read), and the record says how the parameter is laid out
(`placement`) so that whoever holds every rank's record can combine the shards' figures into
the global ones (`gradscope.distributed.combine`).
"""

from __future__ import annotations

import torch

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch built without distributed support
    DTensor = None


def is_sharded(t) -> bool:
    """Whether `t` is a DTensor (its values spread over a device mesh)."""
    return DTensor is not None and isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The part of `t` this rank holds: a DTensor's local shard, else `t` itself. Taken with
    autograd off, so that no backward node is made for a parameter's shard."""
    if not is_sharded(t):
        return t
    with torch.no_grad():
        return t.to_local()


def _name(p) -> str:
    dim = getattr(p, "dim", None)
    if p.is_shard() and dim is not None:
        return f"Shard({dim})"
    if p.is_replicate():
        return "Replicate()"
    if p.is_partial():
        return f"Partial({getattr(p, 'reduce_op', 'sum')})"
    return str(p)


def placement(t) -> dict | None:
    """How a DTensor is laid out, as plain values; None for an ordinary tensor.

    ``placements`` (one per mesh dimension: ``Shard(0)``, ``Replicate()``), ``mesh`` (the mesh's
    shape), ``dims`` (its dimension names, or None), ``coordinate`` (this rank's place in the
    mesh) and ``local_shape`` (the shape of this rank's shard).
    """
    if not is_sharded(t):
        return None
    mesh = t.device_mesh
    coordinate = mesh.get_coordinate()
    return {
        "placements": [_name(p) for p in t.placements],
        "mesh": list(mesh.shape),
        "dims": None if mesh.mesh_dim_names is None else list(mesh.mesh_dim_names),
        "coordinate": None if coordinate is None else list(coordinate),
        "local_shape": list(t.to_local().shape),
    }
