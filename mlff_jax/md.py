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

Guards (:mod:`mlff_jax.md_guards`, on by default): the chunk also reduces the largest temperature,
the largest total-energy change, finiteness and the closest pair, and :func:`run` checks them in the
same one read-back per chunk; a run that explodes raises :class:`SimulationError` naming the chunk,
its steps, the quantity and its value. Bad parameters (timestep, temperature, friction, masses) are
refused up front with ``ValueError``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from ase import units

from mlff_jax import md_guards
from mlff_jax.md_guards import Guards, GuardStats, SimulationError  # noqa: F401  (public: md.Guards, md.SimulationError)

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
    eV/Å, potential_energy / kinetic_energy [F] eV, step [F] int; ``guards``: the
    :class:`~mlff_jax.md_guards.GuardStats` of the steps since the previous frame ([F] each), or None
    when the chunk runs without guards."""

    positions: jax.Array
    velocities: jax.Array
    forces: jax.Array
    potential_energy: jax.Array
    kinetic_energy: jax.Array
    step: jax.Array
    guards: GuardStats | None = None

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


def _check_timestep(timestep) -> None:
    if not (isinstance(timestep, (int, float, np.floating, np.integer)) and np.isfinite(timestep) and timestep > 0):
        raise ValueError(f"timestep must be a finite number of fs > 0, got {timestep!r}")


def _check_temperature(name: str, value) -> None:
    if not (isinstance(value, (int, float, np.floating, np.integer)) and np.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


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
        # Checked here, once, on the host: inside the compiled loop a bad value is a silent NaN.
        host_positions, host_masses = np.asarray(positions), np.asarray(masses)
        if host_positions.ndim != 2 or host_positions.shape[1] != 3 or not np.all(np.isfinite(host_positions)):
            raise ValueError(f"positions must be a finite [N, 3] array (Å), got shape {host_positions.shape}" + ("" if host_positions.ndim != 2 or host_positions.shape[1] != 3 else " with non-finite entries"))
        if host_masses.size != host_positions.shape[0]:
            raise ValueError(f"masses has {host_masses.size} entries for {host_positions.shape[0]} atoms")
        if not np.all(np.isfinite(host_masses) & (host_masses > 0)):
            raise ValueError(f"masses must be finite and > 0 amu, got min {np.min(host_masses)!r}")
        if temperature is not None:
            _check_temperature("temperature", temperature)
        if velocities is not None and (np.shape(velocities) != host_positions.shape or not np.all(np.isfinite(np.asarray(velocities)))):
            raise ValueError(f"velocities must be a finite array of the positions' shape {host_positions.shape}")
        positions = jnp.asarray(positions)
        masses = jnp.reshape(jnp.asarray(masses, positions.dtype), (-1, 1))
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
    _check_timestep(timestep)
    both = energy_and_forces_fn(potential)
    dt = timestep * units.fs

    def step_fn(state: MDState, **kwargs) -> MDState:
        v_half = state.velocities + 0.5 * dt * state.forces / state.masses
        positions = state.positions + dt * v_half
        energy, forces = both(positions, **kwargs)
        velocities = v_half + 0.5 * dt * forces / state.masses
        return dataclasses.replace(state, positions=positions, velocities=velocities, forces=forces, potential_energy=energy, step=state.step + 1)

    step_fn.conserves_energy = True  # read by the guards: the NVE energy bound applies
    return _init_factory(both), step_fn


def langevin(potential: Potential, timestep: float, temperature: float, friction: float = 0.01):
    """Langevin dynamics, BAOAB splitting (Leimkuhler & Matthews), seeded by the state's key.

    Args:
      potential: as for :func:`nve`.
      timestep: fs.
      temperature: K.
      friction: γ in 1/fs (0.01 /fs: a 100 fs relaxation time).
    """
    _check_timestep(timestep)
    _check_temperature("temperature", temperature)
    _check_temperature("friction", friction)
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

    step_fn.temperature = float(temperature)  # read by the guards: the reference of the temperature bound
    return _init_factory(both), step_fn


# ----------------------------------------------------------------------------- chunked loop
def _frame(state: MDState, guards: GuardStats | None = None) -> Frames:
    return Frames(state.positions, state.velocities, state.forces, state.potential_energy, kinetic_energy(state.velocities, state.masses), state.step, guards)


def total_energy(state: MDState) -> jax.Array:
    """[] eV, potential plus kinetic energy of ``state``."""
    return state.potential_energy + kinetic_energy(state.velocities, state.masses)


def trajectory_chunk(step_fn, frame_interval: int, frames_per_chunk: int, *, neighbor_update=None, jit: bool = True, unroll: int = 1,
                     guards: Guards | None = Guards()):
    """One compiled call that runs ``frames_per_chunk * frame_interval`` steps.

    Returns ``chunk(state, neighbor=None, reference_energy=None) -> (state, neighbor, frames,
    overflow)``: ``frames`` holds the state after every ``frame_interval`` steps; with a neighbour
    list (anything with a ``did_buffer_overflow`` flag), it is updated before every step by
    ``neighbor_update(positions, neighbor)`` (default: ``neighbor.update(positions)``, JAX-MD's
    method; pass ``neighbor_fn.update`` for :mod:`mlff_jax.neighbors`), and ``overflow`` tells whether
    it overflowed at any step of the chunk (then the chunk's results are invalid: :func:`run`
    recomputes it).

    ``guards`` (:class:`~mlff_jax.md_guards.Guards`, on by default; None: off): the chunk also
    reduces, inside the compiled loop, the largest temperature, the largest |E_total −
    reference_energy| (default reference: the chunk's starting state; :func:`run` passes the run's)
    and finiteness over every step, and the closest pair at every frame, into ``frames.guards``;
    :func:`run` checks them against the bounds once per chunk.

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
    if guards is not None and not isinstance(guards, Guards):
        raise ValueError(f"guards must be an mlff_jax.md.Guards or None, got {type(guards).__name__}")

    def chunk(state, neighbor=None, reference_energy=None):
        if reference_energy is None:
            reference_energy = total_energy(state)

        def one_step(_, carry):
            state, neighbor, overflow, stats = carry
            if neighbor is None:
                state = step_fn(state)
            else:
                neighbor = neighbor_update(state.positions, neighbor)
                overflow = overflow | jnp.asarray(neighbor.did_buffer_overflow, bool)  # JAX-MD keeps it as uint8
                state = step_fn(state, neighbor=neighbor)
            if stats is not None:
                stats = md_guards.accumulate(stats, state, kinetic_energy(state.velocities, state.masses), reference_energy)
            return state, neighbor, overflow, stats

        def one_frame(carry, _):
            state, neighbor, overflow, _ = carry
            stats = None if guards is None else md_guards.empty_stats(state.positions.dtype)
            state, neighbor, overflow, stats = jax.lax.fori_loop(0, frame_interval, one_step, (state, neighbor, overflow, stats), unroll=unroll)
            if stats is not None:  # once per frame: the closest pair costs a pass over the pairs
                stats = dataclasses.replace(stats, min_pair_distance=md_guards.closest_pair(state.positions, neighbor))
            return (state, neighbor, overflow, None), _frame(state, stats)

        (state, neighbor, overflow, _), frames = jax.lax.scan(one_frame, (state, neighbor, jnp.zeros((), bool), None), None, length=frames_per_chunk)
        return state, neighbor, frames, overflow

    compiled = jax.jit(chunk) if jit else chunk

    def guarded_chunk(state, neighbor=None, reference_energy=None):
        return compiled(state, neighbor, reference_energy)

    # read by run(): which bounds to check, and against which references
    guarded_chunk.guards = guards
    guarded_chunk.conserves_energy = bool(getattr(step_fn, "conserves_energy", False))
    guarded_chunk.target_temperature = getattr(step_fn, "temperature", None)
    guarded_chunk.steps_per_chunk = frame_interval * frames_per_chunk
    return guarded_chunk


def _capacity(neighbor) -> int | None:
    capacity = getattr(neighbor, "capacity", None)
    if capacity is None and hasattr(neighbor, "idx"):  # a jax-md list
        capacity = neighbor.idx.shape[-1]
    return None if capacity is None else int(capacity)


def reallocate_after_overflow(neighbor_fn, start_positions, end_positions, old, attempt: int):
    """A larger list after an overflow, to redo the chunk from ``start_positions``.

    Measured where the overflowed chunk ENDED (when the overflow is real crowding, as in a liquid that
    densifies, the start of the chunk does not show it: a list measured there has the old size and
    overflows again), built there, and valid from the start too, because ``update`` rebuilds it once
    an atom has moved more than skin / 2 from where it was built. From the second attempt on, every
    row also gets ``attempt`` quarters of the old capacity on top, so no two attempts can be the same.
    """
    end = np.asarray(end_positions)
    positions = end_positions if np.all(np.isfinite(end)) else start_positions
    old_capacity = _capacity(old)
    extra = 0 if attempt == 0 or old_capacity is None else attempt * max(1, old_capacity // 4)
    if extra:
        try:
            return neighbor_fn.allocate(positions, extra_capacity=extra)
        except TypeError:  # an allocate(positions) without extra_capacity
            pass
    return neighbor_fn.allocate(positions)


def run(chunk, state: MDState, num_chunks: int, neighbor=None, neighbor_fn=None, on_chunk=None, max_reallocations: int | None = None,
        on_guards=None):
    """Runs ``num_chunks`` chunks from ``state``; the host syncs once per chunk.

    Args:
      chunk: from :func:`trajectory_chunk` (its guards are checked after every chunk).
      neighbor: a neighbour list for the potential, or None.
      neighbor_fn: has ``allocate(positions[, extra_capacity=...])``; used to grow the list after an
        overflow (measured where the overflowed chunk ended, larger on every further attempt). Without
        it an overflow raises :class:`~mlff_jax.md_guards.SimulationError`.
      on_chunk: called with each chunk's :class:`Frames` (as NumPy arrays), e.g. to write them.
      max_reallocations: reallocations allowed per chunk (default: the chunk's
        ``Guards.max_reallocations``, 8).
      on_guards: called with each chunk's guard summary (a dict: max_temperature K,
        max_energy_change_per_atom eV, min_pair_distance Å, reallocations), e.g. for a report.
    Returns:
      ``(state, frames)`` with all frames concatenated (or None when ``on_chunk`` consumes them).
    Raises:
      SimulationError (a ``RuntimeError``): a guard tripped, naming the chunk, its steps, the
      quantity and its value.
    """
    guards = getattr(chunk, "guards", None)
    if max_reallocations is None:
        max_reallocations = guards.max_reallocations if guards is not None else Guards().max_reallocations
    steps_per_chunk = getattr(chunk, "steps_per_chunk", None)
    reference_energy = total_energy(state)  # the NVE guard compares with the run's start
    reference_temperature = getattr(chunk, "target_temperature", None)
    if reference_temperature is None:
        reference_temperature = float(md_guards.temperature(kinetic_energy(state.velocities, state.masses), state.positions.shape[0]))
    collected = []
    for index in range(num_chunks):
        first_step = int(state.step) + 1
        for attempt in range(max_reallocations + 1):
            new_state, new_neighbor, frames, overflow = chunk(state, neighbor, reference_energy) if guards is not None else chunk(state, neighbor)
            frames, overflow = jax.device_get((frames, overflow))  # the one host sync of the chunk
            if not bool(overflow):
                break
            steps = (first_step, first_step + (steps_per_chunk or 1) - 1)
            if neighbor_fn is None:
                raise SimulationError(index, steps, "neighbour list overflow", True, hint="no neighbor_fn was given to reallocate it")
            if attempt == max_reallocations:
                raise SimulationError(index, steps, "neighbour list overflow", True, hint=f"still overflowing after {max_reallocations} reallocations")
            neighbor = reallocate_after_overflow(neighbor_fn, state.positions, new_state.positions, neighbor, attempt)
        last_step = int(frames.step[-1])
        if guards is not None:
            summary = md_guards.check(frames.guards, guards, chunk=index, steps=(first_step, last_step), num_atoms=state.positions.shape[0],
                                      reference_temperature=reference_temperature, conserves_energy=chunk.conserves_energy)
            if on_guards is not None:
                on_guards(dict(summary, reallocations=attempt))
        state, neighbor = new_state, new_neighbor
        frames = jax.tree_util.tree_map(np.asarray, frames)
        if on_chunk is not None:
            on_chunk(frames)
        else:
            collected.append(frames)
    if on_chunk is not None or not collected:
        return state, None
    return state, jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *collected)
