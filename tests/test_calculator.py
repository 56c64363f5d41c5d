"""The ASE calculator equals the model, works with ASE's optimisers, and evaluates batches."""

import inspect

import numpy as np
import pytest
from ase.calculators.calculator import PropertyNotImplementedError

import tolerances as tol
from conftest import upstream_path
from mlff_jax import MLFFCalculator
from mlff_jax.data import example


@pytest.mark.parametrize("name", ["ethanol", "water10"])
def test_calculator_equals_model_energy_and_forces(name, load_model):
    model = load_model("tiny-77k", "float64")
    atoms = example(name)
    atoms.calc = MLFFCalculator(model)
    energy, forces = model.energy_and_forces(atoms.positions, atoms.numbers)
    assert abs(atoms.get_potential_energy() - float(energy)) <= tol.ROUNDOFF_F64
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()
    np.testing.assert_allclose(atoms.get_forces(), np.asarray(forces), rtol=0, atol=tol.ROUNDOFF_F64)


def test_per_atom_energies_sum_to_the_energy(load_model):
    atoms = example("water10")
    atoms.calc = MLFFCalculator(load_model("tiny-77k", "float64"))
    energies = atoms.get_potential_energies()
    assert energies.shape == (len(atoms),)
    assert abs(energies.sum() - atoms.get_potential_energy()) <= tol.ROUNDOFF_F64
    # oxygens and hydrogens differ: these are not just E / N
    assert np.ptp(energies) > 0.1


def test_calculator_loads_a_checkpoint_path_in_the_requested_dtype(load_model):
    path = upstream_path("checkpoints", "ultra-tiny-21k.model.pt")
    calc = MLFFCalculator(str(path), dtype="float64")
    assert calc.model.dtype == "float64"
    atoms = example("ethanol")
    atoms.calc = calc
    energy, _ = load_model("ultra-tiny-21k", "float64").energy_and_forces(atoms.positions, atoms.numbers)
    assert abs(atoms.get_potential_energy() - float(energy)) <= tol.ROUNDOFF_F64


def test_calculator_recomputes_only_when_atoms_change(load_model):
    atoms = example("ethanol")
    atoms.calc = MLFFCalculator(load_model("tiny-77k", "float64"))
    first = atoms.get_potential_energy()
    atoms.positions[0, 0] += 0.05
    assert atoms.get_potential_energy() != first


def test_calculate_batch_equals_one_structure_at_a_time(load_model):
    calc = MLFFCalculator(load_model("tiny-77k", "float64"))
    molecules = [example("ethanol"), example("water10"), example("benzene")]
    results = calc.calculate_batch(molecules)
    for atoms, result in zip(molecules, results):
        atoms.calc = calc
        assert abs(result["energy"] - atoms.get_potential_energy()) <= tol.ROUNDOFF_F64
        np.testing.assert_allclose(result["forces"], atoms.get_forces(), rtol=0, atol=tol.ROUNDOFF_F64)
    assert calc.calculate_batch([]) == []


def test_bfgs_converges_on_ethanol(load_model):
    from ase.optimize import BFGS

    atoms = example("ethanol")
    atoms.calc = MLFFCalculator(load_model("student-427k", "float64"))
    start = atoms.get_potential_energy()
    assert BFGS(atoms, logfile=None).run(fmax=0.01, steps=200)
    assert np.abs(atoms.get_forces()).max() < 0.01
    assert atoms.get_potential_energy() < start


def _has_periodic_model_support(model) -> bool:
    return "cell" in inspect.signature(model.energy_and_forces).parameters


def test_stress_of_a_molecule_is_not_defined(load_model):
    atoms = example("ethanol")
    atoms.calc = MLFFCalculator(load_model("ultra-tiny-21k", "float64"))
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        atoms.get_stress()


def _periodic_water(model):
    if not _has_periodic_model_support(model):
        pytest.skip("periodic support (energy_and_forces(..., cell=, pbc=)) has not landed yet")
    atoms = example("water10")
    atoms.cell = np.diag([9.0, 9.5, 10.0])
    atoms.pbc = True
    return atoms


def test_stress_equals_ase_numerical_stress(load_model):
    from ase.calculators.fd import calculate_numerical_stress

    model = load_model("ultra-tiny-21k", "float64")
    atoms = _periodic_water(model)
    atoms.calc = MLFFCalculator(model)
    stress = atoms.get_stress()
    assert np.abs(stress).max() > 1e-3  # not trivially zero
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=1e-5), rtol=0, atol=tol.FINITE_DIFFERENCE_FORCES)


def test_periodic_calculator_equals_the_model_and_its_energies_sum(load_model):
    model = load_model("ultra-tiny-21k", "float64")
    atoms = _periodic_water(model)
    atoms.calc = MLFFCalculator(model)
    energy, forces = model.energy_and_forces(atoms.positions, atoms.numbers, cell=atoms.cell.array, pbc=atoms.pbc)
    assert abs(atoms.get_potential_energy() - float(energy)) <= tol.ROUNDOFF_F64
    np.testing.assert_allclose(atoms.get_forces(), forces, rtol=0, atol=tol.ROUNDOFF_F64)
    assert abs(atoms.get_potential_energies().sum() - float(energy)) <= tol.ROUNDOFF_F64
    free = example("water10")
    free.calc = MLFFCalculator(model)
    assert abs(free.get_potential_energy() - float(energy)) > 1e-3  # the images matter


def test_periodic_md_keeps_one_neighbour_list_and_stays_exact(load_model):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    model = load_model("ultra-tiny-21k", "float64")
    atoms = _periodic_water(model)
    atoms.calc = calc = MLFFCalculator(model, skin=1.0)
    atoms.set_velocities(np.random.default_rng(0).normal(scale=0.01, size=(len(atoms), 3)))
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    for _ in range(10):
        dyn.run(1)
        energy, forces = model.energy_and_forces(atoms.positions, atoms.numbers, cell=atoms.cell.array, pbc=atoms.pbc)
        assert abs(atoms.get_potential_energy() - float(energy)) <= tol.ROUNDOFF_F64
        np.testing.assert_allclose(atoms.get_forces(), forces, rtol=0, atol=tol.ROUNDOFF_F64)
    assert calc._periodic.allocations == 1


def test_periodic_calculator_runs_the_models_message_implementation(load_model, monkeypatch):
    """Energy, forces and stress of a periodic cell go through the model's chosen implementation
    (here the Pallas kernels in interpret mode) and equal the model's own host call."""
    from mlff_jax import implementation as implementation_lib

    model = load_model("ultra-tiny-21k", "float64").with_implementation("pallas", interpret=True)
    calls = []
    original = implementation_lib.neighbor_list_structure_energies
    monkeypatch.setattr(implementation_lib, "neighbor_list_structure_energies", lambda *a, **k: calls.append(1) or original(*a, **k))
    atoms = _periodic_water(model)
    atoms.calc = MLFFCalculator(model)
    energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)
    assert calls, "the calculator did not run the kernels"
    expected = load_model("ultra-tiny-21k", "float64").energy_forces_stress(atoms.positions, atoms.numbers, cell=atoms.cell.array, pbc=atoms.pbc)
    assert abs(energy - float(expected[0])) <= tol.ROUNDOFF_F64
    np.testing.assert_allclose(forces, expected[1], rtol=0, atol=tol.ROUNDOFF_F64)
    np.testing.assert_allclose(stress, expected[2], rtol=0, atol=tol.ROUNDOFF_F64)
