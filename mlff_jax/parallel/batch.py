"""Data parallelism: a batch of structures spread over devices, balanced by atom count.

The structures of a batch never interact, so the batch splits into one sub-batch per device
with no communication at all: each device evaluates its own structures with exactly the
single-device code path (dense all-pairs graph for small molecules, neighbour list otherwise), and
the host puts energies and forces back in the caller's order.

Balance: structures are dealt largest first to the device with the fewest atoms so far (greedy
"longest processing time"), which leaves the largest device at most one structure above the mean.
Every device is padded to the same static shapes (atoms to ``bucket_size``, structures to a power
of two), so one program, compiled once per (shapes, mesh), runs on all of them.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from mlff_jax import periodic
from mlff_jax.neighbors import cell as cell_lib
from mlff_jax.neighbors import neighbor_list as nl
from mlff_jax.parallel.mesh import AXIS, device_mesh, put_sharded, resolve_devices, shard_map, to_host

_SPEC_CACHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> periodic.SpecCache


def balance_by_atoms(sizes, num_devices: int) -> list[np.ndarray]:
    """Structure indices per device, balanced by atom count (largest first to the lightest device).

    sizes: [B] atoms per structure. Returns ``num_devices`` sorted index arrays (some may be empty
    when B < num_devices). Deterministic: ties go to the lowest device, then the lowest index.
    """
    sizes = np.asarray(sizes, np.int64)
    loads = np.zeros(num_devices, np.int64)
    groups: list[list[int]] = [[] for _ in range(num_devices)]
    for s in np.argsort(-sizes, kind="stable"):
        d = int(np.argmin(loads))
        groups[d].append(int(s))
        loads[d] += sizes[s]
    return [np.sort(np.asarray(g, np.int64)) for g in groups]


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """Where each structure and atom of a batch goes: device blocks of static shape.

    Attributes:
      groups: per device, the (sorted) structure indices it evaluates.
      atom_index: [D, n_pad] index of each slot's atom in the caller's arrays, -1 for padding.
      local_batch: [D, n_pad] structure slot (0 .. b_pad-1) of each atom on its device.
      n_pad, b_pad: padded atoms and structures per device.
    """

    groups: list
    atom_index: np.ndarray
    local_batch: np.ndarray
    n_pad: int
    b_pad: int


def plan_shards(batch: np.ndarray, num_structures: int, num_devices: int) -> ShardPlan:
    """Balanced device blocks for a batch (batch: [N] structure index of each atom)."""
    from mlff_jax.model import bucket_size

    sizes = np.bincount(batch, minlength=num_structures)
    groups = balance_by_atoms(sizes, num_devices)
    order = np.argsort(batch, kind="stable")  # atoms grouped by structure, in their original order
    starts = np.concatenate([[0], np.cumsum(sizes)])
    per_device = []
    for group in groups:
        atoms = [order[starts[s] : starts[s + 1]] for s in group]
        slots = [np.full(len(a), j) for j, a in enumerate(atoms)]
        per_device.append((np.concatenate(atoms) if atoms else np.zeros(0, np.int64), np.concatenate(slots) if slots else np.zeros(0, np.int64)))
    n_pad = bucket_size(max(len(a) for a, _ in per_device))
    b_pad = 1 << max(max(len(g) for g in groups) - 1, 0).bit_length()
    atom_index = np.full((num_devices, n_pad), -1, np.int64)
    local_batch = np.zeros((num_devices, n_pad), np.int64)
    for d, (atoms, slots) in enumerate(per_device):
        atom_index[d, : len(atoms)] = atoms
        local_batch[d, : len(atoms)] = slots
    return ShardPlan(groups, atom_index, local_batch, n_pad, b_pad)


@functools.lru_cache(maxsize=64)
def _sharded_program(model, mesh, method, b_pad, spec, layout):
    """jit(shard_map(one device's evaluation)), exactly the model's single-device path: its dense
    all-pairs function when ``spec`` is None, else the neighbour-list path (``layout``: the periodic
    analytic layout, a trace-time choice, hence part of the cache key)."""
    from mlff_jax.model import _PRECISIONS

    def one_device(params, positions, atomic_numbers, atom_mask, batch, cells):
        positions, atomic_numbers, atom_mask, batch, cells = (x[0] for x in (positions, atomic_numbers, atom_mask, batch, cells))
        if spec is None:
            energies, forces = model._batched_energy_and_forces(params, positions, atomic_numbers, atom_mask, batch, b_pad, method)
            overflow = jnp.zeros((), bool)
        else:
            nbrs = nl.build(positions, cells, batch, atom_mask, spec)
            energies, forces, _ = periodic.energy_forces_stress(params, model.config, _PRECISIONS[model.precision], positions, atomic_numbers, nbrs,
                                                                cells, atom_mask, b_pad, False, method, layout,
                                                                model.message_implementation(positions.shape[0]), getattr(model, "interpret", False))
            overflow = nbrs.did_buffer_overflow
        return energies[None], forces[None], overflow[None]

    block = PartitionSpec(AXIS)
    return jax.jit(shard_map(one_device, mesh, (PartitionSpec(), block, block, block, block, block), (block, block, block)))


@dataclasses.dataclass(frozen=True)
class PreparedBatch:
    """A batch laid out on the devices: ``run()`` evaluates (device arrays, asynchronous) and
    ``finish(outputs)`` returns (energies [B], forces [N, 3]) as NumPy in the caller's order.
    Split so that benchmarks can time the device work alone."""

    program: object
    params: object
    device_args: tuple
    plan: ShardPlan
    num_structures: int
    num_atoms: int
    first_outputs: object = None  # outputs of the run that settled the capacities, if one was needed

    def run(self):
        return self.program(self.params, *self.device_args)

    def finish(self, outputs):
        energies, forces, overflow = to_host(outputs)
        if overflow.any():  # pragma: no cover - prepare() settled the capacities on these very inputs
            raise RuntimeError("neighbour list overflow in a prepared batch")
        real = self.plan.atom_index >= 0
        out_e = np.zeros(self.num_structures, energies.dtype)
        out_f = np.zeros((self.num_atoms, 3), forces.dtype)
        for d, group in enumerate(self.plan.groups):
            out_e[group] = energies[d, : len(group)]
            out_f[self.plan.atom_index[d, real[d]]] = forces[d, real[d]]
        return out_e, out_f


def sharded_energy_and_forces(model, positions, atomic_numbers, batch, num_structures, cell=None, pbc=None, method="analytic", devices=None):
    """Energies [B] eV and forces [N, 3] eV/Å of a batch, structures spread over ``devices``.

    Inputs as validated by ``PaiNNStudent._validate`` (positions [N, 3] float64, atomic_numbers
    [N], batch [N] in 0 .. B-1, B = num_structures). cell/pbc as for ``energy_and_forces``
    (one cell for all, or [B, 3, 3]). The results equal the single-device call's up to the
    summation order of per-structure energies (float64: ~1e-15 relative).
    """
    prepared = prepare_batch(model, positions, atomic_numbers, batch, num_structures, cell, pbc, method, devices)
    return prepared.finish(prepared.run() if prepared.first_outputs is None else prepared.first_outputs)


def prepare_batch(model, positions, atomic_numbers, batch, num_structures, cell=None, pbc=None, method="analytic", devices=None) -> PreparedBatch:
    """Plans, pads and places a batch on the devices, and compiles its program (see :class:`PreparedBatch`)."""
    from mlff_jax.model import _DTYPES, ALL_PAIRS_MAX_ATOMS

    devs = resolve_devices(devices)
    mesh = device_mesh(devs)
    num_devices = len(devs)
    plan = plan_shards(batch, num_structures, num_devices)
    pbc = cell_lib.normalize_pbc(pbc, cell)
    cells = cell_lib.validate_cells(cell, pbc, num_structures if cell is not None and np.ndim(cell) == 3 else None)
    if cells.shape[0] == 1:
        cells = np.repeat(cells, num_structures, axis=0)
    if cells.shape[0] != num_structures:
        raise ValueError(f"cell must be [3, 3] or [B, 3, 3] with B = {num_structures} structures, got {list(np.shape(cell))}")
    real = plan.atom_index >= 0
    safe = np.maximum(plan.atom_index, 0)
    dtype = _DTYPES[model.dtype]
    pos = np.where(real[..., None], positions[safe], 0.0)
    # Padding atoms sit far apart on a line (as in the single-device path); they are masked anyway.
    far = 1e3 + 10.0 * model.config.cutoff * np.arange(plan.n_pad)
    pos[..., 0] = np.where(real, pos[..., 0], far)
    z = np.where(real, atomic_numbers[safe], 1).astype(np.int32)
    local_cells = np.repeat(cells[:1][None], num_devices, axis=0).repeat(plan.b_pad, axis=1)  # padding structures: any valid cell
    for d, group in enumerate(plan.groups):
        local_cells[d, : len(group)] = cells[group]
    args = (pos.astype(dtype), z, real, plan.local_batch.astype(np.int32), local_cells.astype(dtype))
    dense = cell is None and not any(pbc) and plan.n_pad <= ALL_PAIRS_MAX_ATOMS  # as the single-device path decides
    device_args = put_sharded(mesh, *args)
    first = None
    if dense:
        program = _sharded_program(model, mesh, method, plan.b_pad, None, None)
    else:
        program, first = _neighbor_program(model, mesh, method, plan, pbc, args, device_args)
    return PreparedBatch(program, model.params, device_args, plan, num_structures, positions.shape[0], first)


def _neighbor_program(model, mesh, method, plan: ShardPlan, pbc, args, device_args):
    """The neighbour-list program: one search plan for all devices (planned on the whole batch), grown until nothing overflows."""
    pos, z, real, local_batch, local_cells = args
    num_devices = pos.shape[0]
    cache = _SPEC_CACHES.setdefault(model, periodic.SpecCache())
    fns = nl.neighbor_list_fn(model.config.cutoff, skin=periodic.LIST_MARGIN, pbc=pbc)
    # The whole batch seen as D * b_pad structures: the plan (grid per structure, capacities) covers every device.
    flat_pos = pos.reshape(-1, 3).astype(np.float64)
    flat_batch = (np.arange(num_devices)[:, None] * plan.b_pad + local_batch).reshape(-1)
    flat_mask = real.reshape(-1)
    flat_cells = local_cells.reshape(-1, 3, 3).astype(np.float64)
    total = num_devices * plan.b_pad
    grid, stencil, _ = nl.plan_lib.plan_grid(flat_pos[flat_mask], flat_cells, flat_batch[flat_mask], total, pbc, fns.cutoff + fns.skin)
    key = ("sharded", mesh, pos.shape, plan.b_pad, pbc, grid, stencil, str(pos.dtype))
    spec = cache.get(key)
    for _ in range(4):
        if spec is None:
            measured = fns.measure(flat_pos, cell=flat_cells, batch=flat_batch, atom_mask=flat_mask, num_structures=total)
            spec = cache.put(key, dataclasses.replace(measured, num_structures=plan.b_pad))
        program = _sharded_program(model, mesh, method, plan.b_pad, spec, periodic.periodic_layout())
        outputs = program(model.params, *device_args)
        if not to_host(outputs[2]).any():
            return program, outputs
        spec = None
    raise RuntimeError("neighbour list overflow persisted after re-allocation")  # pragma: no cover
