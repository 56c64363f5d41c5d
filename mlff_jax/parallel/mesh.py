"""Devices, the 1-D device mesh, and ``shard_map`` across JAX versions.

Everything in :mod:`mlff_jax.parallel` runs on a one-dimensional mesh whose single axis
(``AXIS``) enumerates the devices taking part; per-device arrays are stacked along a leading axis
of length D and sharded over it (``PartitionSpec(AXIS)``).
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "devices"

try:  # jax >= 0.8: jax.shard_map(f, mesh=, in_specs=, out_specs=, check_vma=)
    _shard_map = jax.shard_map

    def shard_map(f, mesh, in_specs, out_specs):
        """``shard_map`` without replication checks (collectives here are explicit and exact)."""
        return _shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

except AttributeError:  # pragma: no cover - older jax
    from jax.experimental.shard_map import shard_map as _shard_map

    def shard_map(f, mesh, in_specs, out_specs):
        return _shard_map(f, mesh, in_specs, out_specs, check_rep=False)


def resolve_devices(devices=None) -> list:
    """The devices to use: ``None`` -> all visible devices, an int n -> the first n, or a list of
    ``jax.Device``. Raises ValueError for an empty selection or more than are visible."""
    visible = jax.devices()
    if devices is None:
        return list(visible)
    if isinstance(devices, (int, np.integer)):
        if not 1 <= int(devices) <= len(visible):
            raise ValueError(f"devices={int(devices)} but {len(visible)} device(s) are visible")
        return list(visible[: int(devices)])
    chosen = list(devices)
    if not chosen:
        raise ValueError("devices must name at least one device")
    if len({d.id for d in chosen}) != len(chosen):
        raise ValueError("devices must not repeat a device")
    return chosen


def device_mesh(devices: Sequence) -> Mesh:
    """A 1-D mesh over ``devices`` with the axis name ``AXIS``."""
    return Mesh(np.asarray(devices, dtype=object), (AXIS,))


def sharded(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the devices (one block per device)."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def put_sharded(mesh: Mesh, *arrays):
    """Host arrays [D, ...] -> device arrays with block d on device d."""
    sharding = sharded(mesh)
    # Built from a callback: each process materialises only its own devices' blocks (multi-host safe).
    out = tuple(jax.make_array_from_callback(a.shape, sharding, lambda index, a=a: a[index]) for a in map(np.asarray, arrays))
    return out if len(out) != 1 else out[0]


def to_host(tree):
    """Device arrays -> NumPy, also for arrays spread over several hosts (all-gathered first)."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree_util.tree_map(get, tree)
