"""The PaiNN student as a JAX-MD energy, with JAX-MD's own neighbour lists.

    from jax_md import space, simulate
    from mlff_jax.jax_md import energy_neighbor_list

    displacement_fn, shift_fn = space.periodic(box)            # or space.free()
    neighbor_fn, energy_fn = energy_neighbor_list(model, displacement_fn, box, atomic_numbers)
    nbrs = neighbor_fn.allocate(positions)
    init_fn, apply_fn = simulate.nve(energy_fn, shift_fn, dt)
    state = init_fn(key, positions, kT, mass=masses, neighbor=nbrs)
    nbrs = nbrs.update(state.position)                          # inside your loop
    if nbrs.did_buffer_overflow: nbrs = neighbor_fn.allocate(state.position)   # then redo the steps

This follows JAX-MD's ``*_neighbor_list`` energies (``energy.lennard_jones_neighbor_list``):
``energy_fn(positions, neighbor=nbrs, **kwargs)`` returns a scalar in eV, and extra keyword
arguments (e.g. ``box=`` of ``space.periodic_general``) go to ``displacement_fn``. Units are
whatever you feed: with positions in Å, masses in amu, kT in eV and ``dt`` in ASE time units
(``ase.units.fs``), JAX-MD integrates in ASE's units. Needs the ``md`` extra (``jax-md``);
``jax_md`` is imported only inside the functions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mlff_jax import analytic, painn
from mlff_jax.graph import Edges
from mlff_jax.evaluation import PRECISIONS


def _jax_md():
    try:
        import jax_md
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("mlff_jax.jax_md needs JAX-MD: pip install 'mlff-jax[md]' (jax-md==0.2.29)") from error
    return jax_md


def edges_from_dense_neighbors(idx: jax.Array, positions: jax.Array, displacement_fn, **displacement_kwargs) -> Edges:
    """Our :class:`Edges` from a JAX-MD ``Dense`` neighbour index.

    Args:
      idx: [N, C] int, neighbours of each atom; the sentinel N marks empty slots.
      positions: [N, 3] (Å, or fractional for a fractional-coordinates space).
      displacement_fn: JAX-MD displacement, ``(Ra, Rb) -> Ra - Rb`` (minimum image if periodic).
    Returns:
      Edges with E = N * C slots: receiver i, sender idx[i, c], and the displacement as the shift on
      zero positions, so the model sees ``vec = displacement(R_sender, R_receiver)`` and gradients
      flow through it (``positions`` themselves are not read by the model).
    """
    num_atoms, capacity = idx.shape
    receivers = jnp.broadcast_to(jnp.arange(num_atoms, dtype=jnp.int32)[:, None], idx.shape)
    mask = idx < num_atoms
    senders = jnp.where(mask, idx, receivers).astype(jnp.int32)  # empty slots point at the atom itself (masked)
    displacement = functools.partial(displacement_fn, **displacement_kwargs)
    vectors = jax.vmap(displacement)(positions[senders.ravel()], positions[receivers.ravel()])
    return Edges(senders.ravel(), receivers.ravel(), vectors, mask.ravel())


def energy_neighbor_list(
    model,
    displacement_fn,
    box,
    atomic_numbers,
    dr_threshold: float = 0.5,
    capacity_multiplier: float = 1.25,
    disable_cell_list: bool = False,
    fractional_coordinates: bool = False,
    per_particle: bool = False,
    **neighbor_kwargs,
):
    """``(neighbor_fn, energy_fn)`` for JAX-MD, like ``jax_md.energy.*_neighbor_list``.

    Args:
      model: a :class:`~mlff_jax.PaiNNStudent` (its cutoff sets the list's ``r_cutoff``).
      displacement_fn: from ``jax_md.space`` (``free``, ``periodic``, ``periodic_general``).
      box: the box for the neighbour list (side length(s) or a [3, 3] matrix; for free space a box
        that holds the molecule, or any value with ``disable_cell_list=True``).
      atomic_numbers: [N] int.
      dr_threshold: Verlet skin in Å: the list holds pairs within cutoff + dr_threshold and is
        rebuilt by ``update`` once an atom has moved more than dr_threshold / 2.
      capacity_multiplier, disable_cell_list, fractional_coordinates, **neighbor_kwargs: passed to
        ``jax_md.partition.neighbor_list`` (the format is always ``Dense``).
      per_particle: ``energy_fn`` returns per-atom energies [N] eV instead of their sum.
    Returns:
      ``neighbor_fn`` (``allocate``/``update``) and ``energy_fn(positions, neighbor, **kwargs) -> eV``.
    """
    jax_md = _jax_md()
    numbers = jnp.asarray(atomic_numbers, jnp.int32)
    if numbers.ndim != 1 or numbers.shape[0] == 0:
        raise ValueError(f"atomic_numbers must be a non-empty [N] array, got shape {numbers.shape}")
    if bool(jnp.any((numbers < 1) | (numbers > model.config.max_z))):
        raise ValueError(f"unknown element: atomic numbers must lie in 1..{model.config.max_z}")
    model.check_elements(jax.device_get(numbers))
    neighbor_fn = jax_md.partition.neighbor_list(
        displacement_fn,
        box,
        model.config.cutoff,
        dr_threshold,
        capacity_multiplier=capacity_multiplier,
        disable_cell_list=disable_cell_list,
        fractional_coordinates=fractional_coordinates,
        format=jax_md.partition.Dense,
        **neighbor_kwargs,
    )
    dtype = jnp.dtype(model.dtype)
    precision = PRECISIONS[model.precision]
    # The model's message passing (mlff_jax.implementation): the fused kernels read JAX-MD's Dense
    # rows directly (same empty-slot sentinel N); otherwise the analytic sweep (custom_vjp).
    implementation = model.message_implementation(numbers.shape[0])

    def energy_fn(positions, neighbor=None, **kwargs):
        if neighbor is None:
            raise ValueError("energy_fn needs neighbor=: allocate one with neighbor_fn.allocate(positions)")
        if positions.shape[0] != numbers.shape[0]:
            raise ValueError(f"positions has {positions.shape[0]} atoms, atomic_numbers {numbers.shape[0]}")
        edges = edges_from_dense_neighbors(neighbor.idx, positions, displacement_fn, **kwargs)
        edges = Edges(edges.senders, edges.receivers, edges.shifts.astype(dtype), edges.mask)
        origin = jnp.zeros((numbers.shape[0], 3), dtype)  # the shifts already are the edge vectors
        if per_particle:
            return painn.atomic_energies(model.params, model.config, origin, numbers, edges, None, precision)
        num_atoms = numbers.shape[0]
        batch = jnp.zeros(num_atoms, jnp.int32)
        if implementation != "xla":
            from mlff_jax.implementation import kernel_atomic_energies  # noqa: PLC0415 (Pallas imports only when used)

            shifts = jnp.reshape(edges.shifts, (num_atoms, -1, 3))
            per_atom = kernel_atomic_energies(model.params, model.config, origin, numbers, neighbor.idx.astype(jnp.int32), shifts,
                                               jnp.ones(num_atoms, bool), batch, implementation, model.interpret, model.precision)  # fmt: skip
            return jnp.sum(per_atom)
        # jax.grad of this runs the hand-derived sweep; its edge-vector cotangents flow back through displacement_fn.
        return analytic.structure_energies(model.params, model.config, origin, numbers, edges, jnp.ones(num_atoms, bool), batch, 1, precision)[0]

    return neighbor_fn, energy_fn
