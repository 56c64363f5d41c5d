"""MLFFCalculator's change detection: what ASE's ``compare_atoms`` says, on the calculator's own
copy of the last atoms (built on demand), so that a result is recomputed exactly when the atoms
change, whoever changes them and however."""

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import compare_atoms
from ase.constraints import FixAtoms

from mlff_jax import MLFFCalculator


@pytest.fixture()
def model(load_model):
    """ultra-tiny-21k in float64 with empty program caches (the session-cached model's are shared)."""
    return load_model("ultra-tiny-21k", "float64").with_untrained_elements(False)


@pytest.fixture(scope="module")
def molecule(reference):
    ref = reference("ultra-tiny-21k")
    return np.asarray(ref["000_CH3CHO", "R"], np.float64), np.asarray(ref["000_CH3CHO", "Z"], np.int64)


def _atoms(model, molecule, **arrays):
    positions, numbers = molecule
    atoms = Atoms(numbers=numbers, positions=positions, **arrays)
    atoms.calc = MLFFCalculator(model)
    return atoms


def test_calculator_gives_the_host_calls_results(model, molecule):
    atoms = _atoms(model, molecule)
    energy, forces = model.energy_and_forces(atoms.positions, atoms.numbers)
    assert atoms.get_potential_energy() == float(energy)
    assert np.array_equal(atoms.get_forces(), np.asarray(forces, np.float64))


EDITS = {
    "none": lambda a: None,
    "positions": lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 1e-9),
    "tiny_move": lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 1e-17),
    "numbers": lambda a: a.numbers.__setitem__(0, 1 if a.numbers[0] != 1 else 6),
    "cell": lambda a: a.set_cell(np.eye(3) * 20.0),
    "pbc": lambda a: a.set_pbc([True, False, False]),
    "magmoms_added": lambda a: a.set_initial_magnetic_moments(np.ones(len(a))),
    "charges_changed": lambda a: a.set_initial_charges(np.arange(len(a)) * 0.1),
    "momenta_only": lambda a: a.set_momenta(np.ones((len(a), 3))),
    "tags_only": lambda a: a.set_tags(np.arange(len(a))),
    "positions_replaced": lambda a: a.set_positions(a.positions + 0.01),
}


@pytest.mark.parametrize("change", sorted(EDITS))
@pytest.mark.parametrize("carries", ["plain", "momenta_and_charges"])
def test_calculator_detects_changes_as_ase_does(model, molecule, change, carries):
    extra = {} if carries == "plain" else dict(momenta=np.zeros((len(molecule[1]), 3)), charges=np.zeros(len(molecule[1])))
    atoms = _atoms(model, molecule, **extra)
    atoms.get_forces()
    reference = atoms.calc.atoms.copy()  # ASE's own view of the last calculation's atoms, built on demand
    atoms.get_forces()  # ... after which the calculator snapshots again
    EDITS[change](atoms)
    expected = compare_atoms(reference, atoms, tol=1e-15)
    assert sorted(atoms.calc.check_state(atoms)) == sorted(expected)
    assert (expected == []) == (change in ("none", "tiny_move", "momenta_only", "tags_only"))


def test_ignored_changes_are_ignored_as_ase_does(model, molecule):
    atoms = _atoms(model, molecule)
    atoms.calc.ignored_changes = {"initial_magmoms", "cell"}
    atoms.get_forces()
    atoms.set_initial_magnetic_moments(np.ones(len(atoms)))
    atoms.set_cell(np.eye(3) * 15.0)
    assert atoms.calc.check_state(atoms) == []
    atoms.positions[1, 2] += 1e-6
    assert atoms.calc.check_state(atoms) == ["positions"]


def test_calculator_recomputes_only_when_the_atoms_change(model, molecule, monkeypatch):
    atoms = _atoms(model, molecule)
    calls = []
    host_call = model.energy_and_forces
    monkeypatch.setattr(model, "energy_and_forces", lambda *a, **k: calls.append(1) or host_call(*a, **k))
    first = atoms.get_forces()
    atoms.get_potential_energy()
    atoms.get_forces()
    assert len(calls) == 1
    atoms.positions += 0.01  # in place, the array the calculator saw
    moved = atoms.get_forces()
    assert len(calls) == 2 and not np.array_equal(moved, first)
    assert np.array_equal(atoms.calc.atoms.positions, atoms.positions) and atoms.calc.atoms is not atoms


def test_calculators_copy_of_the_atoms_is_what_atoms_copy_gives(model, molecule):
    positions, numbers = molecule
    atoms = _atoms(model, molecule, momenta=np.ones((len(numbers), 3)), tags=np.arange(len(numbers)), info={"name": "acetaldehyde"})
    atoms.set_constraint(FixAtoms(indices=[0, 2]))
    atoms.get_forces()
    kept, expected = atoms.calc.atoms, atoms.copy()
    atoms.positions += 1.0  # the user's atoms move on; the calculator's copy does not
    atoms.info["name"] = "changed"
    assert type(kept) is Atoms and kept is not atoms
    assert kept == expected  # positions, numbers, cell, pbc
    assert kept.arrays.keys() == expected.arrays.keys() and all(np.array_equal(kept.arrays[k], expected.arrays[k]) for k in kept.arrays)
    assert kept.info == {"name": "acetaldehyde"} and np.array_equal(kept.get_celldisp(), expected.get_celldisp())
    assert [c.todict() for c in kept.constraints] == [c.todict() for c in expected.constraints]
    assert kept.constraints[0] is not atoms.constraints[0]


def test_fixed_atoms_get_zero_forces_and_moved_ones_are_recomputed(model, molecule):
    atoms = _atoms(model, molecule)
    atoms.set_constraint(FixAtoms(indices=[1]))
    forces = atoms.get_forces()
    assert np.array_equal(forces[1], np.zeros(3)) and np.any(forces[0] != 0)
    atoms.positions[3] += 0.02
    _, raw = model.energy_and_forces(atoms.positions, atoms.numbers)
    np.testing.assert_array_equal(atoms.get_forces(apply_constraint=False), np.asarray(raw, np.float64))


def test_after_reading_calc_atoms_changes_are_still_detected(model, molecule):
    atoms = _atoms(model, molecule)
    atoms.get_forces()
    assert atoms.calc.atoms is atoms.calc.atoms  # built once
    atoms.calc.atoms.positions[0, 0] += 0.5  # ASE lets one edit the calculator's copy: it is then compared
    assert atoms.calc.check_state(atoms) == ["positions"]
    atoms.positions[0, 0] += 0.5
    assert atoms.calc.check_state(atoms) == []


def test_atoms_subclass_is_copied_by_its_own_copy(model, molecule):
    class Tagged(Atoms):
        copies = 0

        def copy(self):
            Tagged.copies += 1
            return super().copy()

    positions, numbers = molecule
    atoms = Tagged(numbers=numbers, positions=positions)
    atoms.calc = MLFFCalculator(model)
    atoms.get_forces()
    assert Tagged.copies == 1 and type(atoms.calc.atoms) is Tagged
    atoms.positions += 0.01
    assert atoms.calc.check_state(atoms) == ["positions"]


def test_direct_calculate_call_keeps_a_copy_of_the_atoms(model, molecule):
    atoms = _atoms(model, molecule)
    other = atoms.copy()
    other.positions += 0.05
    evaluated = other.positions.copy()
    atoms.calc.calculate(other, ["energy", "forces"])
    other.positions += 1.0  # after the call: the calculator's copy keeps the positions it evaluated
    assert atoms.calc.atoms is not other and np.array_equal(atoms.calc.atoms.positions, evaluated)
    energy, _ = model.energy_and_forces(evaluated, other.numbers)
    assert atoms.calc.results["energy"] == float(energy)


def test_ase_velocity_verlet_gets_the_host_calls_forces_at_every_step(model, molecule):
    """ASE's MD writes positions in place and carries momenta: every step's forces are those of
    the current positions, never a previous step's."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = _atoms(model, molecule)
    atoms.set_velocities(np.random.default_rng(0).normal(scale=0.02, size=(len(atoms), 3)))  # a gentle start
    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    previous = None
    for _ in range(4):
        dynamics.run(1)
        _, expected = model.energy_and_forces(atoms.positions.copy(), atoms.numbers)
        forces = atoms.get_forces()
        np.testing.assert_array_equal(forces, np.asarray(expected, np.float64))
        assert previous is None or not np.array_equal(forces, previous)
        previous = forces
