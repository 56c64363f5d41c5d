"""Spatial decomposition: one large periodic system spread over devices in slabs.

The cell is cut along its longest periodic direction k into D slabs of equal fractional width
1/D. Device d *owns* the atoms whose wrapped fractional coordinate s_k lies in [d/D, (d+1)/D):
their positions, velocities, ids live only there, in a static-capacity block of ``owned_capacity``
slots. To evaluate its owned atoms' energies exactly, a device also needs every atom within the
model's receptive field, T x cutoff (T message-passing blocks), plus the Verlet skin for MD: the
*halo*, copied (as a periodic image along k) from the other devices' owned atoms.

Why the halo is exact: after t blocks, an atom's features are correct when all atoms within
t x cutoff of it are present; so with a halo of T x cutoff the owned atoms' energies E_i equal the
single-device ones as functions of the positions, and so do their derivatives. Each device
differentiates the sum of *its owned* atoms' energies with respect to all its local atoms (owned
and halo); a halo atom's gradient goes back to its owner. Summed over devices, this is exactly
-dE/dR.

Communication per force evaluation (D devices, N atoms, C = owned capacity ~ N/D):
  * all-gather of owned positions: every device receives D x C x 3 floats (12 MB for 1M atoms in
    float32), then picks its halo atoms by index;
  * reduce-scatter of halo gradients back to owners: D x C x 3 floats sent, C x 3 received;
  * one psum of the energy.
An exchange of halo atoms only (ppermute with neighbouring slabs) would send ~2 x halo / slab of
that; the all-gather is simpler, has no dependence on D in the code, and moves the 12 MB in a few
tens of microseconds over NVLink, far below the model's own time for 1M atoms.

Rebuilds (every call without skin; in MD when an atom moved more than skin/2): owners are
recomputed from positions and atoms *migrate*: all owned atoms are all-gathered and each device
keeps those in its slab, in a fixed order. An atom has exactly one owner (the slab of its own
s_k, computed once, on its old owner), so none is lost or duplicated; a device that would receive
more than its capacity raises the overflow flag (then the host re-plans with larger capacities and
repeats the work: nothing is silently dropped). Halo lists and the local neighbour list are rebuilt
at the same time.

Requires slab width h_k / D >= halo (so each atom has at most two images in a device's region).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from mlff_jax import analytic, painn, periodic
from mlff_jax.analytic_graph import fold_symmetric_edges
from mlff_jax.neighbors import cell as cell_lib
from mlff_jax.neighbors import neighbor_list as nl
from mlff_jax.neighbors.edges import neighbor_list_edges
from mlff_jax.neighbors.plan import SearchSpec
from mlff_jax.parallel.mesh import AXIS

# Added to the halo width (Å): positions are wrapped and compared in floating point.
HALO_MARGIN = 1e-3


@dataclasses.dataclass(frozen=True)
class DomainSpec:
    """Static plan of a slab decomposition (hashable: jit static).

    Attributes:
      num_domains: D devices (slabs).
      axis: k, the cell vector cut into slabs (a periodic direction).
      pbc: periodic directions of the system.
      cutoff, skin: Å; skin is the Verlet skin (0 for single evaluations, plus a round-off margin).
      halo: Å perpendicular to the slab faces, T x cutoff + skin + HALO_MARGIN.
      owned_capacity: C, atom slots per device for owned atoms.
      halo_capacity: slots per device for halo copies.
      local_spec: neighbour search of one device's owned + halo atoms (pbc[axis] = False: halo
        copies are explicit periodic images along k).
    """

    num_domains: int
    axis: int
    pbc: tuple
    cutoff: float
    skin: float
    halo: float
    owned_capacity: int
    halo_capacity: int
    local_spec: SearchSpec


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DomainLayout:
    """One device's halo and local neighbour list, valid until the next rebuild.

    Local atoms are the C owned slots followed by the halo slots. A local copy of an atom is its
    position plus ``image`` x cell[k].

    Attributes:
      owned_image: [C] int32 image of each owned atom (its s_k + image is in [0, 1)).
      halo_source: [H] int32 slot of each halo atom in the all-gathered owned arrays [D * C]
        (D * C for empty slots).
      halo_image: [H] int32; halo_atomic_numbers: [H] int32; halo_mask: [H] bool.
      neighbors: local :class:`~mlff_jax.neighbors.NeighborList` over C + H atoms.
      reference_positions: [C, 3] Å owned positions at the rebuild (Verlet skin test).
      overflow: [] bool, sticky: an owned, halo or neighbour capacity was exceeded.
    """

    owned_image: jax.Array
    halo_source: jax.Array
    halo_image: jax.Array
    halo_atomic_numbers: jax.Array
    halo_mask: jax.Array
    neighbors: nl.NeighborList
    reference_positions: jax.Array
    overflow: jax.Array


# ----------------------------------------------------------------------------- host planning
def slab_axis(cell, pbc) -> int:
    """The periodic direction with the largest perpendicular height (the longest to cut)."""
    inverse = np.linalg.inv(cell_lib.binning_frame(np.asarray(cell, np.float64)[None], pbc, np))[0]
    h = cell_lib.heights(inverse, np)
    periodic_axes = [k for k in range(3) if pbc[k]]
    if not periodic_axes:
        raise ValueError("spatial decomposition needs a periodic cell (pbc has no periodic direction)")
    return max(periodic_axes, key=lambda k: h[k])


def _fractional_column(cell, axis):
    """Column k of cell^-1: s_k = r . column (NumPy float64)."""
    return np.linalg.inv(np.asarray(cell, np.float64))[:, axis]


def host_assignment(positions, cell, num_domains: int, axis: int, halo: float):
    """Owners and halo copies computed on the host (NumPy), mirroring the device code.

    Returns (owner [N], halos: list over devices of (atom indices, images)).
    """
    column = _fractional_column(cell, axis)
    s = positions @ column
    owner = np.clip(np.floor((s - np.floor(s)) * num_domains), 0, num_domains - 1).astype(np.int64)
    own_image = -np.floor(s)
    hw = halo * np.linalg.norm(column)
    halos = []
    for d in range(num_domains):
        t = s - d / num_domains
        m0 = -np.floor(t + hw)
        atoms, images = [], []
        for m in (m0, m0 + 1):
            tl = t + m
            ok = (tl >= -hw) & (tl < 1.0 / num_domains + hw) & ~((owner == d) & (m == own_image))
            atoms.append(np.nonzero(ok)[0])
            images.append(m[ok])
        halos.append((np.concatenate(atoms), np.concatenate(images).astype(np.int64)))
    return owner, halos


def plan(model, positions, cell, pbc, num_domains: int, skin: float = 0.0, capacity_multiplier: float = 1.25) -> DomainSpec:
    """Plans a slab decomposition of ``positions`` [N, 3] Å in ``cell`` [3, 3] Å over D devices.

    Raises:
      ValueError: no periodic direction, D < 2, or slabs thinner than the halo.
    """
    if num_domains < 2:
        raise ValueError(f"a spatial decomposition needs at least 2 devices, got {num_domains}")
    pbc = cell_lib.normalize_pbc(pbc, cell)
    cells = cell_lib.validate_cells(cell, pbc)
    cell = cells[0]
    positions = cell_lib.validate_positions(positions)
    axis = slab_axis(cell, pbc)
    config = model.config
    halo = config.num_interactions * config.cutoff + skin + HALO_MARGIN
    height = 1.0 / np.linalg.norm(_fractional_column(cell, axis))
    slab = height / num_domains
    if slab < halo:
        raise ValueError(
            f"slabs too thin: cell height {height:.4g} Å along cell vector {axis} / {num_domains} devices = {slab:.4g} Å, but the halo "
            f"(receptive field {config.num_interactions} blocks x {config.cutoff:g} Å cutoff + skin {skin:g} Å) is {halo:.4g} Å; "
            f"use at most {int(height // halo)} devices or a larger cell"
        )
    owner, halos = host_assignment(positions, cell, num_domains, axis, halo)
    # Atom slots: plus 16, in multiples of 32, and for MD (skin > 0) a fifth of the neighbour margin
    # (1.05 for 1.25): counts per slab fluctuate by ~sqrt(N). Every padding slot costs as much as an
    # atom (its neighbour row), so a single evaluation (skin 0: no motion) gets none at the default
    # multiplier (re-plans after an overflow raise the multiplier, and with it the margin).
    margin = 1.0 + (capacity_multiplier - 1.0) / 5.0 if skin > 0 else 1.0 + max(capacity_multiplier - 1.25, 0.0) / 5.0
    grow = lambda count: 32 * math.ceil((math.ceil(count * margin) + 16) / 32)  # noqa: E731
    owned_capacity = grow(np.bincount(owner, minlength=num_domains).max())
    halo_capacity = grow(max(len(a) for a, _ in halos))
    # The local neighbour search, measured on all devices' local systems at once (as a batch of D).
    local_pbc = tuple(p and k != axis for k, p in enumerate(pbc))
    local, batch = [], []
    for d in range(num_domains):
        atoms, images = halos[d]
        own = np.nonzero(owner == d)[0]
        own_images = -np.floor(positions[own] @ _fractional_column(cell, axis))
        local.append(positions[own] + own_images[:, None] * cell[axis])
        local.append(positions[atoms] + images[:, None] * cell[axis])
        batch.append(np.full(len(own) + len(atoms), d))
    fns = nl.neighbor_list_fn(config.cutoff, skin=skin + periodic.LIST_MARGIN, pbc=local_pbc, capacity_multiplier=capacity_multiplier)
    measured = fns.measure(np.concatenate(local), cell=np.repeat(cell[None], num_domains, 0), batch=np.concatenate(batch), num_structures=num_domains)
    local_spec = dataclasses.replace(measured, num_structures=1)
    return DomainSpec(num_domains, axis, pbc, config.cutoff, float(skin), halo, owned_capacity, halo_capacity, local_spec)


def initial_blocks(spec: DomainSpec, positions, cell, **per_atom):
    """Host arrays [D, C, ...] of the owned atoms of each device (ordered by atom index).

    per_atom: further [N, ...] arrays (atomic numbers, velocities, masses) laid out the same way.
    Returns a dict with "ids" ([D, C] int32, -1 in empty slots), "positions" and the per_atom keys.
    Raises ValueError if a device has more atoms than ``spec.owned_capacity``.
    """
    positions = np.asarray(positions, np.float64)
    s = positions @ _fractional_column(cell, spec.axis)
    owner = np.clip(np.floor((s - np.floor(s)) * spec.num_domains), 0, spec.num_domains - 1)
    c = spec.owned_capacity
    ids = np.full((spec.num_domains, c), -1, np.int32)
    blocks = {"positions": positions, **{k: np.asarray(v) for k, v in per_atom.items()}}
    out = {k: np.zeros((spec.num_domains, c) + v.shape[1:], v.dtype) for k, v in blocks.items()}
    for d in range(spec.num_domains):
        mine = np.nonzero(owner == d)[0]
        if len(mine) > c:
            raise ValueError(f"device {d} owns {len(mine)} atoms, more than the capacity {c}")
        ids[d, : len(mine)] = mine
        for k, v in blocks.items():
            out[k][d, : len(mine)] = v[mine]
    out["ids"] = ids
    return out


# ----------------------------------------------------------------------------- device code (inside shard_map)
def _gather(x):
    """[C, ...] on each device -> [D * C, ...] (device-major) on every device."""
    return jax.lax.all_gather(x, AXIS, tiled=True)


def _fraction(positions, column):
    """s_k = r . column, written elementwise (the same rounding wherever it is evaluated)."""
    return positions[:, 0] * column[0] + positions[:, 1] * column[1] + positions[:, 2] * column[2]


def migrate(spec: DomainSpec, cell, atoms: dict):
    """Moves every owned atom to the device of its slab. ``atoms``: dict of [C, ...] arrays with
    "positions" and "ids" (-1: empty). Returns (atoms, overflow); empty slots are zero, ids -1.
    overflow: a device got more than C atoms, or the atom count changed (non-finite positions)."""
    d = jax.lax.axis_index(AXIS)
    c = spec.owned_capacity
    column = cell_lib.inverse3(cell, jnp)[:, spec.axis]
    s = _fraction(atoms["positions"], column)
    owner = jnp.clip(jnp.floor((s - jnp.floor(s)) * spec.num_domains), 0, spec.num_domains - 1).astype(jnp.int32)
    owner = jnp.where(atoms["ids"] >= 0, owner, spec.num_domains)  # computed once, by the current owner
    mine = _gather(owner) == d
    count = jnp.sum(mine)
    (index,) = jnp.nonzero(mine, size=c, fill_value=0)
    valid = jnp.arange(c) < count

    def pick(x):
        g = _gather(x)[index]
        return jnp.where(valid.reshape((c,) + (1,) * (g.ndim - 1)), g, jnp.zeros_like(g))

    moved = {k: pick(v) for k, v in atoms.items()}
    moved["ids"] = jnp.where(valid, moved["ids"], -1)
    # Conservation: every atom claimed once (an atom with NaN coordinates has no slab: flagged too).
    before = jax.lax.psum(jnp.sum(atoms["ids"] >= 0), AXIS)
    after = jax.lax.psum(jnp.minimum(count, c), AXIS)
    return moved, (count > c) | (before != after)


def build_layout(spec: DomainSpec, cell, positions, atomic_numbers, ids, overflow) -> DomainLayout:
    """Halo copies and the local neighbour list for the current owned atoms (after :func:`migrate`)."""
    d = jax.lax.axis_index(AXIS)
    c, h, num = spec.owned_capacity, spec.halo_capacity, spec.num_domains
    column = cell_lib.inverse3(cell, jnp)[:, spec.axis]
    gathered_positions = _gather(positions)
    gathered_ids = _gather(ids)
    s = _fraction(gathered_positions, column)  # [D * C]
    own_image = -jnp.floor(s)
    owned_here = (jnp.arange(num * c) // c) == d
    hw = spec.halo * jnp.linalg.norm(column)
    t = s - d / num
    m0 = -jnp.floor(t + hw)
    candidates, images = [], []
    for m in (m0, m0 + 1):
        tl = t + m
        candidates.append((gathered_ids >= 0) & (tl >= -hw) & (tl < 1.0 / num + hw) & ~(owned_here & (m == own_image)))
        images.append(m)
    candidates, images = jnp.concatenate(candidates), jnp.concatenate(images)
    count = jnp.sum(candidates)
    (index,) = jnp.nonzero(candidates, size=h, fill_value=0)
    halo_mask = jnp.arange(h) < count
    source = jnp.where(halo_mask, index % (num * c), num * c).astype(jnp.int32)
    halo_image = jnp.where(halo_mask, images[index], 0).astype(jnp.int32)
    owned_image = jax.lax.dynamic_slice_in_dim(own_image, d * c, c).astype(jnp.int32)
    halo_z = jnp.where(halo_mask, _gather(atomic_numbers)[jnp.minimum(source, num * c - 1)], 1)
    local = _local_positions(spec, cell, positions, gathered_positions, owned_image, source, halo_image)
    local_mask = jnp.concatenate([ids >= 0, halo_mask])
    nbrs = nl.build(local, cell[None], jnp.zeros(c + h, jnp.int32), local_mask, spec.local_spec)
    overflow = overflow | (count > h) | nbrs.did_buffer_overflow
    return DomainLayout(owned_image, source, halo_image, halo_z.astype(jnp.int32), halo_mask, nbrs, positions, overflow)


def _local_positions(spec, cell, positions, gathered_positions, owned_image, halo_source, halo_image):
    """[C + H, 3] Å: owned atoms, then halo copies, each moved to its image along cell[k]."""
    num_slots = gathered_positions.shape[0]
    a = cell[spec.axis]
    owned = positions + owned_image[:, None].astype(positions.dtype) * a
    halo = gathered_positions[jnp.minimum(halo_source, num_slots - 1)] + halo_image[:, None].astype(positions.dtype) * a
    return jnp.concatenate([owned, halo])


def needs_rebuild(spec: DomainSpec, positions, ids, layout: DomainLayout):
    """[] bool, the same on every device: some atom moved more than skin / 2 since the last rebuild."""
    moved = jnp.where((ids >= 0)[:, None], positions - layout.reference_positions, 0.0)
    largest = jax.lax.pmax(jnp.max(jnp.sum(moved * moved, axis=1), initial=0.0), AXIS)
    return largest > (0.5 * spec.skin) ** 2


def energy_and_forces(params, config, precision, method, spec: DomainSpec, cell, positions, atomic_numbers, ids, layout: DomainLayout,
                      graph_layout: str = "folded"):
    """(total energy [] eV, forces [C, 3] eV/Å on the owned atoms); collective over the mesh axis.

    graph_layout: "folded" (one filter evaluation per pair) or "edges" (the directed list), as
    :func:`mlff_jax.periodic.periodic_layout` chooses per platform. Always the XLA analytic sweep
    (the fused kernels of :mod:`mlff_jax.implementation` are not wired to the decomposition).
    """
    c, h = spec.owned_capacity, spec.halo_capacity
    num_slots = spec.num_domains * c
    gathered = _gather(positions)
    local = _local_positions(spec, cell, positions, gathered, layout.owned_image, layout.halo_source, layout.halo_image)
    z = jnp.concatenate([atomic_numbers, layout.halo_atomic_numbers])
    owned = jnp.concatenate([ids >= 0, jnp.zeros(h, bool)])  # only owned atoms' energies count here
    nbrs = layout.neighbors
    edges = neighbor_list_edges(nbrs, cell[None].astype(local.dtype), local.dtype)
    zeros = jnp.zeros(c + h, jnp.int32)
    if method == "analytic":
        graph = fold_symmetric_edges(edges) if graph_layout == "folded" else edges
        result = analytic.energy_forces_virial(params, config, local, z, graph, owned, zeros, 1, precision,
                                               chunk_size=analytic.auto_chunk_size(analytic.num_unique_edges(graph)))
        energy, forces = result.energies[0], result.forces
    else:
        def owned_energy(r):
            return painn.structure_energies(params, config, r, z, edges, owned, zeros, 1, precision)[0]

        energy, grad = jax.value_and_grad(owned_energy)(local)
        forces = -grad
    halo_forces = jnp.where(layout.halo_mask[:, None], forces[c:], 0.0)
    returned = jnp.zeros((num_slots + 1, 3), forces.dtype).at[layout.halo_source].add(halo_forces)[:num_slots]
    forces = forces[:c] + jax.lax.psum_scatter(returned, AXIS, scatter_dimension=0, tiled=True)
    return jax.lax.psum(energy, AXIS), jnp.where((ids >= 0)[:, None], forces, 0.0)
