"""The PaiNN student with edges from a neighbour list: periodic cells, stress, large systems.

Pure functions (jittable) plus the host driver behind ``PaiNNStudent.energy_and_forces(...,
cell=, pbc=)`` and ``PaiNNStudent.energy_forces_stress``. The model sees the same formulas as in
vacuum, with edge vectors R_a - R_b + S @ cell over every periodic image within the cutoff.

Stress is ASE's: sigma = (1 / V) dE/d(epsilon), the derivative of the energy under the
homogeneous strain r -> r (I + epsilon) of positions and cell, symmetrised (ASE's numerical
stress uses symmetric strains), in eV/Å^3; negative diagonal = the system pushes outwards.
It is the gradient with respect to the strain, through :func:`mlff_jax.analytic.structure_energies`
(whose custom VJP is the hand-derived sweep, shifts included) or plain autodiff (``method="autodiff"``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from mlff_jax import analytic, painn
from mlff_jax import implementation as implementation_lib
from mlff_jax.analytic_graph import fold_symmetric_edges
from mlff_jax.evaluation import precision_name
from mlff_jax.neighbors import cell as cell_lib
from mlff_jax.neighbors import neighbor_list as nl
from mlff_jax.neighbors.edges import neighbor_list_edges

# Edges are listed up to cutoff + this margin (Å) and the model applies the exact cutoff itself:
# distances computed from wrapped coordinates can differ from the model's by round-off.
LIST_MARGIN = 1e-3


# Layout of the analytic sweep on neighbour lists (XLA path), per platform, by measurement:
# - CPU: "folded" (one filter evaluation per unordered pair, scatter-adds) is faster
#   (docs/analytic-forces.md);
# - GPU: "edges" (the directed list as it is). On the H100 with pairs given, both cost the same
#   (10k water atoms, 427K: 23.1 vs 23.5 ms, forces_boxes_h100.json), but inside the model, where
#   the folding compacts the list on the device in every call, the folded path measured 99.5 ms at
#   10k atoms and 1,428 ms at 100k (throughput_h100_run1.json, throughput_folded_100k.json) against
#   56.7 and 564 ms for the directed list (throughput_layouts_h100.json), all on H100s.
PLATFORM_LAYOUT = {"cpu": "folded", "gpu": "edges", "cuda": "edges", "rocm": "edges"}
LAYOUTS = ("folded", "edges")
# Benchmarks may set this to "folded"/"edges" to override the platform's choice for new traces.
LAYOUT_OVERRIDE: str | None = None


def periodic_layout() -> str:
    """The analytic sweep's layout on neighbour lists for the default backend (PLATFORM_LAYOUT unless overridden)."""
    if LAYOUT_OVERRIDE is not None:
        if LAYOUT_OVERRIDE not in LAYOUTS:
            raise ValueError(f"periodic layout must be one of {LAYOUTS}, got {LAYOUT_OVERRIDE!r}")
        return LAYOUT_OVERRIDE
    return PLATFORM_LAYOUT.get(jax.default_backend(), "folded")


def structure_energies(params, config, precision, positions, atomic_numbers, nbrs, cells, atom_mask, num_structures, method="analytic",
                       layout=None, implementation="xla", interpret=False):  # fmt: skip
    """Per-structure energies [B] eV with edges from ``nbrs`` (cells [B, 3, 3] may be strained).

    method: "analytic" (gradients by the hand-derived sweep) or "autodiff" (plain reverse mode).
    implementation: "xla", or "pallas" | "triton" (fused message kernels on the list's slots; their
    backward gives the gradients, ``method`` is then unused; see :mod:`mlff_jax.implementation`).
    """
    if implementation != "xla":
        return implementation_lib.neighbor_list_structure_energies(params, config, positions, atomic_numbers, nbrs, cells, atom_mask, num_structures,
                                                                   implementation, interpret, precision_name(precision))  # fmt: skip
    edges = neighbor_list_edges(nbrs, cells, positions.dtype)
    if method == "analytic":
        # "folded": the list is symmetric, one filter evaluation per pair (mlff_jax.analytic_graph);
        # "edges": the directed list as it is (twice the filter work, no compaction).
        graph = fold_symmetric_edges(edges) if (layout or periodic_layout()) == "folded" else edges
        return analytic.structure_energies(params, config, positions, atomic_numbers, graph, atom_mask, nbrs.batch, num_structures, precision,
                                           analytic.auto_chunk_size(analytic.num_unique_edges(graph)))
    return painn.structure_energies(params, config, positions, atomic_numbers, edges, atom_mask, nbrs.batch, num_structures, precision)


def energy_forces_stress(params, config, precision, positions, atomic_numbers, nbrs, cells, atom_mask, num_structures, compute_stress=True,
                         method="analytic", layout=None, implementation="xla", interpret=False):
    """Energies [B] eV, forces [N, 3] eV/Å and the strain derivative dE/d(epsilon) [B, 3, 3] eV.

    The strain acts on positions and cells; the neighbour list (integer shifts) is held fixed.
    """
    dtype = positions.dtype
    eye = jnp.eye(3, dtype=dtype)

    def total(pos, strain):
        deform = eye + strain  # [B, 3, 3]
        pos = jnp.einsum("ni,nij->nj", pos, deform[nbrs.batch])
        energies = structure_energies(params, config, precision, pos, atomic_numbers, nbrs, jnp.einsum("bij,bjk->bik", cells, deform),
                                      atom_mask, num_structures, method, layout, implementation, interpret)
        return jnp.sum(energies), energies

    strain = jnp.zeros((num_structures, 3, 3), dtype)
    argnums = (0, 1) if compute_stress else 0
    grads, energies = jax.grad(total, argnums=argnums, has_aux=True)(positions, strain)
    if compute_stress:
        return energies, -grads[0], grads[1]
    return energies, -grads, None


def stress_from_strain_derivative(de_dstrain, volumes):
    """ASE's stress [..., 3, 3] eV/Å³ from dE/d(epsilon) [..., 3, 3] eV and the cell volumes [...] Å³:
    the symmetrised derivative over the volume (NumPy or JAX arrays)."""
    return 0.5 * (de_dstrain + de_dstrain.swapaxes(-1, -2)) / volumes[..., None, None]


# layout is static (a module-level jit shared by all models: the override must be part of the key).
@functools.partial(jax.jit, static_argnames=("config", "precision", "spec", "compute_stress", "method", "layout", "implementation", "interpret"))
def _evaluate(params, positions, atomic_numbers, atom_mask, batch, cells, *, config, precision, spec, compute_stress, method, layout,
              implementation="xla", interpret=False):  # fmt: skip
    nbrs = nl.build(positions, cells, batch, atom_mask, spec)
    energies, forces, dE_dstrain = energy_forces_stress(params, config, precision, positions, atomic_numbers, nbrs, cells, atom_mask,
                                                        spec.num_structures, compute_stress, method, layout, implementation, interpret)
    return energies, forces, dE_dstrain, nbrs.did_buffer_overflow


@dataclasses.dataclass
class SpecCache:
    """Neighbour-search specs of past calls, keyed by shape and grid, so programs are reused.

    Capacities only grow (after an overflow), so a system that once fitted keeps fitting.
    """

    specs: dict = dataclasses.field(default_factory=dict)

    def get(self, key):
        return self.specs.get(key)

    def put(self, key, spec):
        old = self.specs.get(key)
        if old is not None:
            spec = dataclasses.replace(spec, capacity=max(spec.capacity, old.capacity), bin_capacity=max(spec.bin_capacity, old.bin_capacity))
        self.specs[key] = spec
        return spec


def evaluate(model, precision, positions, atomic_numbers, atom_mask, batch, num_structures, cell, pbc, compute_stress, cache: SpecCache,
             method="analytic", implementation="xla"):
    """Host driver: validated, padded inputs -> (energies [B], forces [N, 3], stress [B, 3, 3] or None).

    Args:
      model: the PaiNNStudent (params, config); precision: a ``jax.lax.Precision``.
      positions: [Np, 3] float64 padded; atomic_numbers [Np]; atom_mask [Np]; batch [Np]
        (padding atoms masked); num_structures: the padded B.
      cell: None, [3, 3] or [B_real, 3, 3]; pbc: anything :func:`cell_lib.normalize_pbc` accepts.
      cache: the model's :class:`SpecCache` (neighbour capacities are bucketed and remembered).
      implementation: "xla" | "pallas" | "triton" (resolved, not "auto"); interpret mode from the model.
    """
    pbc = cell_lib.normalize_pbc(pbc, cell)
    real = int(batch[atom_mask].max()) + 1 if atom_mask.any() else 1
    cells = cell_lib.validate_cells(cell, pbc, real if cell is not None and np.ndim(cell) == 3 else None)
    if cells.shape[0] == 1:
        cells = np.repeat(cells, real, axis=0)
    if cells.shape[0] != real:
        raise ValueError(f"cell must be [3, 3] or [B, 3, 3] with B = {real} structures, got {list(np.shape(cell))}")
    volumes = np.abs(np.linalg.det(cells))
    if compute_stress and np.any(volumes <= 1e-12 * np.prod(np.linalg.norm(cells, axis=2), axis=1)):
        raise ValueError("stress needs a cell of non-zero volume (three linearly independent cell vectors)")
    # Padding structures copy the first cell: any valid cell works, and this one changes no plan.
    cells = np.concatenate([cells, np.repeat(cells[:1], num_structures - real, axis=0)])
    fns = nl.neighbor_list_fn(model.config.cutoff, skin=LIST_MARGIN, pbc=pbc)
    dtype = model.params["embedding"]["embedding"].dtype
    grid, stencil, _ = nl.plan_lib.plan_grid(positions[atom_mask], cells, batch[atom_mask], num_structures, pbc, fns.cutoff + fns.skin)
    key = (positions.shape[0], num_structures, pbc, grid, stencil, str(dtype))
    spec = cache.get(key)
    args = (jnp.asarray(positions, dtype), jnp.asarray(atomic_numbers), jnp.asarray(atom_mask), jnp.asarray(batch, jnp.int32), jnp.asarray(cells, dtype))
    for _ in range(4):
        if spec is None:
            spec = cache.put(key, fns.measure(positions, cell=cells, batch=batch, atom_mask=atom_mask, num_structures=num_structures))
        outputs = _evaluate(model.params, *args, config=model.config, precision=precision, spec=spec, compute_stress=compute_stress,
                            method=method, layout=periodic_layout(), implementation=implementation, interpret=getattr(model, "interpret", False))
        # One synchronisation for all outputs (their copies run concurrently); the rest is NumPy,
        # so no further device dispatch per call.
        energies, forces, dE_dstrain, overflow = jax.device_get(outputs)
        if not bool(overflow):
            stress = None
            if compute_stress:
                stress = stress_from_strain_derivative(dE_dstrain[:real], volumes).astype(dtype)
            return energies, forces, stress
        spec = None  # re-measure the capacities (they grow: see SpecCache.put)
    raise RuntimeError("neighbour list overflow persisted after re-allocation")  # pragma: no cover
