"""The host call's fast path for one molecule: compiled programs reused per size bucket, the same
results as the general path, and the same clear errors for bad input."""

import jax
import numpy as np
import pytest

from mlff_jax.evaluation import bucket_size


@pytest.fixture()
def fresh_model(load_model):
    """ultra-tiny-21k in float64 with empty program caches (the session-cached model's are shared)."""
    model = load_model("ultra-tiny-21k", "float64")
    return model.with_untrained_elements(False)  # a new object: its own caches


@pytest.fixture(scope="module")
def molecules(reference):
    """Three upstream molecules: two of one size bucket and one of a larger bucket."""
    ref = reference("ultra-tiny-21k")
    by_size = {}
    for s in ref.structures:
        by_size.setdefault(len(ref[s, "Z"]), (np.asarray(ref[s, "R"], np.float64), np.asarray(ref[s, "Z"], np.int64)))
    sizes = sorted(n for n in by_size if n >= 4)  # room for the bad atoms the tests plant
    for a in sizes:
        same = [b for b in sizes if b != a and bucket_size(b) == bucket_size(a)]
        larger = [b for b in sizes if bucket_size(b) > bucket_size(a)]
        if same and larger:
            return by_size[a], by_size[same[0]], by_size[larger[0]]
    raise AssertionError("the reference set has no two molecules sharing a bucket")


def test_molecules_of_one_bucket_share_one_compiled_program(fresh_model, molecules):
    (r1, z1), (r2, z2), _ = molecules
    fresh_model.energy_and_forces(r1, z1)
    fresh_model.energy_and_forces(r2, z2)
    assert list(fresh_model._executables) == [(bucket_size(len(z1)), 1, "analytic")]
    program_1 = fresh_model._molecule_plans[(len(z1), "analytic")][0]
    program_2 = fresh_model._molecule_plans[(len(z2), "analytic")][0]
    assert program_1 is program_2


def test_a_new_bucket_compiles_once_and_is_reused(fresh_model, molecules, monkeypatch):
    (r1, z1), _, (r3, z3) = molecules
    fresh_model.energy_and_forces(r1, z1)
    compiled_before = dict(fresh_model._executables)
    lowerings = []

    class CountingJit:  # the model compiles through self._jitted.lower(...).compile()
        def __init__(self, jitted):
            self.jitted = jitted

        def lower(self, *args, **kwargs):
            lowerings.append(kwargs)
            return self.jitted.lower(*args, **kwargs)

    monkeypatch.setattr(fresh_model, "_jitted", CountingJit(fresh_model._jitted))
    for step in range(3):
        fresh_model.energy_and_forces(r3 + 0.01 * step, z3)
        fresh_model.energy_and_forces(r1 + 0.01 * step, z1)
    assert lowerings == [{"num_structures": 1, "method": "analytic"}]
    new = {k: v for k, v in fresh_model._executables.items() if k not in compiled_before}
    assert list(new) == [(bucket_size(len(z3)), 1, "analytic")]
    assert all(fresh_model._executables[k] is v for k, v in compiled_before.items())
    assert fresh_model._molecule_plans[(len(z3), "analytic")][0] is new[(bucket_size(len(z3)), 1, "analytic")]


@pytest.mark.parametrize("method", ["analytic", "autodiff"])
def test_fast_path_gives_the_general_paths_results_bit_for_bit(fresh_model, molecules, method):
    (r1, z1), _, _ = molecules
    far = r1 + np.array([1e4, -3e3, 7.0])  # the float64 centring must happen on both paths
    fast = fresh_model.energy_and_forces(far, z1, method=method)
    assert (len(z1), method) in fresh_model._molecule_plans
    general = fresh_model.energy_and_forces(far.tolist(), z1.tolist(), method=method)  # lists: the general path
    batched = fresh_model.energy_and_forces(far, z1, batch=np.zeros(len(z1), int), method=method)
    assert np.shape(fast[0]) == () and fast[1].shape == (len(z1), 3)
    assert fast[0] == general[0] == batched[0][0]
    assert np.array_equal(fast[1], general[1]) and np.array_equal(fast[1], batched[1])


def test_fast_path_in_float32_casts_the_float64_centred_coordinates_as_the_general_path(load_model, molecules):
    model = load_model("ultra-tiny-21k", "float32").with_untrained_elements(False)
    (r1, z1), _, _ = molecules
    far = r1 + np.array([3e5, 0.0, -2e4])  # float32 could not hold these coordinates to 0.01 Å
    fast = model.energy_and_forces(far, z1)
    general = model.energy_and_forces(far.tolist(), z1.tolist())
    assert fast[1].dtype == np.float32 and fast[0] == general[0] and np.array_equal(fast[1], general[1])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r, z: (r, np.where(np.arange(len(z)) == 1, 0, z)), r"unknown element: atomic number\(s\) \[0\]"),
        (lambda r, z: (r, np.where(np.arange(len(z)) == 1, -3, z)), r"unknown element: atomic number\(s\) \[-3\]"),
        (lambda r, z: (r, np.where(np.arange(len(z)) == 1, 101, z)), r"unknown element: atomic number\(s\) \[101\] outside 1..100"),
        (lambda r, z: (r, np.where(np.arange(len(z)) == 1, 5, z)), r"untrained element: B \(Z=5\)"),
        (lambda r, z: (np.where(np.arange(len(z))[:, None] == 1, np.nan, r), z), r"NaN or inf \(atoms \[1\]\)"),
        (lambda r, z: (np.where(np.arange(len(z))[:, None] == 2, -np.inf, r), z), r"NaN or inf \(atoms \[2\]\)"),
        (lambda r, z: (r, z[:-1]), r"atomic_numbers must have shape \[N\]"),
        (lambda r, z: (r[:, :2].copy(), z), r"positions must have shape \[N, 3\]"),
        (lambda r, z: (r, z + 0.5), "atomic_numbers must be integers"),
        (lambda r, z: (np.asarray(1.0), z), r"positions must have shape \[N, 3\] with N >= 1, got \[\]"),
        (lambda r, z: (r.reshape(-1), z), r"positions must have shape \[N, 3\]"),
    ],
)
def test_bad_input_after_a_good_call_of_its_size_still_raises_the_clear_error(fresh_model, molecules, change, message):
    (r1, z1), _, _ = molecules
    fresh_model.energy_and_forces(r1, z1)  # the plan for this size now exists: bad input must not slip through it
    positions, numbers = change(r1, z1)
    with pytest.raises(ValueError, match=message):
        fresh_model.energy_and_forces(positions, numbers)


def test_an_unknown_method_is_refused_by_name(fresh_model, molecules):
    (r1, z1), _, _ = molecules
    fresh_model.energy_and_forces(r1, z1)
    for method in ("numerical", ["analytic"]):
        with pytest.raises(ValueError, match="method must be one of"):
            fresh_model.energy_and_forces(r1, z1, method=method)


def test_untrained_elements_are_evaluated_when_allowed(fresh_model, molecules):
    (r1, z1), _, _ = molecules
    z = z1.copy()
    z[0] = 5  # boron: outside the trained set
    energy, forces = fresh_model.with_untrained_elements(True).energy_and_forces(r1, z)
    assert np.isfinite(energy) and np.all(np.isfinite(forces))


def test_clear_caches_drops_the_compiled_host_programs(fresh_model, molecules):
    (r1, z1), _, _ = molecules
    e_before, _ = fresh_model.energy_and_forces(r1, z1)
    assert fresh_model._executables and fresh_model._molecule_plans
    jax.clear_caches()
    assert not fresh_model._executables and not fresh_model._molecule_plans
    e_after, _ = fresh_model.energy_and_forces(r1, z1)
    assert e_after == e_before


# ---------------------------------------------------------------------- the ASE calculator on top
def _calculator_atoms(model, molecules):
    from ase import Atoms

    from mlff_jax import MLFFCalculator

    (r1, z1), _, _ = molecules
    atoms = Atoms(numbers=z1, positions=r1)
    atoms.calc = MLFFCalculator(model)
    return atoms


def test_calculator_gives_the_host_calls_results(fresh_model, molecules):
    atoms = _calculator_atoms(fresh_model, molecules)
    energy, forces = fresh_model.energy_and_forces(atoms.positions, atoms.numbers)
    assert atoms.get_potential_energy() == float(energy)
    assert np.array_equal(atoms.get_forces(), np.asarray(forces, np.float64))


@pytest.mark.parametrize(
    "change",
    ["none", "positions", "tiny_move", "numbers", "cell", "pbc", "magmoms"],
)
def test_calculator_detects_changes_as_ase_does(fresh_model, molecules, change):
    from ase.calculators.calculator import compare_atoms

    atoms = _calculator_atoms(fresh_model, molecules)
    atoms.get_forces()
    edits = {
        "none": lambda a: None,
        "positions": lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 1e-9),
        "tiny_move": lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 1e-17),
        "numbers": lambda a: a.numbers.__setitem__(0, 1 if a.numbers[0] != 1 else 6),
        "cell": lambda a: a.set_cell(np.eye(3) * 20.0),
        "pbc": lambda a: a.set_pbc([True, False, False]),
        "magmoms": lambda a: a.set_initial_magnetic_moments(np.ones(len(a))),
    }
    edits[change](atoms)
    expected = compare_atoms(atoms.calc.atoms, atoms, tol=1e-15)
    assert sorted(atoms.calc.check_state(atoms)) == sorted(expected)
    assert (expected == []) == (change in ("none", "tiny_move"))


def test_calculator_recomputes_only_when_the_atoms_change(fresh_model, molecules, monkeypatch):
    atoms = _calculator_atoms(fresh_model, molecules)
    calls = []
    host_call = fresh_model.energy_and_forces
    monkeypatch.setattr(fresh_model, "energy_and_forces", lambda *a, **k: calls.append(1) or host_call(*a, **k))
    first = atoms.get_forces()
    atoms.get_potential_energy()
    atoms.get_forces()
    assert len(calls) == 1
    atoms.positions = atoms.positions + 0.01
    moved = atoms.get_forces()
    assert len(calls) == 2 and not np.array_equal(moved, first)
    assert np.array_equal(atoms.calc.atoms.positions, atoms.positions) and atoms.calc.atoms is not atoms


def test_direct_calculate_call_keeps_a_copy_of_the_atoms(fresh_model, molecules):
    atoms = _calculator_atoms(fresh_model, molecules)
    other = atoms.copy()
    other.positions += 0.05
    atoms.calc.calculate(other, ["energy", "forces"])
    assert atoms.calc.atoms is not other and np.array_equal(atoms.calc.atoms.positions, other.positions)
    energy, _ = fresh_model.energy_and_forces(other.positions, other.numbers)
    assert atoms.calc.results["energy"] == float(energy)
