"""The neighbour list as a value, and the JAX-MD-style factory that allocates and updates it.

    neighbor_fn = neighbor_list_fn(cutoff=5.0, skin=0.5, cell=cell)     # pbc: periodic iff a cell is given
    nbrs = neighbor_fn.allocate(positions)           # host: plans bins, sizes buffers with a margin
    nbrs = neighbor_fn.update(positions, nbrs)       # jittable: rebuilds only if an atom moved > skin / 2
    if nbrs.did_buffer_overflow:                     # a neighbour did not fit: nothing is silently lost
        nbrs = neighbor_fn.allocate(positions)       # (or: update_with_retry(neighbor_fn, positions, nbrs))
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from mlff_jax.kernels.neighbors import api as kernel_api
from mlff_jax.neighbors import cell as cell_lib
from mlff_jax.neighbors import plan as plan_lib
from mlff_jax.neighbors.binning import assign_bins
from mlff_jax.neighbors.plan import SearchSpec


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NeighborList:
    """Neighbours of every atom within cutoff + skin, at the positions of the last build.

    Row i lists the neighbours j of atom i; the same pair appears in row j as (i, -S).

    Attributes:
      idx: [N, capacity] int32 neighbour indices; N (the sentinel) in empty slots.
      image: [N, capacity, 3] int8 periodic image of each neighbour relative to the *wrapped*
        positions of the last build (use :meth:`cell_shifts` for shifts of the given positions).
      wrap: [N, 3] int32 cell translation that wrapped each atom at the last build.
      reference_positions: [N, 3] Å positions of the last build (Verlet skin test).
      cells: [B, 3, 3] Å cells of the last build, rows are cell vectors.
      batch: [N] int32 structure index of each atom.
      atom_mask: [N] bool, False for padding atoms (their rows are empty, they are nobody's neighbour).
      did_buffer_overflow: [] bool; True once a build lost neighbours (too many for a row or a
        bin, or a cell that shrank below the planned stencil). Sticky: re-allocate.
      max_neighbors: [] int32 largest row count of the last build (may exceed capacity).
      max_bin_occupancy: [] int32 fullest bin of the last build.
      spec: static :class:`SearchSpec` (cutoff, skin, pbc, grid, stencil, capacities).
    """

    idx: jax.Array
    image: jax.Array
    wrap: jax.Array
    reference_positions: jax.Array
    cells: jax.Array
    batch: jax.Array
    atom_mask: jax.Array
    did_buffer_overflow: jax.Array
    max_neighbors: jax.Array
    max_bin_occupancy: jax.Array
    spec: SearchSpec = dataclasses.field(metadata=dict(static=True))

    @property
    def capacity(self) -> int:
        return self.idx.shape[1]

    @property
    def num_atoms(self) -> int:
        return self.idx.shape[0]

    @property
    def mask(self) -> jax.Array:
        """[N, capacity] bool, True on filled slots."""
        return self.idx < self.num_atoms

    def cell_shifts(self) -> jax.Array:
        """[N, capacity, 3] int32 shifts S in cell units: R_j - R_i + S @ cell is the pair vector of
        the positions as given to the last build (0 on empty slots)."""
        j = jnp.minimum(self.idx, self.num_atoms - 1)
        shifts = self.image.astype(jnp.int32) + self.wrap[j] - self.wrap[:, None, :]
        return jnp.where(self.mask[..., None], shifts, 0)

    def cartesian_shifts(self, cells=None) -> jax.Array:
        """[N, capacity, 3] Å shifts S @ cell of each entry (``cells`` [B, 3, 3] defaults to the build's)."""
        cells = self.cells if cells is None else jnp.asarray(cells)
        if cells.ndim == 2:
            cells = cells[None]
        dtype = jnp.result_type(cells.dtype, self.reference_positions.dtype)
        return jnp.einsum("nck,nkj->ncj", self.cell_shifts().astype(dtype), cells.astype(dtype)[self.batch])

    def pairs(self):
        """Host copy of the list as (i, j, S) like :func:`neighbor_pairs` (unsorted), NumPy int64."""
        mask = np.asarray(self.mask)
        i, slot = np.nonzero(mask)
        return i.astype(np.int64), np.asarray(self.idx)[i, slot].astype(np.int64), np.asarray(self.cell_shifts())[i, slot].astype(np.int64)


def build(positions, cells, batch, atom_mask, spec: SearchSpec) -> NeighborList:
    """Builds the list from scratch (jittable; all shapes from ``spec``).

    positions: [N, 3] Å; cells: [B, 3, 3] Å; batch: [N] int32; atom_mask: [N] bool.
    """
    bins = assign_bins(positions, cells, batch, atom_mask, spec)
    idx, image, counts = kernel_api.gather_neighbors(
        bins.wrapped, bins.coords, batch, atom_mask, bins.table, bins.table_positions, cells.astype(positions.dtype),
        grid=spec.grid, stencil=spec.stencil, pbc=spec.pbc, cutoff=spec.list_cutoff, capacity=spec.capacity,
        order=bins.order, implementation=spec.implementation, interpret=spec.interpret,
    )
    max_neighbors = jnp.max(counts, initial=0)
    overflow = (max_neighbors > spec.capacity) | (bins.max_occupancy > spec.bin_capacity) | ~bins.stencil_ok
    if not spec.capacity:  # counting pass: no rows
        n = positions.shape[0]
        idx, image = jnp.zeros((n, 0), jnp.int32), jnp.zeros((n, 0, 3), jnp.int8)
        overflow = (bins.max_occupancy > spec.bin_capacity) | ~bins.stencil_ok
    return NeighborList(idx, image, bins.wrap, positions, cells, batch, atom_mask, overflow, max_neighbors, bins.max_occupancy, spec)


_build_jit = jax.jit(build, static_argnames=("spec",))


def needs_rebuild(positions, nbrs: NeighborList, cells=None) -> jax.Array:
    """[] bool: some atom moved more than skin / 2 since the last build, or the cell changed.

    Then a pair now within the cutoff may have been beyond cutoff + skin at the last build.
    Wrapping an atom back into the cell counts as a large move (its shifts changed).
    """
    moved = jnp.where(nbrs.atom_mask[:, None], positions - nbrs.reference_positions, 0.0)
    limit = (0.5 * nbrs.spec.skin) ** 2
    rebuild = jnp.max(jnp.sum(moved * moved, axis=1), initial=0.0) > limit
    if cells is not None:
        rebuild |= jnp.any(jnp.broadcast_to(cells, nbrs.cells.shape) != nbrs.cells)
    return rebuild


def update(positions, nbrs: NeighborList, cells=None) -> NeighborList:
    """The list for ``positions``: ``nbrs`` itself, or a rebuild if an atom moved > skin / 2 (jittable).

    positions: [N, 3] Å. cells: optional new [B, 3, 3] or [3, 3] cells (a change forces a rebuild).
    The overflow flag is sticky: once set, re-allocate (see :func:`update_with_retry`).
    """
    positions = jnp.asarray(positions, nbrs.reference_positions.dtype)
    new_cells = nbrs.cells if cells is None else jnp.broadcast_to(jnp.asarray(cells, nbrs.cells.dtype), nbrs.cells.shape)
    rebuild = needs_rebuild(positions, nbrs, None if cells is None else new_cells)

    def rebuilt(_):
        fresh = build(positions, new_cells, nbrs.batch, nbrs.atom_mask, nbrs.spec)
        return dataclasses.replace(fresh, did_buffer_overflow=fresh.did_buffer_overflow | nbrs.did_buffer_overflow)

    return jax.lax.cond(rebuild, rebuilt, lambda _: nbrs, None)


_update_jit = jax.jit(update)


def _placeholder(positions, cells, batch, atom_mask, spec: SearchSpec) -> NeighborList:
    """An empty list of the right shapes that any ``update`` rebuilds."""
    n = positions.shape[0]
    zero = jnp.zeros((), jnp.int32)
    return NeighborList(jnp.full((n, spec.capacity), n, jnp.int32), jnp.zeros((n, spec.capacity, 3), jnp.int8), jnp.zeros((n, 3), jnp.int32),
                        jnp.full_like(positions, jnp.inf), cells, batch, atom_mask, jnp.array(False), zero, zero, spec)


@dataclasses.dataclass(frozen=True)
class NeighborListFns:
    """``allocate`` (host) and ``update`` (jittable) for one cutoff, skin, pbc and method.

    Attributes:
      cutoff, skin: Å; pairs within cutoff + skin are listed; rebuilds when an atom moved > skin/2.
      cell: default cell(s) [3, 3] or [B, 3, 3] Å, or None (vacuum).
      pbc: static periodic directions (three bools).
      capacity_multiplier: margin on the sizes measured at allocation (1.25: 25 % more slots).
      method: "auto", "all_pairs" or "cell_list" (see :func:`plan.plan_grid`).
      implementation: "xla" or "pallas" (the gather kernel); interpret: Pallas interpret mode.
    """

    cutoff: float
    skin: float
    cell: np.ndarray | None
    pbc: tuple[bool, bool, bool]
    capacity_multiplier: float
    method: str
    implementation: str
    interpret: bool

    def allocate(self, positions, *, cell=None, batch=None, atom_mask=None, num_structures=None, extra_capacity=0) -> NeighborList:
        """Plans and builds a list for ``positions`` (host call, validates its input).

        Args:
          positions: [N, 3] Å (atoms may lie outside the cell).
          cell: overrides the factory's cell: [3, 3] or [B, 3, 3] Å.
          batch: [N] int structure index (0 .. B-1) of each atom, for batches of structures.
          atom_mask: [N] bool, False for padding atoms.
          num_structures: B (default: batch.max() + 1).
          extra_capacity: neighbour slots added to every row beyond the measured need.
        Raises:
          ValueError: NaN positions, a bad or singular cell, a zero periodic cell vector, a cell
            too thin for the cutoff, inconsistent batch or mask.
        """
        for _ in range(4):
            spec, args = self._measure(positions, cell, batch, atom_mask, num_structures, extra_capacity)
            # Built through the jitted ``update`` of a placeholder whose reference positions are
            # infinitely far: the program compiled here is the one later updates reuse.
            nbrs = _update_jit(args[0], _placeholder(*args, spec), None)
            if not bool(nbrs.did_buffer_overflow):
                return nbrs
        raise RuntimeError("neighbour list allocation did not converge")  # pragma: no cover

    def measure(self, positions, *, cell=None, batch=None, atom_mask=None, num_structures=None, extra_capacity=0) -> SearchSpec:
        """The :class:`SearchSpec` that ``allocate`` would build with (same arguments), without building."""
        return self._measure(positions, cell, batch, atom_mask, num_structures, extra_capacity)[0]

    def _measure(self, positions, cell, batch, atom_mask, num_structures, extra_capacity):
        """Plans the grid on the host, then counts bin occupancy and neighbours on the device."""
        r = cell_lib.validate_positions(positions)
        n = r.shape[0]
        given = jnp.asarray(positions)
        dtype = given.dtype if jnp.issubdtype(given.dtype, jnp.floating) else jnp.float32
        batch = np.zeros(n, np.int64) if batch is None else np.asarray(batch)
        if batch.shape != (n,) or (n and (batch.dtype.kind not in "iu" or batch.min() < 0)):
            raise ValueError(f"batch must be [N] = [{n}] non-negative integers, got shape {list(batch.shape)} dtype {batch.dtype}")
        b = int(num_structures) if num_structures is not None else (int(batch.max()) + 1 if n else 1)
        if n and batch.max() >= b:
            raise ValueError(f"batch index {int(batch.max())} >= num_structures {b}")
        mask = np.ones(n, bool) if atom_mask is None else np.asarray(atom_mask, bool)
        if mask.shape != (n,):
            raise ValueError(f"atom_mask must be [N] = [{n}] bools, got shape {list(mask.shape)}")
        cells = cell_lib.validate_cells(self.cell if cell is None else cell, self.pbc, b)
        grid, stencil, occupancy = plan_lib.plan_grid(r[mask], cells, batch[mask], b, self.pbc, self.cutoff + self.skin, self.method)
        grow = lambda count: math.ceil(max(count, 1) * self.capacity_multiplier)  # noqa: E731
        # The Pallas kernel tiles bins: their capacity must be a power of two; XLA takes any bucket.
        bin_bucket = plan_lib.next_power_of_two if self.implementation == "pallas" else plan_lib.bucket_capacity
        spec = SearchSpec(self.cutoff, self.skin, self.pbc, grid, stencil, bin_bucket(grow(occupancy)), 0, b, self.implementation, self.interpret)
        args = (jnp.asarray(r, dtype), jnp.asarray(cells, dtype), jnp.asarray(batch, jnp.int32), jnp.asarray(mask))
        counted = _build_jit(*args, spec=spec)
        while int(counted.max_bin_occupancy) > spec.bin_capacity:  # the device binned differently (round-off)
            spec = dataclasses.replace(spec, bin_capacity=bin_bucket(grow(int(counted.max_bin_occupancy))))
            counted = _build_jit(*args, spec=spec)
        capacity = plan_lib.bucket_capacity(grow(int(counted.max_neighbors)) + int(extra_capacity))
        return dataclasses.replace(spec, capacity=capacity), args

    def update(self, positions, nbrs: NeighborList, *, cell=None) -> NeighborList:
        """Jittable update (see :func:`update`); ``cell`` [B, 3, 3] or [3, 3] for a changed cell."""
        return _update_jit(positions, nbrs, cell)

    def rebuild(self, positions, nbrs: NeighborList, *, cell=None) -> NeighborList:
        """Jittable unconditional rebuild with the shapes of ``nbrs`` (benchmarks, cell changes)."""
        cells = nbrs.cells if cell is None else jnp.broadcast_to(jnp.asarray(cell, nbrs.cells.dtype), nbrs.cells.shape)
        return _build_jit(jnp.asarray(positions, nbrs.reference_positions.dtype), cells, nbrs.batch, nbrs.atom_mask, spec=nbrs.spec)


def neighbor_list_fn(cutoff, skin=0.0, cell=None, pbc=None, capacity_multiplier=1.25, method="auto", implementation="xla",
                     interpret=False) -> NeighborListFns:
    """Factory of a neighbour list (JAX-MD conventions: ``allocate`` outside jit, ``update`` inside).

    Args:
      cutoff: Å. skin: Å (Verlet skin; 0 rebuilds on every move).
      cell: [3, 3] (or [B, 3, 3]) Å, rows are cell vectors; None for molecules in vacuum (or
        to pass the cell to ``allocate``).
      pbc: three bools (default: periodic everywhere iff a cell is given).
      capacity_multiplier: >= 1, margin on measured sizes.
      method: "auto" (fewest candidates), "all_pairs" (one bin: small systems, tiny cells) or
        "cell_list" (bins about cutoff + skin wide: O(N)).
      implementation: "xla" or "pallas" for the gather; interpret: Pallas interpret mode (CPU).
    """
    cutoff = cell_lib.validate_cutoff(cutoff)
    skin = float(skin)
    if not np.isfinite(skin) or skin < 0:
        raise ValueError(f"skin must be a non-negative distance in Å, got {skin!r}")
    if not capacity_multiplier >= 1.0:
        raise ValueError(f"capacity_multiplier must be >= 1, got {capacity_multiplier!r}")
    if method not in ("auto", "all_pairs", "cell_list"):
        raise ValueError(f"method must be 'auto', 'all_pairs' or 'cell_list', got {method!r}")
    if implementation not in kernel_api.IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {kernel_api.IMPLEMENTATIONS}, got {implementation!r}")
    pbc = cell_lib.normalize_pbc(pbc, cell)
    if cell is not None:  # otherwise ``allocate`` must be given one (if any direction is periodic)
        cell = np.asarray(cell, np.float64)
        cell_lib.validate_cells(cell, pbc, None if cell.ndim == 2 else cell.shape[0])
    return NeighborListFns(cutoff, skin, cell, pbc, float(capacity_multiplier), method, implementation, bool(interpret))


def update_with_retry(neighbor_fn: NeighborListFns, positions, nbrs: NeighborList, *, cell=None, max_retries=4) -> NeighborList:
    """Host helper: ``update``; if the buffers overflowed, re-allocate (larger) and try again.

    Returns a list without overflow, so that no neighbour is ever silently lost.
    """
    for _ in range(max_retries + 1):
        nbrs_new = neighbor_fn.update(positions, nbrs, cell=cell)
        if not bool(nbrs_new.did_buffer_overflow):
            return nbrs_new
        cells = nbrs.cells if cell is None else cell
        nbrs = neighbor_fn.allocate(
            positions, cell=np.asarray(cells), batch=np.asarray(nbrs.batch), atom_mask=np.asarray(nbrs.atom_mask),
            num_structures=nbrs.spec.num_structures,
        )
    raise RuntimeError(f"neighbour list still overflowing after {max_retries} re-allocations")
