"""Edges of the message-passing graph, and the dense all-pairs builder.

The model only sees an :class:`Edges` value: candidate pairs (a -> b) with a periodic shift and a
mask. It applies the exact cutoff (d <= rc) itself, so any builder that returns a superset of the
pairs within the cutoff (all pairs, a Verlet list with a skin, a cell list) gives the same energy.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Edges:
    """Candidate edges a -> b (messages flow from sender a to receiver b).

    Attributes:
      senders: [E] int32, index of atom a.
      receivers: [E] int32, index of atom b.
      shifts: [E, 3] Å, Cartesian periodic shift: the edge vector is R_a - R_b + shift.
      mask: [E] bool, False for padding slots (they contribute exactly zero).
    """

    senders: jax.Array
    receivers: jax.Array
    shifts: jax.Array
    mask: jax.Array

    @property
    def num_edges(self) -> int:
        return self.senders.shape[0]


@functools.lru_cache(maxsize=64)
def _all_pair_indices(num_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs (a, b), a != b, of num_atoms atoms (static, cached per size)."""
    a, b = np.nonzero(~np.eye(num_atoms, dtype=bool))
    return a.astype(np.int32), b.astype(np.int32)


def all_pairs_edges(atom_mask: jax.Array, batch: jax.Array, dtype=jnp.float32) -> Edges:
    """Every ordered pair of real atoms of the same structure: O(N^2) candidates.

    Args:
      atom_mask: [N] bool, False for padding atoms.
      batch: [N] int, structure index of each atom.
      dtype: float dtype of the (zero) shifts.
    Returns:
      Edges with E = N (N - 1) slots.
    """
    num_atoms = atom_mask.shape[0]
    senders, receivers = _all_pair_indices(num_atoms)
    mask = atom_mask[senders] & atom_mask[receivers] & (batch[senders] == batch[receivers])
    shifts = jnp.zeros((senders.shape[0], 3), dtype)
    return Edges(jnp.asarray(senders), jnp.asarray(receivers), shifts, mask)
