"""Neighbour search: O(N) cell lists, any periodic cell, batches, and a GPU kernel.

    from mlff_jax import neighbors
    i, j, S = neighbors.neighbor_pairs(positions, 5.0, cell, pbc)        # host, ASE's "ijS"
    neighbor_fn = neighbors.neighbor_list_fn(5.0, skin=0.5, cell=cell)   # JAX-MD style, jittable
    nbrs = neighbor_fn.allocate(positions)
    nbrs = neighbor_fn.update(positions, nbrs)                           # inside jit
    edges = neighbors.neighbor_list_edges(nbrs)                          # the model's Edges

See docs/neighbors.md.
"""

from mlff_jax.neighbors.edges import neighbor_list_edges
from mlff_jax.neighbors.host import neighbor_pairs
from mlff_jax.neighbors.neighbor_list import NeighborList, NeighborListFns, build, neighbor_list_fn, update, update_with_retry
from mlff_jax.neighbors.plan import SearchSpec

__all__ = [
    "NeighborList",
    "NeighborListFns",
    "SearchSpec",
    "build",
    "neighbor_list_edges",
    "neighbor_list_fn",
    "neighbor_pairs",
    "update",
    "update_with_retry",
]
