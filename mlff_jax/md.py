"""Compiled molecular dynamics: many steps per compiled call, no host round trip per step.

Pure-function factories in the style of JAX-MD::

    init_fn, step_fn = md.nve(potential, timestep=0.5)                  # velocity Verlet
    init_fn, step_fn = md.langevin(potential, 0.5, temperature=300.0, friction=0.01)   # BAOAB
    state = init_fn(positions, masses, key=jax.random.key(0), temperature=300.0)
    chunk = md.trajectory_chunk(step_fn, frame_interval=10, frames_per_chunk=100)
    state, frames = md.run(chunk, state, num_chunks=5)                  # 5 x 100 x 10 steps

Units are ASE's: positions Å, energies eV, masses amu, timesteps and friction in fs and 1/fs,
temperatures K, velocities in ASE's internal unit (``Atoms.get_velocities()``: Å / (Å √(amu/eV))),
so a state converts to and from ``ase.Atoms`` without factors.

``potential(positions, **kwargs)`` returns the energy (eV, a scalar: forces then come from
``jax.grad``) or a pair ``(energy, forces)``. Keyword arguments of ``step_fn`` (e.g. ``neighbor=``)
are passed on to it. :func:`model_potential` makes one from a :class:`~mlff_jax.PaiNNStudent`.

One chunk is one compiled call: ``lax.scan`` over frames, ``lax.fori_loop`` over the
``frame_interval`` steps between frames, the neighbour list (if any) updated inside every step, and
its overflow flag OR-ed over the chunk; the host reads that one flag per chunk and, on overflow,
reallocates the list and recomputes the chunk from its starting state (nothing is lost or silently
wrong).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from ase import units

Potential = Callable[..., Any]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MDState:
    """State of an MD run.

    Attributes:
      positions: [N, 3] Å.
      velocities: [N, 3] ASE velocity unit (as ``Atoms.get_velocities()``).
      forces: [N, 3] eV/Å at ``positions``.
      potential_energy: [] eV at ``positions``.
      masses: [N, 1] amu.
      key: PRNG key (used by thermostats).
      step: [] int, steps taken.
    """

    positions: jax.Array
    velocities: jax.Array
    forces: jax.Array
    potential_energy: jax.Array
    masses: jax.Array
    key: jax.Array
    step: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Frames:
    """Recorded frames (F of them): positions [F, N, 3] Å, velocities [F, N, 3], forces [F, N, 3]
    eV/Å, potential_energy / kinetic_energy [F] eV, step [F] int."""

    positions: jax.Array
    velocities: jax.Array
    forces: jax.Array
    potential_energy: jax.Array
    kinetic_energy: jax.Array
    step: jax.Array

    @property
    def total_energy(self):
        return self.potential_energy + self.kinetic_energy

    def temperature(self) -> np.ndarray:
        """Instantaneous temperature [F] K, 3N degrees of freedom (as ``Atoms.get_temperature``)."""
        num_atoms = self.positions.shape[1]
        return 2.0 * np.asarray(self.kinetic_energy) / (3 * num_atoms * units.kB)


# ----------------------------------------------------------------------------- potentials
def energy_and_forces_fn(potential: Potential) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """Normalises ``potential`` to ``(positions, **kwargs) -> (energy eV, forces [N, 3] eV/Å)``."""

    def both(positions, **kwargs):
        shape = jax.eval_shape(lambda r: potential(r, **kwargs), positions)
        if isinstance(shape, (tuple, list)):
            energy, forces = potential(positions, **kwargs)
            return energy, forces
        energy, grad = jax.value_and_grad(lambda r: potential(r, **kwargs))(positions)
        return energy, -grad

    return both


def model_potential(model, atomic_numbers) -> Potential:
    """``(positions [N, 3] Å, neighbor=None) -> (energy eV, forces eV/Å)`` of ``model`` for fixed atoms.

    Without ``neighbor``: the model's own traced ``energy_and_forces`` (all pairs within the
    cutoff, non-periodic; its force method is the model's). With ``neighbor`` (a
    :class:`mlff_jax.neighbors.NeighborList`, periodic or not): ``model.energy_fn(...,
    neighbors=neighbor)`` and its gradient.
    """
    model.check_elements(np.asarray(atomic_numbers))  # on the host, once: the MD loop itself runs traced
    z = jnp.asarray(np.asarray(atomic_numbers), jnp.int32)

    def potential(positions, neighbor=None, **unused):
        if neighbor is None:
            return model.energy_and_forces(positions, z)
        energy, grad = jax.value_and_grad(lambda r: model.energy_fn(r, z, neighbors=neighbor))(positions)
        return energy, -grad

    return potential


# ----------------------------------------------------------------------------- integrators
def kinetic_energy(velocities: jax.Array, masses: jax.Array) -> jax.Array:
    """0.5 Σ m v² in eV (masses [N, 1] amu, velocities in ASE's unit)."""
    return 0.5 * jnp.sum(masses * velocities**2)


def maxwell_boltzmann(key, masses: jax.Array, temperature: float) -> jax.Array:
    """Velocities [N, 3] drawn at ``temperature`` K, with the centre-of-mass momentum removed."""
    masses = jnp.reshape(masses, (-1, 1))
    kT = units.kB * temperature
    v = jax.random.normal(key, (masses.shape[0], 3), masses.dtype) * jnp.sqrt(kT / masses)
    momentum = jnp.sum(masses * v, axis=0) / jnp.sum(masses)
    return v - momentum


def _init_factory(both):
    def init_fn(positions, masses, velocities=None, *, key=None, temperature=None, **kwargs) -> MDState:
        """positions [N, 3] Å; masses [N] amu; velocities [N, 3] (ASE unit) or drawn at
        ``temperature`` K with ``key``; kwargs go to the potential (e.g. ``neighbor=``)."""
        positions = jnp.asarray(positions)
        masses = jnp.reshape(jnp.asarray(masses, positions.dtype), (-1, 1))
        if masses.shape[0] != positions.shape[0]:
            raise ValueError(f"masses has {masses.shape[0]} entries for {positions.shape[0]} atoms")
        if key is None:
            key = jax.random.key(0)
        key, draw = jax.random.split(key)
        if velocities is None:
            velocities = jnp.zeros_like(positions) if temperature is None else maxwell_boltzmann(draw, masses, temperature)
        energy, forces = both(positions, **kwargs)
        return MDState(positions, jnp.asarray(velocities, positions.dtype), forces, energy, masses, key, jnp.zeros((), jnp.int32))

    return init_fn


def nve(potential: Potential, timestep: float):
    """Velocity Verlet (constant N, V, E).

    Args:
      potential: ``(positions, **kwargs) -> energy`` or ``-> (energy, forces)``.
      timestep: fs.
    Returns:
      ``(init_fn, step_fn)``; ``step_fn(state, **kwargs) -> state`` is one step.
    """
    both = energy_and_forces_fn(potential)
    dt = timestep * units.fs

    def step_fn(state: MDState, **kwargs) -> MDState:
        v_half = state.velocities + 0.5 * dt * state.forces / state.masses
        positions = state.positions + dt * v_half
        energy, forces = both(positions, **kwargs)
        velocities = v_half + 0.5 * dt * forces / state.masses
        return dataclasses.replace(state, positions=positions, velocities=velocities, forces=forces, potential_energy=energy, step=state.step + 1)

    return _init_factory(both), step_fn


def langevin(potential: Potential, timestep: float, temperature: float, friction: float = 0.01):
    """Langevin dynamics, BAOAB splitting (Leimkuhler & Matthews), seeded by the state's key.

    Args:
      potential: as for :func:`nve`.
      timestep: fs.
      temperature: K.
      friction: γ in 1/fs (0.01 /fs: a 100 fs relaxation time).
    """
    if friction < 0 or temperature < 0:
        raise ValueError(f"friction and temperature must be >= 0, got {friction} /fs and {temperature} K")
    both = energy_and_forces_fn(potential)
    dt = timestep * units.fs
    c1 = float(np.exp(-friction * timestep))
    kT = units.kB * temperature

    def step_fn(state: MDState, **kwargs) -> MDState:
        key, noise_key = jax.random.split(state.key)
        v = state.velocities + 0.5 * dt * state.forces / state.masses  # B
        x = state.positions + 0.5 * dt * v  # A
        noise = jax.random.normal(noise_key, v.shape, v.dtype)
        v = c1 * v + jnp.sqrt((1.0 - c1**2) * kT / state.masses) * noise  # O
        x = x + 0.5 * dt * v  # A
        energy, forces = both(x, **kwargs)
        v = v + 0.5 * dt * forces / state.masses  # B
        return MDState(x, v, forces, energy, state.masses, key, state.step + 1)

    return _init_factory(both), step_fn


# ----------------------------------------------------------------------------- chunked loop
def _frame(state: MDState) -> Frames:
    return Frames(state.positions, state.velocities, state.forces, state.potential_energy, kinetic_energy(state.velocities, state.masses), state.step)


def trajectory_chunk(step_fn, frame_interval: int, frames_per_chunk: int, *, neighbor_update=None, jit: bool = True, unroll: int = 1):
    """One compiled call that runs ``frames_per_chunk * frame_interval`` steps.

    Returns ``chunk(state, neighbor=None) -> (state, neighbor, frames, overflow)``: ``frames`` holds
    the state after every ``frame_interval`` steps; with a neighbour list (anything with a
    ``did_buffer_overflow`` flag), it is updated before every step by
    ``neighbor_update(positions, neighbor)`` (default: ``neighbor.update(positions)``, JAX-MD's
    method; pass ``neighbor_fn.update`` for :mod:`mlff_jax.neighbors`), and ``overflow`` tells whether
    it overflowed at any step of the chunk (then the chunk's results are invalid: :func:`run`
    recomputes it).

    ``unroll``: steps per iteration of the compiled loop (``lax.fori_loop``'s ``unroll``). Larger
    values trade compile time for fewer loop iterations, whose bookkeeping costs a few µs each on a
    GPU (measured in docs/md.md: 5 % for benzene at 10, nothing at 192 atoms).
    """
    if neighbor_update is None:
        neighbor_update = lambda positions, neighbor: neighbor.update(positions)  # noqa: E731
    if frame_interval < 1 or frames_per_chunk < 1:
        raise ValueError(f"frame_interval and frames_per_chunk must be >= 1, got {frame_interval}, {frames_per_chunk}")
    if unroll < 1:
        raise ValueError(f"unroll must be >= 1, got {unroll}")

    def chunk(state, neighbor=None):
        def one_step(_, carry):
            state, neighbor, overflow = carry
            if neighbor is None:
                return step_fn(state), None, overflow
            neighbor = neighbor_update(state.positions, neighbor)
            overflow = overflow | jnp.asarray(neighbor.did_buffer_overflow, bool)  # JAX-MD keeps it as uint8
            return step_fn(state, neighbor=neighbor), neighbor, overflow

        def one_frame(carry, _):
            carry = jax.lax.fori_loop(0, frame_interval, one_step, carry, unroll=unroll)
            return carry, _frame(carry[0])

        (state, neighbor, overflow), frames = jax.lax.scan(one_frame, (state, neighbor, jnp.zeros((), bool)), None, length=frames_per_chunk)
        return state, neighbor, frames, overflow

    return jax.jit(chunk) if jit else chunk


def run(chunk, state: MDState, num_chunks: int, neighbor=None, neighbor_fn=None, on_chunk=None, max_reallocations: int = 8):
    """Runs ``num_chunks`` chunks from ``state``; the host syncs once per chunk.

    Args:
      chunk: from :func:`trajectory_chunk`.
      neighbor: a neighbour list for the potential, or None.
      neighbor_fn: has ``allocate(positions)``; used to grow the list after an overflow. Without
        it an overflow raises ``RuntimeError``.
      on_chunk: called with each chunk's :class:`Frames` (as NumPy arrays), e.g. to write them.
    Returns:
      ``(state, frames)`` with all frames concatenated (or None when ``on_chunk`` consumes them).
    """
    collected = []
    for _ in range(num_chunks):
        for attempt in range(max_reallocations + 1):
            new_state, new_neighbor, frames, overflow = chunk(state, neighbor)
            if not bool(overflow):
                break
            if neighbor_fn is None:
                raise RuntimeError("neighbour list overflowed during MD and no neighbor_fn was given to reallocate it")
            neighbor = neighbor_fn.allocate(state.positions)
        else:
            raise RuntimeError(f"neighbour list still overflowing after {max_reallocations} reallocations")
        state, neighbor = new_state, new_neighbor
        frames = jax.tree_util.tree_map(np.asarray, frames)
        if on_chunk is not None:
            on_chunk(frames)
        else:
            collected.append(frames)
    if on_chunk is not None or not collected:
        return state, None
    return state, jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *collected)
