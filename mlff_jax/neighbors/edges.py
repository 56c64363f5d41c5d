"""From a neighbour list to the model's :class:`mlff_jax.graph.Edges`."""

from __future__ import annotations

import jax.numpy as jnp

from mlff_jax.graph import Edges
from mlff_jax.neighbors.neighbor_list import NeighborList


def neighbor_list_edges(nbrs: NeighborList, cells=None, dtype=None) -> Edges:
    """Edges a -> b for every entry of the list: receiver b = the row's atom, sender a = its neighbour.

    The Cartesian shift is S @ cell, so that the edge vector R_a - R_b + shift is the pair vector of
    the entry (ASE's D for i = b, j = a). Pass ``cells`` (e.g. strained cells, [B, 3, 3] or [3, 3])
    to differentiate through the shifts; the integer shifts S are fixed by the list.

    Returns:
      Edges with E = N * capacity slots; empty slots have mask False and sender = receiver.
    """
    num_atoms, capacity = nbrs.idx.shape
    receivers = jnp.repeat(jnp.arange(num_atoms, dtype=jnp.int32), capacity)
    mask = nbrs.mask.reshape(-1)
    senders = jnp.where(mask, nbrs.idx.reshape(-1), receivers)
    cells = nbrs.cells if cells is None else jnp.asarray(cells)
    if dtype is not None:
        cells = cells.astype(dtype)
    shifts = nbrs.cartesian_shifts(cells).reshape(-1, 3)
    return Edges(senders, receivers, jnp.where(mask[:, None], shifts, 0.0), mask)
