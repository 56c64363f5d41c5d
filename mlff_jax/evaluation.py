"""How a host call is evaluated: the layer between the public model class and the code that runs.

:class:`mlff_jax.model.PaiNNStudent` sits above this module; :mod:`mlff_jax.periodic` and
:mod:`mlff_jax.parallel` import from it, never from the model. It holds

- the names shared by every path: ``DTYPES``, ``PRECISIONS``, ``METHODS``, the padding sizes
  (:func:`bucket_size`, :func:`structures_bucket`);
- the path decisions: several devices (:func:`uses_devices`), all pairs or a neighbour list
  (:func:`uses_neighbor_list`, :func:`all_pairs_max_atoms`); the message-passing implementation is
  :func:`mlff_jax.implementation.choose`;
- the pure all-pairs evaluation of padded molecules (:func:`batched_energy_and_forces`);
- the host's float64 preparation of coordinates (:func:`prepare_positions`): edge vectors are
  differences of absolute coordinates, and in float32 a coordinate of magnitude x is rounded to
  ~6e-8 x (0.006 Å at 1e5 Å; at 1e8 Å whole molecules collapse onto a few points). Each structure
  is therefore translated near the origin (and periodic ones wrapped into their cell) in float64
  before the cast. Energies and forces are translation invariant, so nothing else changes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mlff_jax import analytic, painn
from mlff_jax import implementation as implementation_lib
from mlff_jax.analytic_graph import all_pairs_graph, default_accumulation
from mlff_jax.graph import all_pairs_edges
from mlff_jax.neighbors import cell as cell_lib

PRECISIONS = {
    "highest": jax.lax.Precision.HIGHEST,
    "high": jax.lax.Precision.HIGH,
    "default": jax.lax.Precision.DEFAULT,
}
DTYPES = {"float32": jnp.float32, "float64": jnp.float64}
METHODS = ("analytic", "autodiff")  # forces: hand-derived reverse sweep (mlff_jax.analytic) or jax.grad


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def precision_name(precision) -> str:
    """The name ("highest" | "high" | "default") of a ``jax.lax.Precision`` of :data:`PRECISIONS`."""
    return {v: k for k, v in PRECISIONS.items()}[precision]


# Molecules up to this many (padded) atoms use the dense all-pairs graph; larger systems and
# every periodic one take their edges from a neighbour list (mlff_jax.periodic). Per platform: on
# CPU the earlier switch point (128) stays; on the H100 a 192-atom water cluster (tiny-77k) costs
# 0.46 ms with all pairs against 3.3-3.9 ms through the neighbour-list program
# (benchmarks/results/single_molecule_tiny77k_h100_run3.json).
ALL_PAIRS_MAX_ATOMS = 128
ALL_PAIRS_MAX_ATOMS_BY_PLATFORM = {"cpu": 128, "gpu": 256, "cuda": 256, "rocm": 256}


def all_pairs_max_atoms() -> int:
    """Largest padded molecule evaluated with all pairs on the default backend."""
    return ALL_PAIRS_MAX_ATOMS_BY_PLATFORM.get(jax.default_backend(), ALL_PAIRS_MAX_ATOMS)


def bucket_size(n: int, minimum: int = 8) -> int:
    """Padded size for n items: the smallest of minimum * {1, 1.5, 2, 3, 4, 6, 8, ...} >= n.

    Powers of two and 1.5x powers of two waste at most a third of each padded array (atoms) and keep
    the number of compiled programs logarithmic in the largest size seen.
    """
    size = minimum
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


def structures_bucket(num_structures: int) -> int:
    """Padded number of structures: the next power of two."""
    return 1 << max(num_structures - 1, 0).bit_length()


# ----------------------------------------------------------------------------- path decisions
def uses_devices(devices, single: bool, num_structures: int) -> bool:
    """Whether a host call may take the multi-device path (:func:`mlff_jax.parallel.dispatch`, which
    can still decline): devices given, or a batch of >= 2 structures with several devices visible."""
    return devices is not None or (not single and num_structures > 1 and jax.device_count() > 1)


def uses_neighbor_list(num_atoms: int, cell, pbc) -> bool:
    """Whether a one-device host call takes its edges from a neighbour list (periodic cells, or a
    padded size above :func:`all_pairs_max_atoms`) rather than all pairs."""
    return cell is not None or pbc is not None or bucket_size(num_atoms) > all_pairs_max_atoms()


# ----------------------------------------------------------------------------- pure all-pairs evaluation
def all_pairs_structure_energies(params, config, precision: str, positions, atomic_numbers, atom_mask, batch, num_structures):
    """Per-structure energies [B] eV of padded molecules with every pair as an edge (plain JAX,
    differentiable by autodiff). positions [N, 3] Å; atomic_numbers, atom_mask, batch [N]."""
    edges = all_pairs_edges(atom_mask, batch, positions.dtype)
    return painn.structure_energies(params, config, positions, atomic_numbers, edges, atom_mask, batch, num_structures, PRECISIONS[precision])


def batched_energy_and_forces(params, config, precision: str, implementation: str, interpret: bool, positions, atomic_numbers, atom_mask, batch,
                              num_structures: int, method: str = "analytic"):  # fmt: skip
    """(energies [B] eV, forces [N, 3] eV/Å) of padded molecules, all pairs, as a pure function.

    precision: a name of :data:`PRECISIONS`; implementation: "xla" | "pallas" | "triton" (resolved,
    see :func:`mlff_jax.implementation.choose`); the fused kernels give forces from their own
    backward whatever the method. positions [N, 3] Å; atomic_numbers, atom_mask, batch [N].
    """
    if implementation != "xla":
        return implementation_lib.all_pairs_energies_and_forces(params, config, positions, atomic_numbers, atom_mask, batch, num_structures,
                                                                implementation, interpret, precision)  # fmt: skip
    if method == "analytic":
        graph = all_pairs_graph(atom_mask, batch, positions.dtype, default_accumulation())
        return analytic.structure_energies_and_forces(params, config, positions, atomic_numbers, graph, atom_mask, batch, num_structures,
                                                      PRECISIONS[precision])  # fmt: skip

    def total(pos):
        energies = all_pairs_structure_energies(params, config, precision, pos, atomic_numbers, atom_mask, batch, num_structures)
        return jnp.sum(energies), energies

    grad, energies = jax.grad(total, has_aux=True)(positions)
    return energies, -grad


# ----------------------------------------------------------------------------- host packing
def packed_template(num_atoms: int, num_padded: int, dtype, cutoff: float) -> np.ndarray:
    """The packed input [num_padded, 5] of a host call before its atoms are written: rows
    num_atoms.. are padding atoms (far apart on a line, Z = 1, structure -1: no edges, zero
    energy); rows ..num_atoms are zeros with structure 0. A host call copies it and fills x, y, z, Z.
    """
    packed = np.zeros((num_padded, 5), dtype)
    packed[num_atoms:, 0] = 1e3 + 10.0 * cutoff * np.arange(num_padded - num_atoms)
    packed[num_atoms:, 3] = 1
    packed[num_atoms:, 4] = -1
    return packed


def pack_molecules(positions, atomic_numbers, batch, num_padded: int, dtype, cutoff: float) -> np.ndarray:
    """One array [num_padded, 5] in ``dtype`` for the host call's program: x, y, z (Å), atomic
    number, structure index (-1 for padding). positions [N, 3] (prepared, float64), atomic_numbers
    and batch [N] int. Structure indices travel as floats: exact below 2^24 in float32."""
    n = positions.shape[0]
    packed = packed_template(n, num_padded, dtype, cutoff)
    packed[:n, :3] = positions
    packed[:n, 3] = atomic_numbers
    packed[:n, 4] = batch
    return packed


# ----------------------------------------------------------------------------- host coordinates
def prepare_positions(positions, batch, num_structures: int, cell=None, pbc=None) -> np.ndarray:
    """Positions [N, 3] float64 Å of the same structures, placed where float32 differences are exact
    enough, computed in float64 before any cast to the model's dtype:

    - along periodic directions, each atom moved by whole cell vectors into the cell (fractional
      coordinate in [0, 1)): a structure translated by whole cells lands where it was;
    - along the other directions, each structure translated so that its centroid is at 0 (a
      molecule: its centroid at the origin).

    Energies, forces (atom by atom) and stress are unchanged: a translation and lattice vectors.
    positions: [N, 3] float64 (validated); batch: [N] int in 0 .. num_structures-1; cell, pbc: as
    the caller gave them (cell [3, 3] or [B, 3, 3] Å, checked here as in the periodic path).
    """
    positions = np.asarray(positions, np.float64)
    batch = np.asarray(batch, np.int64)
    pbc = cell_lib.normalize_pbc(pbc, cell)
    if not any(pbc):  # molecules (the common, latency-bound case): centroids only
        return positions - _structure_means(positions, batch, num_structures)[batch]
    # Frames [B, 3, 3]: periodic rows are the cell vectors, the others orthonormal.
    frames = cell_lib.binning_frame(cell_lib.validate_cells(cell, pbc, num_structures), pbc)
    inverses = np.linalg.inv(frames)
    shared = num_structures == 1 or np.ndim(cell) == 2  # one frame: plain matmuls, no per-atom 3x3
    fractional = positions @ inverses[0] if shared else np.einsum("ni,nij->nj", positions, inverses[batch])
    offsets = np.where(np.asarray(pbc), np.floor(fractional), _structure_means(fractional, batch, num_structures)[batch])
    return positions - (offsets @ frames[0] if shared else np.einsum("ni,nij->nj", offsets, frames[batch]))


def _structure_means(values, batch, num_structures: int) -> np.ndarray:
    """[B, 3] mean of values [N, 3] over each structure's atoms (host, float64)."""
    if num_structures == 1:
        return values.mean(axis=0, keepdims=True)
    counts = np.maximum(np.bincount(batch, minlength=num_structures), 1)
    return np.stack([np.bincount(batch, weights=values[:, k], minlength=num_structures) for k in range(3)], axis=1) / counts[:, None]
