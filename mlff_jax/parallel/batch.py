"""Data parallelism: a batch of structures spread over devices, balanced by atom count.

The structures of a batch never interact, so the batch splits into one sub-batch per device
with no communication at all: each device evaluates its own structures with exactly the
single-device code path (dense all-pairs graph for small molecules, neighbour list otherwise), and
the host puts energies and forces back in the caller's order.

Balance: structures are dealt largest first to the device with the fewest atoms so far (greedy
"longest processing time"), which leaves the largest device at most one structure above the mean.
Every device is padded to the same static shapes (atoms to ``bucket_size``, structures to a power
of two), so one program, compiled once per (shapes, mesh), runs on all of them.

Host work per call, all whole-array NumPy (only the balancing heap steps once per structure):
plan the layout (:func:`plan_shards`), pack each device's inputs into one row (:func:`pack_inputs`,
one transfer per device), plan the neighbour search of the whole batch (:func:`plan_neighbor_grid`,
neighbour-list path only), and take energies and forces out of one output row per device with one
fancy index each (:func:`unpack_outputs`). ``benchmarks/bench_batch_host.py`` times each step.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import weakref

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from mlff_jax import evaluation, periodic
from mlff_jax.evaluation import DTYPES, PRECISIONS, all_pairs_max_atoms, bucket_size, prepare_positions, structures_bucket
from mlff_jax.neighbors import cell as cell_lib
from mlff_jax.neighbors import neighbor_list as nl
from mlff_jax.parallel.mesh import AXIS, device_mesh, put_sharded, resolve_devices, shard_map, to_host

_SPEC_CACHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> periodic.SpecCache


def _assign_devices(sizes: np.ndarray, num_devices: int) -> np.ndarray:
    """[B] device of each structure: largest first (stable) to the device with the fewest atoms so
    far, ties to the lowest device. A heap of (load, device) pops exactly ``argmin(loads)``."""
    order = np.argsort(-sizes, kind="stable")
    device = np.empty(len(sizes), np.int64)
    heap = [(0, d) for d in range(num_devices)]
    for s, size in zip(order.tolist(), sizes[order].tolist()):
        load, d = heap[0]
        device[s] = d
        heapq.heapreplace(heap, (load + size, d))
    return device


def balance_by_atoms(sizes, num_devices: int) -> list[np.ndarray]:
    """Structure indices per device, balanced by atom count (largest first to the lightest device).

    sizes: [B] atoms per structure. Returns ``num_devices`` sorted index arrays (some may be empty
    when B < num_devices). Deterministic: ties go to the lowest device, then the lowest index.
    """
    device = _assign_devices(np.asarray(sizes, np.int64), num_devices)
    return [np.flatnonzero(device == d) for d in range(num_devices)]


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """Where each structure and atom of a batch goes: device blocks of static shape.

    Attributes:
      groups: per device, the (sorted) structure indices it evaluates.
      atom_index: [D, n_pad] index of each slot's atom in the caller's arrays, -1 for padding.
      local_batch: [D, n_pad] structure slot (0 .. b_pad-1) of each atom on its device.
      n_pad, b_pad: padded atoms and structures per device.
      atom_device, atom_column: [N] where each of the caller's atoms sits (device, slot).
      structure_device, structure_slot: [B] where each structure sits (device, slot).
    """

    groups: list
    atom_index: np.ndarray
    local_batch: np.ndarray
    n_pad: int
    b_pad: int
    atom_device: np.ndarray
    atom_column: np.ndarray
    structure_device: np.ndarray
    structure_slot: np.ndarray


def plan_shards(batch: np.ndarray, num_structures: int, num_devices: int) -> ShardPlan:
    """Balanced device blocks for a batch (batch: [N] structure index of each atom).

    A device holds its structures in index order, each structure's atoms in the caller's order;
    every step is a whole-array NumPy operation except the balancing heap (one step per structure).
    """
    batch = np.asarray(batch, np.int64)
    sizes = np.bincount(batch, minlength=num_structures)
    device = _assign_devices(sizes, num_devices)
    # Structures device-major, in index order within a device (stable sort): slot = rank on the device.
    by_device = np.argsort(device, kind="stable")
    counts = np.bincount(device, minlength=num_devices)
    loads = np.bincount(device, weights=sizes, minlength=num_devices).astype(np.int64)
    sorted_device = device[by_device]
    slot = np.empty(num_structures, np.int64)
    slot[by_device] = np.arange(num_structures) - (np.cumsum(counts) - counts)[sorted_device]
    # First column of each structure on its device: atoms of the structures before it there.
    sorted_sizes = sizes[by_device]
    first_column = np.empty(num_structures, np.int64)
    first_column[by_device] = (np.cumsum(sorted_sizes) - sorted_sizes) - (np.cumsum(loads) - loads)[sorted_device]
    # Rank of each atom within its structure, keeping the caller's order (no sort for a sorted batch).
    starts = np.cumsum(sizes) - sizes
    if np.all(batch[1:] >= batch[:-1]):
        rank = np.arange(len(batch)) - starts[batch]
    else:
        order = np.argsort(batch, kind="stable")
        rank = np.empty(len(batch), np.int64)
        rank[order] = np.arange(len(batch)) - starts[batch[order]]
    atom_device = device[batch]
    atom_column = first_column[batch] + rank
    n_pad = bucket_size(int(loads.max()))
    b_pad = structures_bucket(int(counts.max()))
    atom_index = np.full((num_devices, n_pad), -1, np.int64)
    atom_index[atom_device, atom_column] = np.arange(len(batch))
    local_batch = np.zeros((num_devices, n_pad), np.int64)
    local_batch[atom_device, atom_column] = slot[batch]
    groups = np.split(by_device, np.cumsum(counts)[:-1])
    return ShardPlan(groups, atom_index, local_batch, n_pad, b_pad, atom_device, atom_column, device, slot)


# Per device, the program takes one packed row and returns one packed row (one transfer each way):
#   in:  n_pad atoms x (x, y, z, Z, slot; slot -1 for padding), then b_pad cells x 9
#   out: b_pad energies, n_pad x 3 forces, the overflow flag (0 or 1)
# Z and slots travel as floats: exact below 2^24 (float32).
_ATOM_FIELDS = 5


def _unpack_inputs(row, b_pad):
    n_pad = (row.shape[0] - 9 * b_pad) // _ATOM_FIELDS
    atoms = row[: _ATOM_FIELDS * n_pad].reshape(n_pad, _ATOM_FIELDS)
    cells = row[_ATOM_FIELDS * n_pad :].reshape(b_pad, 3, 3)
    slots = atoms[:, 4].astype(jnp.int32)
    return atoms[:, :3], atoms[:, 3].astype(jnp.int32), slots >= 0, jnp.maximum(slots, 0), cells


@functools.lru_cache(maxsize=64)
def _sharded_program(model, mesh, method, b_pad, spec, layout):
    """jit(shard_map(one device's evaluation)), exactly the model's single-device path: its dense
    all-pairs function when ``spec`` is None, else the neighbour-list path (``layout``: the periodic
    analytic layout, a trace-time choice, hence part of the cache key)."""
    def one_device(params, packed):
        positions, atomic_numbers, atom_mask, batch, cells = _unpack_inputs(packed[0], b_pad)
        implementation, interpret = model.message_implementation(positions.shape[0]), getattr(model, "interpret", False)
        if spec is None:
            energies, forces = evaluation.batched_energy_and_forces(params, model.config, model.precision, implementation, interpret, positions,
                                                                    atomic_numbers, atom_mask, batch, b_pad, method)  # fmt: skip
            overflow = jnp.zeros((), bool)
        else:
            nbrs = nl.build(positions, cells, batch, atom_mask, spec)
            energies, forces, _ = periodic.energy_forces_stress(params, model.config, PRECISIONS[model.precision], positions, atomic_numbers, nbrs,
                                                                cells, atom_mask, b_pad, False, method, layout, implementation, interpret)
            overflow = nbrs.did_buffer_overflow
        dtype = jnp.result_type(energies.dtype, forces.dtype)  # a common dtype: no value changes
        out = jnp.concatenate([energies.astype(dtype), forces.reshape(-1).astype(dtype), overflow.astype(dtype)[None]])
        return out[None]

    block = PartitionSpec(AXIS)
    return jax.jit(shard_map(one_device, mesh, (PartitionSpec(), block), block))


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
    first_outputs: object = None  # outputs (on the host) of the run that settled the capacities, if one was needed

    def run(self):
        return self.program(self.params, *self.device_args)

    def finish(self, outputs):
        return unpack_outputs(to_host(outputs), self.plan)


def unpack_outputs(out: np.ndarray, plan: ShardPlan):
    """Host rows [D, b_pad + 3 n_pad + 1] -> (energies [B], forces [N, 3]) in the caller's order
    (one fancy-indexing step each)."""
    if out[:, -1].any():  # pragma: no cover - prepare() settled the capacities on these very inputs
        raise RuntimeError("neighbour list overflow in a prepared batch")
    b_pad, n_pad = plan.b_pad, plan.n_pad
    forces = out[:, b_pad : b_pad + 3 * n_pad].reshape(out.shape[0], n_pad, 3)  # a view
    return out[plan.structure_device, plan.structure_slot], forces[plan.atom_device, plan.atom_column]


def sharded_energy_and_forces(model, positions, atomic_numbers, batch, num_structures, cell=None, pbc=None, method="analytic", devices=None):
    """Energies [B] eV and forces [N, 3] eV/Å of a batch, structures spread over ``devices``.

    Inputs as validated by ``PaiNNStudent._validate`` (positions [N, 3] float64, atomic_numbers
    [N], batch [N] in 0 .. B-1, B = num_structures). cell/pbc as for ``energy_and_forces``
    (one cell for all, or [B, 3, 3]). The results equal the single-device call's up to the
    summation order of per-structure energies (float64: ~1e-15 relative).
    """
    prepared = prepare_batch(model, positions, atomic_numbers, batch, num_structures, cell, pbc, method, devices)
    return prepared.finish(prepared.run() if prepared.first_outputs is None else prepared.first_outputs)


def pack_inputs(plan: ShardPlan, positions, atomic_numbers, cells, dtype, cutoff) -> np.ndarray:
    """The host rows [D, 5 n_pad + 9 b_pad] of ``dtype`` that the devices unpack (see ``_unpack_inputs``).

    positions [N, 3] Å, atomic_numbers [N], cells [B, 3, 3] (one per structure).
    """
    num_devices, n_pad, b_pad = plan.atom_index.shape[0], plan.n_pad, plan.b_pad
    if b_pad > 2**24:
        raise ValueError(f"at most 2^24 structures per device, got {b_pad}: split the batch")
    packed = np.empty((num_devices, _ATOM_FIELDS * n_pad + 9 * b_pad), dtype)
    atoms = packed[:, : _ATOM_FIELDS * n_pad].reshape(num_devices, n_pad, _ATOM_FIELDS)  # views into packed
    local_cells = packed[:, _ATOM_FIELDS * n_pad :].reshape(num_devices, b_pad, 9)
    # Padding atoms sit far apart on a line (as in the single-device path); they are masked anyway.
    atoms[:, :, 0] = 1e3 + 10.0 * cutoff * np.arange(n_pad)
    atoms[:, :, 1:3] = 0.0
    atoms[:, :, 3] = 1
    atoms[:, :, 4] = np.where(plan.atom_index >= 0, plan.local_batch, -1)
    where = (plan.atom_device, plan.atom_column)
    atoms[where + (slice(0, 3),)] = positions
    atoms[where + (3,)] = atomic_numbers
    local_cells[:] = cells[0].reshape(9)  # padding structures: any valid cell
    local_cells[plan.structure_device, plan.structure_slot] = cells.reshape(-1, 9)
    return packed


def prepare_batch(model, positions, atomic_numbers, batch, num_structures, cell=None, pbc=None, method="analytic", devices=None) -> PreparedBatch:
    """Plans, pads and places a batch on the devices, and compiles its program (see :class:`PreparedBatch`)."""
    devs = resolve_devices(devices)
    mesh = device_mesh(devs)
    plan = plan_shards(batch, num_structures, len(devs))
    pbc = cell_lib.normalize_pbc(pbc, cell)
    cells = cell_lib.validate_cells(cell, pbc, num_structures if cell is not None and np.ndim(cell) == 3 else None)
    if cells.shape[0] == 1:
        cells = np.repeat(cells, num_structures, axis=0)
    if cells.shape[0] != num_structures:
        raise ValueError(f"cell must be [3, 3] or [B, 3, 3] with B = {num_structures} structures, got {list(np.shape(cell))}")
    # Near the origin / into the cells in float64 before the cast (evaluation.prepare_positions).
    positions = prepare_positions(positions, batch, num_structures, cell, pbc)
    dtype = DTYPES[model.dtype]
    packed = pack_inputs(plan, positions, atomic_numbers, cells, dtype, model.config.cutoff)
    dense = cell is None and not any(pbc) and plan.n_pad <= all_pairs_max_atoms()  # as the single-device path decides
    device_args = (put_sharded(mesh, packed),)
    first = None
    if dense:
        program = _sharded_program(model, mesh, method, plan.b_pad, None, None)
    else:
        program, first = _neighbor_program(model, mesh, method, plan, pbc, positions, batch, cells, packed, device_args)
    return PreparedBatch(program, model.params, device_args, plan, num_structures, positions.shape[0], first)


def plan_neighbor_grid(plan: ShardPlan, positions, batch, cells, pbc, dtype, radius):
    """(grid, stencil, cells [D * b_pad, 3, 3]) of the search over all devices' structures (host).

    The batch is seen as D * b_pad structures (structure s is number device * b_pad + slot). The
    grid is planned on the caller's arrays with the values the devices see (rounded to ``dtype``):
    the plan does not depend on the order of atoms or structures, so this equals planning on the
    device layout, without building it.
    """
    total = plan.atom_index.shape[0] * plan.b_pad
    flat_structure = plan.structure_device * plan.b_pad + plan.structure_slot  # [B]
    flat_cells = np.repeat(cells[:1], total, axis=0)  # padding structures: the first cell, as on the devices
    flat_cells[flat_structure] = cells
    flat_cells = flat_cells.astype(dtype).astype(np.float64)
    seen = positions.astype(dtype).astype(np.float64)
    grid, stencil, _ = nl.plan_lib.plan_grid(seen, flat_cells, flat_structure[batch], total, pbc, radius)
    return grid, stencil, flat_cells


def _neighbor_program(model, mesh, method, plan: ShardPlan, pbc, positions, batch, cells, packed, device_args):
    """The neighbour-list program: one search plan for all devices (planned on the whole batch, see
    :func:`plan_neighbor_grid`), grown until nothing overflows."""
    num_devices, b_pad, n_pad = packed.shape[0], plan.b_pad, plan.n_pad
    dtype = packed.dtype
    cache = _SPEC_CACHES.setdefault(model, periodic.SpecCache())
    fns = nl.neighbor_list_fn(model.config.cutoff, skin=periodic.LIST_MARGIN, pbc=pbc)
    total = num_devices * b_pad
    grid, stencil, flat_cells = plan_neighbor_grid(plan, positions, batch, cells, pbc, dtype, fns.cutoff + fns.skin)
    key = ("sharded", mesh, packed.shape, b_pad, pbc, grid, stencil, str(dtype))
    spec = cache.get(key)
    for _ in range(4):
        if spec is None:  # capacities are measured on the device layout itself (padding included)
            atoms = packed[:, : _ATOM_FIELDS * n_pad].reshape(num_devices * n_pad, _ATOM_FIELDS)
            slots = atoms[:, 4].astype(np.int64)
            mask = slots >= 0
            layout_batch = np.repeat(np.arange(num_devices) * b_pad, n_pad) + np.maximum(slots, 0)
            measured = fns.measure(atoms[:, :3].astype(np.float64), cell=flat_cells, batch=layout_batch, atom_mask=mask, num_structures=total)
            spec = cache.put(key, dataclasses.replace(measured, num_structures=b_pad))
        program = _sharded_program(model, mesh, method, b_pad, spec, periodic.periodic_layout())
        outputs = to_host(program(model.params, *device_args))  # one transfer per device: results and the overflow flag
        if not outputs[:, -1].any():
            return program, outputs
        spec = None
    raise RuntimeError("neighbour list overflow persisted after re-allocation")  # pragma: no cover
