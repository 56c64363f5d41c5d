"""The whole PaiNN student with the fused message kernel: energy and forces on a dense neighbour list.

Same model as ``mlff_jax.painn`` (shared/design/painn-student.md); the message step of every block
goes through :func:`..api.message_block` (the chosen implementation), update and readout are the
XLA code of ``mlff_jax.painn`` (with the config's vector mixing; the filter envelope, when the
config has one, is applied inside the message kernels). Compressed blocks (``filter_table``) evaluate their table inside the
kernels (:mod:`.pallas_table`). Forces are ``-jax.grad`` of the energy; through the kernel paths
the message blocks differentiate with the fused backward kernel (custom VJP) and the per-slot
geometry (distances, directions) differentiates back to positions in XLA.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mlff_jax import painn
from mlff_jax.config import PaiNNConfig

from .api import message_block
from .layout import slot_geometry

# Update and readout are O(N H^2): they stay at float32 HIGHEST whatever the kernels' precision mode.
_DENSE_PRECISION = jax.lax.Precision.HIGHEST


def mask_neighbors(neighbors: jax.Array, atom_mask: jax.Array | None, batch: jax.Array | None) -> jax.Array:
    """Empties (sets to N) every slot that touches a padding atom or crosses two structures.

    The result stays a full (symmetric) list if the input was one.
    """
    n = neighbors.shape[0]
    valid = (neighbors >= 0) & (neighbors < n)
    senders = jnp.where(valid, neighbors, 0)
    if atom_mask is not None:
        valid &= atom_mask[:, None] & atom_mask[senders]
    if batch is not None:
        valid &= batch[:, None] == batch[senders]
    return jnp.where(valid, neighbors, n).astype(jnp.int32)


def check_model_inputs(positions, atomic_numbers, neighbors, shifts, atom_mask=None, batch=None) -> None:
    """Raises ValueError naming the first array whose shape does not fit positions [N, 3]."""
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must be [N, 3], got {positions.shape}")
    n = positions.shape[0]
    if atomic_numbers.shape != (n,):
        raise ValueError(f"atomic_numbers must be [N] = [{n}], got {atomic_numbers.shape}")
    if neighbors.ndim != 2 or neighbors.shape[0] != n:
        raise ValueError(f"neighbors must be [N, C] with N = {n}, got {neighbors.shape}")
    if shifts.shape != (*neighbors.shape, 3):
        raise ValueError(f"shifts must be [N, C, 3] = {(*neighbors.shape, 3)}, got {shifts.shape}")
    for name, x in (("atom_mask", atom_mask), ("batch", batch)):
        if x is not None and x.shape != (n,):
            raise ValueError(f"{name} must be [N] = [{n}], got {x.shape}")


def atomic_energies_kernel(
    params,
    config: PaiNNConfig,
    positions: jax.Array,
    atomic_numbers: jax.Array,
    neighbors: jax.Array,
    shifts: jax.Array,
    atom_mask: jax.Array | None = None,
    batch: jax.Array | None = None,
    implementation: str = "xla",
    interpret: bool = False,
    precision: str = "highest",
    **kernel_options,
) -> jax.Array:
    """Energy of each atom, [N] eV (exactly 0 for padding atoms).

    positions: [N, 3] Å; atomic_numbers: [N] int; neighbors: [N, C] int32 (sentinel N, a full
    list); shifts: [N, C, 3] Å; atom_mask: [N] bool; batch: [N] int structure index.
    ``kernel_options`` (block_atoms, num_warps, num_stages) go to :func:`message_block`.
    """
    check_model_inputs(positions, atomic_numbers, neighbors, shifts, atom_mask, batch)
    neighbors = mask_neighbors(neighbors, atom_mask, batch)
    distances, directions, _ = slot_geometry(positions, neighbors, shifts.astype(positions.dtype))
    centers, widths = params["rbf"]["centers"], params["rbf"]["widths"]
    s = params["embedding"]["embedding"][atomic_numbers]
    v = jnp.zeros((s.shape[0], 3, s.shape[1]), s.dtype)
    for t in range(config.num_interactions):
        block = params[f"interactions_{t}"]
        ds, dv = message_block(
            s, v, neighbors, distances, directions, block, centers, widths,
            cutoff=config.cutoff, implementation=implementation, interpret=interpret, precision=precision,
            envelope=config.filter_envelope, **kernel_options,
        )  # fmt: skip
        s, v = painn.update(block, s + ds, v + dv, _DENSE_PRECISION, config.vector_mixing)
    energies = painn.readout(params, s, _DENSE_PRECISION)
    if painn.ATOM_REFERENCE in params:  # optional per-element reference energies, as in painn.atomic_energies
        energies = energies + params[painn.ATOM_REFERENCE]["energies"][atomic_numbers]
    if atom_mask is not None:
        energies = jnp.where(atom_mask, energies, 0.0)
    return energies


def energy_and_forces_kernel(
    params,
    config: PaiNNConfig,
    positions: jax.Array,
    atomic_numbers: jax.Array,
    neighbors_idx: jax.Array,
    shifts: jax.Array,
    atom_mask: jax.Array,
    batch: jax.Array,
    num_structures: int,
    implementation: str = "xla",
    interpret: bool = False,
    precision: str = "highest",
    **kernel_options,
):
    """Per-structure energies [B] eV and forces [N, 3] eV/Å (zero on padding atoms).

    Pure function (jit it with ``num_structures``, ``implementation``, ``interpret``, ``precision``
    static). Arguments as in :func:`atomic_energies_kernel`; ``num_structures`` = B.
    """

    def total(pos):
        per_atom = atomic_energies_kernel(
            params, config, pos, atomic_numbers, neighbors_idx, shifts, atom_mask, batch,
            implementation, interpret, precision, **kernel_options,
        )  # fmt: skip
        energies = jax.ops.segment_sum(per_atom, batch, num_structures)
        return jnp.sum(energies), energies

    grad, energies = jax.grad(total, has_aux=True)(positions)
    return energies, -grad
