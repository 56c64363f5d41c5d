"""Periodic cells for the ASE calculator: energy, forces, stress and per-atom energies with a
neighbour list that is kept between calls (an MD run rebuilds it only when an atom has moved more
than half the skin)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from ase.stress import full_3x3_to_voigt_6_stress

from mlff_jax import painn, periodic
from mlff_jax.evaluation import PRECISIONS


def _neighbors_module():
    try:
        from mlff_jax import neighbors
    except ImportError as error:  # pragma: no cover - until the neighbour module is installed
        raise NotImplementedError("periodic cells need mlff_jax.neighbors, which this installation lacks") from error
    return neighbors


@functools.partial(jax.jit, static_argnames=("config", "precision"))
def _energy_forces_stress(params, positions, atomic_numbers, cell, nbrs, config, precision):
    """(energy eV, per-atom energies [N] eV, forces [N, 3] eV/Å, stress [3, 3] eV/Å³) of one cell.

    The stress is (1/V) dE/dε for a symmetric strain ε applied to positions and cell alike.
    """
    from mlff_jax.neighbors import neighbor_list_edges

    def energy(r, strain):
        deform = jnp.eye(3, dtype=r.dtype) + 0.5 * (strain + strain.T)
        cells = (cell @ deform)[None]
        edges = neighbor_list_edges(nbrs, cells, r.dtype)
        per_atom = painn.atomic_energies(params, config, r @ deform, atomic_numbers, edges, nbrs.atom_mask, PRECISIONS[precision])
        return jnp.sum(per_atom), per_atom

    (total, per_atom), (grad_r, grad_strain) = jax.value_and_grad(energy, argnums=(0, 1), has_aux=True)(positions, jnp.zeros((3, 3), positions.dtype))
    volume = jnp.abs(jnp.linalg.det(cell))
    return total, per_atom, -grad_r, grad_strain / volume


@functools.partial(jax.jit, static_argnames=("config", "precision", "implementation", "interpret", "layout"))
def _routed_energy_forces_stress(params, positions, atomic_numbers, cell, nbrs, config, precision, implementation, interpret, layout):
    """(energy eV, forces [N, 3] eV/Å, stress [3, 3] eV/Å³) through the model's own path: the
    analytic sweep or the fused kernels (``implementation``), as ``model.energy_forces_stress``."""
    energies, forces, de_dstrain = periodic.energy_forces_stress(params, config, PRECISIONS[precision], positions, atomic_numbers, nbrs,
                                                                 cell[None], nbrs.atom_mask, 1, True, "analytic", layout, implementation,
                                                                 interpret)  # fmt: skip
    return energies[0], forces, periodic.stress_from_strain_derivative(de_dstrain[0], jnp.abs(jnp.linalg.det(cell)))


class PeriodicEvaluator:
    """Keeps one neighbour list (skin in Å) for a sequence of periodic structures; reallocates when
    the atoms, the cell or the periodic directions change, or when the list overflows."""

    def __init__(self, model, skin: float = 0.5):
        self.model, self.skin = model, skin
        self._key = None
        self._neighbor_fn = None
        self._nbrs = None
        self.allocations = 0  # how many times a list was built from scratch (tests, diagnostics)

    def _list_for(self, atoms, positions):
        neighbors = _neighbors_module()
        cell = np.asarray(atoms.cell.array, np.float64)
        key = (len(atoms), atoms.numbers.tobytes(), tuple(bool(p) for p in atoms.pbc), cell.tobytes())
        if key == self._key:
            nbrs = self._neighbor_fn.update(positions, self._nbrs)
            if not bool(nbrs.did_buffer_overflow):
                return nbrs
        else:
            self._neighbor_fn = neighbors.neighbor_list_fn(self.model.config.cutoff, skin=self.skin, cell=cell, pbc=tuple(bool(p) for p in atoms.pbc))
            self._key = key
        self.allocations += 1
        return self._neighbor_fn.allocate(positions)

    def __call__(self, atoms, want_energies: bool = False) -> dict:
        positions_np, numbers, _, _ = self.model._validate(atoms.positions, atoms.numbers, None)
        dtype = jnp.dtype(self.model.dtype)
        positions = jnp.asarray(positions_np, dtype)
        self._nbrs = self._list_for(atoms, positions)
        if np.any(atoms.pbc) and abs(np.linalg.det(atoms.cell.array)) < 1e-12:
            raise ValueError("a periodic structure needs a cell with non-zero volume")
        cell = jnp.asarray(atoms.cell.array, dtype)
        z = jnp.asarray(numbers, jnp.int32)
        if want_energies:  # per-atom energies: the plain forward pass, autodiff forces
            total, per_atom, forces, stress = _energy_forces_stress(self.model.params, positions, z, cell, self._nbrs, self.model.config, self.model.precision)
        else:  # the model's path: analytic sweep or kernels, as chosen for this size
            total, forces, stress = _routed_energy_forces_stress(self.model.params, positions, z, cell, self._nbrs, self.model.config,
                                                                 self.model.precision, self.model.message_implementation(len(atoms)),
                                                                 self.model.interpret, periodic.periodic_layout())  # fmt: skip
        results = {
            "energy": float(total),
            "free_energy": float(total),
            "forces": np.asarray(forces, np.float64),
            "stress": full_3x3_to_voigt_6_stress(np.asarray(stress, np.float64)),
        }
        if want_energies:
            results["energies"] = np.asarray(per_atom, np.float64)
        return results
