"""Host drivers of the slab decomposition: one evaluation, and compiled NVE with migrating atoms.

    from mlff_jax import parallel
    energy, forces = parallel.decomposed_energy_and_forces(model, positions, numbers, cell)   # all devices
    sim = parallel.domain_nve(model, cell, timestep=0.5, skin=0.5)
    state = sim.init(positions, numbers, masses, velocities)
    state, frames = sim.run(state, num_chunks=10, frame_interval=10, frames_per_chunk=10)
    arrays = sim.gather(state)          # positions, velocities, forces [N, 3] in the caller's atom order

Every device array of a :class:`DomainState` has a leading axis D (one block per device, sharded
over the mesh). One chunk is one compiled call (scan over frames, fori_loop over steps); inside a
step, a rebuild (migration, halo, local neighbour list) runs only when some atom moved more than
skin / 2. The host reads one overflow flag per chunk; on overflow it re-plans with larger
capacities from the chunk's starting state and runs the chunk again (nothing lost, nothing wrong).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from ase import units
from jax.sharding import PartitionSpec

from mlff_jax import periodic
from mlff_jax.evaluation import DTYPES, PRECISIONS, prepare_positions
from mlff_jax.neighbors import cell as cell_lib
from mlff_jax.parallel import domain
from mlff_jax.parallel.mesh import AXIS, device_mesh, put_sharded, resolve_devices, shard_map, to_host


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DomainState:
    """Owned atoms of every device ([D, C, ...], empty slots have id -1, zero velocity and force).

    positions [D, C, 3] Å (continuous, never wrapped); velocities [D, C, 3] ASE unit; forces
    [D, C, 3] eV/Å; masses [D, C, 1] amu (1 in empty slots); atomic_numbers [D, C]; ids [D, C]
    int32 index of each atom in the caller's arrays; potential_energy [D] eV (the same total on
    every device); layout: each device's :class:`~mlff_jax.parallel.domain.DomainLayout`.
    """

    positions: jax.Array
    velocities: jax.Array
    forces: jax.Array
    masses: jax.Array
    atomic_numbers: jax.Array
    ids: jax.Array
    potential_energy: jax.Array
    layout: domain.DomainLayout
    spec: domain.DomainSpec = dataclasses.field(metadata=dict(static=True))

    @property
    def overflow(self) -> bool:
        return bool(np.any(to_host(self.layout.overflow)))


def _first(tree):
    return jax.tree_util.tree_map(lambda x: x[0], tree)


def _stacked(tree):
    return jax.tree_util.tree_map(lambda x: x[None], tree)


def _device_init(params, config, precision, method, graph_layout, spec, cell, atoms):
    """Migration, layout and forces from scratch (one device; collective)."""
    atoms, overflow = domain.migrate(spec, cell, atoms)
    layout = domain.build_layout(spec, cell, atoms["positions"], atoms["atomic_numbers"], atoms["ids"], overflow)
    energy, forces = domain.energy_and_forces(params, config, precision, method, spec, cell, atoms["positions"], atoms["atomic_numbers"],
                                              atoms["ids"], layout, graph_layout)
    masses = jnp.where(atoms["ids"][:, None] >= 0, atoms["masses"], 1.0)
    return DomainState(atoms["positions"], atoms["velocities"], forces, masses, atoms["atomic_numbers"], atoms["ids"], energy, layout, spec)


@functools.lru_cache(maxsize=32)
def _init_program(mesh, config, precision, method, graph_layout, spec):
    def one_device(params, cell, atoms):
        return _stacked(_device_init(params, config, precision, method, graph_layout, spec, cell, _first(atoms)))

    return jax.jit(shard_map(one_device, mesh, (PartitionSpec(), PartitionSpec(), PartitionSpec(AXIS)), PartitionSpec(AXIS)))


def _device_step(params, config, precision, method, graph_layout, dt, cell, state: DomainState):
    """One velocity-Verlet step of one device's owned atoms, rebuilding when the skin is used up."""
    spec = state.spec
    v = state.velocities + 0.5 * dt * state.forces / state.masses
    x = state.positions + dt * v

    def rebuilt(args):
        x, v, z, m, ids, layout = args
        atoms, overflow = domain.migrate(spec, cell, dict(positions=x, velocities=v, atomic_numbers=z, masses=m, ids=ids))
        new = domain.build_layout(spec, cell, atoms["positions"], atoms["atomic_numbers"], atoms["ids"], overflow | layout.overflow)
        masses = jnp.where(atoms["ids"][:, None] >= 0, atoms["masses"], 1.0)
        return atoms["positions"], atoms["velocities"], atoms["atomic_numbers"], masses, atoms["ids"], new

    rebuild = domain.needs_rebuild(spec, x, state.ids, state.layout)
    args = (x, v, state.atomic_numbers, state.masses, state.ids, state.layout)
    x, v, z, m, ids, layout = jax.lax.cond(rebuild, rebuilt, lambda a: a, args)
    energy, forces = domain.energy_and_forces(params, config, precision, method, spec, cell, x, z, ids, layout, graph_layout)
    v = v + 0.5 * dt * forces / m
    return DomainState(x, v, forces, m, z, ids, energy, layout, spec), rebuild


@functools.lru_cache(maxsize=32)
def _chunk_program(mesh, config, precision, method, graph_layout, dt, frame_interval, frames_per_chunk):
    def one_device(params, cell, state):
        state = _first(state)

        def one_step(_, carry):
            state, rebuilds = carry
            state, rebuild = _device_step(params, config, precision, method, graph_layout, dt, cell, state)
            return state, rebuilds + rebuild.astype(jnp.int32)

        def one_frame(carry, _):
            carry = jax.lax.fori_loop(0, frame_interval, one_step, carry)
            st = carry[0]
            kinetic = jax.lax.psum(0.5 * jnp.sum(st.masses * st.velocities**2), AXIS)
            return carry, (st.potential_energy, kinetic)

        (state, rebuilds), (potential, kinetic) = jax.lax.scan(one_frame, (state, jnp.zeros((), jnp.int32)), None, length=frames_per_chunk)
        return _stacked((state, potential, kinetic, rebuilds))

    block = PartitionSpec(AXIS)
    return jax.jit(shard_map(one_device, mesh, (PartitionSpec(), PartitionSpec(), block), (block, block, block, block)))


@dataclasses.dataclass(frozen=True)
class DomainNVE:
    """Velocity-Verlet MD of one periodic system decomposed in slabs (see :func:`domain_nve`)."""

    model: object
    mesh: object
    cell: np.ndarray
    pbc: tuple
    timestep: float
    skin: float
    method: str
    capacity_multiplier: float

    @property
    def num_domains(self) -> int:
        return self.mesh.devices.size

    def _device_args(self):
        dtype = DTYPES[self.model.dtype]
        return dtype, PRECISIONS[self.model.precision], jnp.asarray(self.cell, dtype)

    def init(self, positions, atomic_numbers, masses=None, velocities=None, capacity_multiplier=None) -> DomainState:
        """Plans the decomposition (host) and computes the first forces. positions [N, 3] Å,
        atomic_numbers [N], masses [N] amu (default: ASE's), velocities [N, 3] ASE unit (default 0)."""
        return self.prepare(positions, atomic_numbers, masses, velocities, capacity_multiplier)[1]

    def prepare(self, positions, atomic_numbers, masses=None, velocities=None, capacity_multiplier=None):
        """(call, state): ``call()`` recomputes ``state`` (migration, halo, neighbour lists, forces)
        from the same device-resident inputs, one compiled call (benchmarks time it)."""
        positions = cell_lib.validate_positions(positions)
        n = positions.shape[0]
        z = np.asarray(atomic_numbers, np.int64)
        if z.shape != (n,) or np.any(z < 1) or np.any(z > self.model.config.max_z):
            raise ValueError(f"atomic_numbers must be [N] = [{n}] integers in 1..{self.model.config.max_z}")
        self.model.check_elements(z)
        masses = units_masses(z) if masses is None else np.asarray(masses, np.float64).reshape(n)
        velocities = np.zeros((n, 3)) if velocities is None else np.asarray(velocities, np.float64).reshape(n, 3)
        multiplier = self.capacity_multiplier if capacity_multiplier is None else capacity_multiplier
        for _ in range(6):
            spec = domain.plan(self.model, positions, self.cell, self.pbc, self.num_domains, self.skin, multiplier)
            dtype, precision, cell = self._device_args()
            blocks = domain.initial_blocks(spec, positions, self.cell, atomic_numbers=z.astype(np.int32), masses=masses[:, None],
                                           velocities=velocities)
            blocks = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in blocks.items()}
            program = _init_program(self.mesh, self.model.config, precision, self.method, periodic.periodic_layout(), spec)
            call = functools.partial(program, self.model.params, cell, dict(zip(blocks, put_sharded(self.mesh, *blocks.values()))))
            state = call()
            if not state.overflow:
                return call, state
            multiplier *= 1.5
        raise RuntimeError("domain capacities still overflowing after re-planning")  # pragma: no cover

    def chunk(self, frame_interval: int, frames_per_chunk: int):
        """``chunk(state) -> (state, potential [F] eV, kinetic [F] eV, rebuilds)``, one compiled call."""
        dtype, precision, cell = self._device_args()
        dt = float(self.timestep * units.fs)
        program = _chunk_program(self.mesh, self.model.config, precision, self.method, periodic.periodic_layout(), dt, int(frame_interval),
                                 int(frames_per_chunk))

        def run_chunk(state):
            state, potential, kinetic, rebuilds = program(self.model.params, cell, state)
            return state, potential[0], kinetic[0], rebuilds[0]

        return run_chunk

    def run(self, state: DomainState, num_chunks: int, frame_interval: int = 10, frames_per_chunk: int = 10, max_replans: int = 4):
        """Runs ``num_chunks`` chunks; returns (state, frames dict of [F] NumPy arrays: potential_energy,
        kinetic_energy eV, rebuilds per chunk). On overflow, re-plans from the chunk's start and repeats it."""
        chunk = self.chunk(frame_interval, frames_per_chunk)
        potential, kinetic, rebuilds = [], [], []
        multiplier = self.capacity_multiplier
        for _ in range(num_chunks):
            for _attempt in range(max_replans + 1):
                new_state, pot, kin, reb = chunk(state)
                if not new_state.overflow:
                    break
                multiplier *= 1.5
                start = self.gather(state)
                state = self.init(start["positions"], start["atomic_numbers"], start["masses"], start["velocities"], multiplier)
            else:
                raise RuntimeError(f"domain capacities still overflowing after {max_replans} re-plans")
            state = new_state
            potential.append(np.asarray(pot))
            kinetic.append(np.asarray(kin))
            rebuilds.append(int(reb))
        frames = {"potential_energy": np.concatenate(potential), "kinetic_energy": np.concatenate(kinetic), "rebuilds": np.asarray(rebuilds)}
        return state, frames

    def gather(self, state: DomainState) -> dict:
        """Global NumPy arrays in the caller's atom order: positions, velocities, forces [N, 3],
        masses [N], atomic_numbers [N], owner [N] (device of each atom).

        Raises RuntimeError if an atom is missing or owned twice (never expected: a check)."""
        host = to_host((state.positions, state.velocities, state.forces, state.masses, state.atomic_numbers, state.ids))
        positions, velocities, forces, masses, z, ids = host
        return assemble(ids, positions=positions, velocities=velocities, forces=forces, masses=masses[..., 0], atomic_numbers=z)


def assemble(ids, **blocks):
    """[D, C, ...] device blocks -> [N, ...] arrays ordered by id, plus "owner" [N].

    Raises RuntimeError if the ids are not exactly 0 .. N-1, each once (an atom lost or duplicated).
    """
    ids = np.asarray(ids)
    real = ids >= 0
    flat = ids[real]
    n = flat.size
    if np.any(np.bincount(flat, minlength=n) != 1) or (n and flat.max() != n - 1):
        counts = np.bincount(flat, minlength=n)
        raise RuntimeError(f"atoms lost or duplicated across devices: missing {np.nonzero(counts == 0)[0][:10].tolist()}, "
                           f"duplicated {np.nonzero(counts > 1)[0][:10].tolist()}")
    out = {}
    for k, v in blocks.items():
        arr = np.zeros((n,) + v.shape[2:], v.dtype)
        arr[flat] = v[real]
        out[k] = arr
    owner = np.zeros(n, np.int64)
    owner[flat] = np.nonzero(real)[0]
    out["owner"] = owner
    return out


def units_masses(atomic_numbers):
    from ase.data import atomic_masses

    return np.asarray(atomic_masses)[np.asarray(atomic_numbers)]


def domain_nve(model, cell, pbc=None, timestep: float = 0.5, skin: float = 0.5, devices=None, method: str = "analytic",
               capacity_multiplier: float = 1.25) -> DomainNVE:
    """Velocity-Verlet MD of one periodic system over ``devices`` (default: all visible; >= 2).

    Positions given to ``init``/``prepare`` are cast to the model's dtype as they are: in float32 keep
    them within a few cells of the origin (:func:`decomposed_energy_and_forces` wraps them first).
    cell [3, 3] Å (fixed), timestep fs, skin Å (Verlet skin of halos and neighbour lists; rebuilds
    happen when an atom moved more than skin / 2), capacity_multiplier: margin on the measured atom
    counts per device, halo and neighbour slots.
    """
    devs = resolve_devices(devices)
    pbc = cell_lib.normalize_pbc(pbc, cell)
    cell = cell_lib.validate_cells(cell, pbc)[0]
    if not np.isfinite(skin) or skin < 0:
        raise ValueError(f"skin must be a non-negative distance in Å, got {skin!r}")
    return DomainNVE(model, device_mesh(devs), cell, pbc, float(timestep), float(skin), method, float(capacity_multiplier))


def decomposed_energy_and_forces(model, positions, atomic_numbers, cell, pbc=None, devices=None, method: str = "analytic",
                                 capacity_multiplier: float = 1.25):
    """Energy (eV) and forces [N, 3] eV/Å of one periodic system, decomposed in slabs over ``devices``.

    Equals ``model.energy_and_forces(positions, atomic_numbers, cell=cell, pbc=pbc)`` up to summation
    order. Raises ValueError when the slabs would be thinner than the model's receptive field.
    """
    sim = domain_nve(model, cell, pbc, timestep=0.0, skin=0.0, devices=devices, method=method, capacity_multiplier=capacity_multiplier)
    # Wrapped into the cell in float64 before the cast (evaluation.prepare_positions); forces stay atom by atom.
    positions = prepare_positions(cell_lib.validate_positions(positions), np.zeros(len(positions), np.int64), 1, sim.cell, sim.pbc)
    state = sim.init(positions, atomic_numbers)
    energy = float(to_host(state.potential_energy)[0])
    return energy, sim.gather(state)["forces"]
