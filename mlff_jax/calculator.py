"""ASE calculator: ``atoms.calc = mlff_jax.MLFFCalculator("model.safetensors")``.

Energies in eV, forces in eV/Å, stress in eV/Å³ (ASE's units and Voigt order). Compiled programs
are the model's, cached by padded size bucket, so a run of many geometries of one molecule (MD,
optimisation) compiles once.
"""

from __future__ import annotations

import copy
import functools
import os
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from mlff_jax import painn
from mlff_jax.graph import all_pairs_edges
from mlff_jax.evaluation import PRECISIONS, bucket_size, prepare_positions
from mlff_jax.model import PaiNNStudent


def resolve_model(model_or_path, dtype: str = "float32", **load_kwargs) -> PaiNNStudent:
    """A :class:`PaiNNStudent` as is, or one loaded from a checkpoint path or a bundled model name."""
    if isinstance(model_or_path, PaiNNStudent):
        return model_or_path
    if not isinstance(model_or_path, (str, os.PathLike)):
        raise TypeError(f"expected a PaiNNStudent, a checkpoint path or a bundled model name, got {type(model_or_path).__name__}")
    from mlff_jax.api import load  # the package's facade (mlff_jax/__init__.py) imports this module lazily

    return load(model_or_path, dtype=dtype, **load_kwargs)


# The arrays ASE's change detection compares (``all_changes`` less cell and pbc); others, such as
# momenta, do not count as changes.
_COMPARED_ARRAYS = ("positions", "numbers", "initial_charges", "initial_magmoms")


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Identical shape, dtype and bytes (a few hundred ns for small arrays, against ~10 µs for
    ``np.array_equal``); anything else counts as different, and the caller looks closer."""
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _close(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    """``np.allclose(a, b, rtol=0, atol=tol)`` as ASE's ``compare_atoms`` applies it, identical
    bytes first (the common answer when nothing moved). A NaN counts as a change, as in ASE,
    except where the bytes are identical (the model refuses NaN positions anyway)."""
    if _same(a, b):
        return True
    return a.shape == b.shape and bool(np.abs(a - b).max() <= tol)


class _Snapshot(NamedTuple):
    """What ``Atoms.copy()`` copies (ASE 3.2x), without building the copy (~25 µs on a CPU, per
    call): the calculator compares and evaluates these arrays, and builds the Atoms only when
    someone reads ``calc.atoms``."""

    arrays: dict
    cell: np.ndarray
    pbc: np.ndarray
    info: dict
    celldisp: np.ndarray
    constraints: list

    @classmethod
    def of(cls, atoms: Atoms) -> "_Snapshot":
        constraints = copy.deepcopy(atoms.constraints) if atoms.constraints else []
        return cls({name: a.copy() for name, a in atoms.arrays.items()}, atoms.cell.array.copy(), atoms.pbc.copy(), dict(atoms.info),
                   atoms.get_celldisp(), constraints)  # fmt: skip

    def to_atoms(self) -> Atoms:
        """The Atoms that ``Atoms.copy()`` would have returned (the same steps)."""
        atoms = Atoms(cell=self.cell, pbc=self.pbc, info=self.info, celldisp=self.celldisp)
        atoms.arrays = self.arrays
        atoms.constraints = self.constraints
        return atoms

    def changes(self, atoms: Atoms, tol: float, excluded) -> list[str]:
        """ASE's ``compare_atoms(self, atoms, tol, excluded)``: the names of what differs."""
        changes = []
        if "cell" not in excluded and not _close(self.cell, atoms.cell.array, tol):
            changes.append("cell")
        if "pbc" not in excluded and not (_same(self.pbc, atoms.pbc) or np.array_equal(self.pbc, atoms.pbc)):
            changes.append("pbc")
        arrays = atoms.arrays
        for name in _COMPARED_ARRAYS:
            old, new = self.arrays.get(name), arrays.get(name)
            if (old is not None or new is not None) and name not in excluded and (old is None or new is None or not _close(old, new, tol)):
                changes.append(name)
        return changes


class MLFFCalculator(Calculator):
    """ASE calculator for a PaiNN student.

    Args:
      model: a :class:`~mlff_jax.PaiNNStudent`, a checkpoint path, or a bundled model name
        (``"default"``), loaded with ``dtype``.
      dtype: ``"float32"`` or ``"float64"`` (when loading; a model object keeps its own).
      allow_untrained_elements: evaluate elements the model was not trained on (by default a
        structure holding one raises ValueError naming the element and the model).

    Properties: ``energy``, ``free_energy`` (the same: the model has no electronic entropy),
    ``forces``, ``energies`` (per atom; they sum to ``energy``) and ``stress`` (periodic cells only).
    """

    implemented_properties = ["energy", "free_energy", "forces", "energies", "stress"]

    def __init__(self, model, dtype: str = "float32", skin: float = 0.5, allow_untrained_elements: bool = False, **kwargs):
        load_kwargs = {k: kwargs.pop(k) for k in ("precision",) if k in kwargs}
        super().__init__(**kwargs)
        self.model = resolve_model(model, dtype, **load_kwargs)
        if allow_untrained_elements and not self.model.allow_untrained_elements:
            self.model = self.model.with_untrained_elements(True)
        self.skin = float(skin)
        self._periodic = None  # PeriodicEvaluator, created on the first periodic structure

    # ------------------------------------------------------------------ ASE interface
    # ASE keeps a copy of the last calculation's atoms in ``calc.atoms``. For plain ``ase.Atoms``
    # this calculator keeps a _Snapshot of them instead and builds ``calc.atoms`` from it on demand:
    # change detection and evaluation read the snapshot's arrays.
    @property
    def atoms(self):
        if self._atoms is None and self._snapshot is not None:
            self._atoms, self._snapshot = self._snapshot.to_atoms(), None  # from now on, ASE's own logic
        return self._atoms

    @atoms.setter
    def atoms(self, atoms) -> None:
        self._atoms, self._snapshot = atoms, None

    def _remember(self, atoms) -> None:
        if type(atoms) is Atoms:
            self._atoms, self._snapshot = None, _Snapshot.of(atoms)
        else:  # a subclass may copy itself differently
            self.atoms = atoms.copy()

    def check_state(self, atoms, tol=1e-15):
        """ASE's change detection (``compare_atoms``: which of cell, pbc, positions, numbers,
        initial charges and magnetic moments differ by more than ``tol``, less
        ``ignored_changes``), against the snapshot of the last calculation when there is one."""
        if self._snapshot is None:
            return super().check_state(atoms, tol)
        return self._snapshot.changes(atoms, tol, self.ignored_changes)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        # Calculator.calculate would copy the atoms whole and stat its directory, which this
        # calculator never writes to.
        if atoms is not None:
            self._remember(atoms)
        snapshot = self._snapshot
        if snapshot is None or snapshot.pbc.any():
            atoms = self.atoms
            if atoms.pbc.any():
                if self._periodic is None:
                    from mlff_jax.calculator_periodic import PeriodicEvaluator

                    self._periodic = PeriodicEvaluator(self.model, self.skin)
                self.results.update(self._periodic(atoms, want_energies="energies" in properties))
                return
            positions, numbers = atoms.positions, atoms.numbers
        else:  # the calculator's own copies: the caller may change its atoms in place afterwards
            positions, numbers = snapshot.arrays["positions"], snapshot.arrays["numbers"]
        if "stress" in properties:
            raise PropertyNotImplementedError("stress needs a periodic cell (atoms.pbc is all False)")
        energy, forces = self.model.energy_and_forces(positions, numbers)
        self.results["energy"] = float(energy)
        self.results["free_energy"] = float(energy)
        self.results["forces"] = np.asarray(forces, np.float64)
        if "energies" in properties:
            self.results["energies"] = atomic_energies(self.model, positions, numbers)

    # ------------------------------------------------------------------ batches
    def calculate_batch(self, atoms_list: Sequence) -> list[dict]:
        """Energy and forces of many non-periodic structures in one compiled call.

        Returns one dict per structure: ``{"energy": float eV, "forces": [N_i, 3] eV/Å}``. The
        structures never interact (no edge joins two of them).
        """
        if len(atoms_list) == 0:
            return []
        if any(np.any(a.pbc) for a in atoms_list):
            raise NotImplementedError("calculate_batch supports non-periodic structures only")
        positions = np.concatenate([a.positions for a in atoms_list])
        numbers = np.concatenate([a.numbers for a in atoms_list])
        batch = np.repeat(np.arange(len(atoms_list)), [len(a) for a in atoms_list])
        energies, forces = self.model.energy_and_forces(positions, numbers, batch=batch)
        energies, forces = np.asarray(energies, np.float64), np.asarray(forces, np.float64)
        bounds = np.cumsum([0] + [len(a) for a in atoms_list])
        return [{"energy": float(energies[i]), "forces": forces[bounds[i] : bounds[i + 1]]} for i in range(len(atoms_list))]


# ---------------------------------------------------------------------- per-atom energies
@functools.partial(jax.jit, static_argnames=("config", "precision"))
def _padded_atomic_energies(params, positions, atomic_numbers, atom_mask, config, precision):
    edges = all_pairs_edges(atom_mask, jnp.zeros(atom_mask.shape[0], jnp.int32), positions.dtype)
    return painn.atomic_energies(params, config, positions, atomic_numbers, edges, atom_mask, PRECISIONS[precision])


def atomic_energies(model: PaiNNStudent, positions, atomic_numbers) -> np.ndarray:
    """Per-atom energies [N] eV of one non-periodic structure (they sum to its energy).

    Padded to the model's size buckets (one compiled program per bucket), like ``energy_and_forces``.
    """
    positions, atomic_numbers, _, _ = model._validate(positions, atomic_numbers, None)
    positions = prepare_positions(positions, np.zeros(len(positions), np.int64), 1)  # centred in float64, as energy_and_forces
    n = positions.shape[0]
    n_pad = bucket_size(n)
    dtype = jnp.dtype(model.dtype)
    pos = np.zeros((n_pad, 3), dtype)
    pos[:n] = positions
    pos[n:, 0] = 1e3 + 10.0 * model.config.cutoff * np.arange(n_pad - n)  # padding atoms: far apart, masked anyway
    z = np.ones(n_pad, np.int32)
    z[:n] = atomic_numbers
    mask = np.arange(n_pad) < n
    energies = _padded_atomic_energies(model.params, pos, z, mask, model.config, model.precision)
    return np.asarray(energies[:n], np.float64)
