"""Neighbour gather over a cell list: one entry point, ``implementation="xla"|"pallas"``."""

from __future__ import annotations

import jax.numpy as jnp

from . import reference

IMPLEMENTATIONS = ("xla", "pallas")


def gather_neighbors(positions, coords, batch, center_mask, table, table_positions, cells, *, grid, stencil, pbc, cutoff, capacity,
                     order=None, implementation="xla", interpret=False):
    """Neighbour rows of every atom from a bin table (the op is described in :mod:`.reference`).

    Args:
      positions: [N, 3] Å wrapped positions; coords: [N, 3] int32 bin coordinates;
      batch: [N] int32 structure index; center_mask: [N] bool (False: the row stays empty).
      table: [B * G, C] int32 atoms per bin (N in empty slots); table_positions: [B * G, C, 3] Å.
      cells: [B, 3, 3] Å, rows are cell vectors.
      grid, stencil, pbc: static 3-tuples (bins, bins searched on each side, periodicity).
      cutoff: Å; capacity: neighbour slots per row K (0: counts only).
      order: [N] processing order of the centres (Pallas only: bin order is cache-friendly).
      implementation: "xla" (plain JAX, any backend) or "pallas" (fused kernel; Triton on GPU,
        or any backend with ``interpret=True``; needs a power-of-two bin capacity).
    Returns:
      (idx [N, K] int32, image [N, K, 3] int8, counts [N] int32); idx and image are None if K == 0.
    """
    static = dict(grid=tuple(grid), stencil=tuple(stencil), pbc=tuple(pbc), cutoff=float(cutoff), capacity=int(capacity))
    if implementation == "xla":
        idx, image, counts = reference.gather_neighbors(positions, coords, batch, center_mask, table, table_positions, cells, **static)
        return (idx, image, counts) if capacity else (None, None, counts)
    if implementation == "pallas":
        from . import pallas_gather  # imported lazily: Pallas is not needed for the XLA path

        if order is None:
            order = jnp.arange(positions.shape[0], dtype=jnp.int32)
        return pallas_gather.gather_neighbors(positions, coords, batch, center_mask, table, table_positions, cells, order, interpret=interpret, **static)
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
