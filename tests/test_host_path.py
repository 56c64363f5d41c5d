"""The host call's fast path for one molecule: compiled programs reused per size bucket, the same
results as the general path, and the same clear errors for bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tolerances as tol
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
        (lambda r, z: (r, z.reshape(-1, 1)), r"atomic_numbers must have shape \[N\]"),
        (lambda r, z: (r, z.astype(np.uint8) * 0), r"unknown element: atomic number\(s\) \[0\]"),
        (lambda r, z: (r, np.frombuffer(z.astype("<i8").tobytes(), ">i8")), r"unknown element"),  # the cached bytes, other values
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


def test_bad_periodic_input_after_a_good_molecule_call_still_raises_the_clear_error(fresh_model, molecules):
    (r1, z1), _, _ = molecules
    fresh_model.energy_and_forces(r1, z1)
    cases = [
        (dict(cell=np.eye(2)), r"cell must have shape \[3, 3\]"),
        (dict(pbc=True), r"has periodic directions but no cell"),
        (dict(cell=np.diag([10.0, 10.0, 0.0]), pbc=True), r"cell vector 2 is zero but direction 2 is periodic"),
        (dict(cell=[[10.0, 0, 0], [20.0, 0, 0], [0, 0, 10.0]], pbc=True), r"singular"),
        (dict(cell=np.full((3, 3), np.nan)), "cell contains NaN or inf"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            fresh_model.energy_and_forces(r1, z1, **kwargs)


# ---------------------------------------------------------------------- never a stale result
def test_arrays_changed_in_place_between_calls_give_the_new_results(fresh_model, molecules):
    (r1, z1), _, _ = molecules
    positions, numbers = r1.copy(), z1.copy()
    fresh_model.energy_and_forces(positions, numbers)
    positions[0] += 0.05
    hydrogen, heavy = np.flatnonzero(numbers == 1)[0], np.flatnonzero(numbers != 1)[0]
    numbers[[hydrogen, heavy]] = numbers[[heavy, hydrogen]]  # two atoms swap elements, same array object
    moved = fresh_model.energy_and_forces(positions, numbers)
    general = fresh_model.energy_and_forces(positions.tolist(), numbers.tolist())
    assert moved[0] == general[0] and np.array_equal(moved[1], general[1])
    numbers[0] = 5  # an untrained element written into the array the cached plan checked
    with pytest.raises(ValueError, match=r"untrained element: B \(Z=5\)"):
        fresh_model.energy_and_forces(positions, numbers)


def test_results_of_a_call_do_not_change_with_later_calls(fresh_model, molecules):
    (r1, z1), _, _ = molecules
    energy, forces = fresh_model.energy_and_forces(r1, z1)
    kept = forces.copy()
    for step in range(3):
        fresh_model.energy_and_forces(r1 + 0.02 * (step + 1), z1)
    assert np.array_equal(forces, kept) and energy == fresh_model.energy_and_forces(r1, z1)[0]


@pytest.mark.parametrize("layout", ["int32", "int8", "big_endian", "fortran_positions", "strided_positions"])
def test_other_integer_dtypes_and_memory_layouts_give_the_same_results(fresh_model, molecules, layout):
    (r1, z1), _, _ = molecules
    reference = fresh_model.energy_and_forces(r1, z1)
    positions, numbers = r1, z1
    if layout in ("int32", "int8"):
        numbers = z1.astype(layout)
    elif layout == "big_endian":
        numbers = z1.astype(">i8")
    elif layout == "fortran_positions":
        positions = np.asfortranarray(r1)
    else:
        positions = np.repeat(r1, 2, axis=0)[::2]
    result = fresh_model.energy_and_forces(positions, numbers)
    assert result[0] == reference[0] and np.array_equal(result[1], reference[1])


@pytest.mark.slow  # one of the heaviest default tests (5-20 s on 2 cores); CI runs it with the slow ones
def test_padding_atoms_contribute_nothing_to_the_host_calls_energy_and_forces(fresh_model, molecules):
    """The host call pads to its bucket (padding atoms far apart, masked); the traced energy of the
    unpadded molecule is the reference."""
    assert any(bucket_size(len(z)) > len(z) for _, z in molecules)  # padding there is
    for r, z in molecules:
        energy, forces = fresh_model.energy_and_forces(r, z)
        centred = r - r.mean(axis=0)
        e_ref, grad = jax.value_and_grad(fresh_model.energy_fn)(jnp.asarray(centred), jnp.asarray(z))
        assert abs(float(energy) - float(e_ref)) <= tol.ROUNDOFF_F64
        np.testing.assert_allclose(forces, -np.asarray(grad), rtol=0, atol=tol.ROUNDOFF_F64)


def test_new_parameter_values_are_used_by_the_compiled_program(fresh_model, molecules):
    (r1, z1), _, _ = molecules
    before = fresh_model.energy_and_forces(r1, z1)
    scaled = jax.tree_util.tree_map(lambda x: x * 1.01, fresh_model.params)
    fresh_model.params = scaled
    after = fresh_model.energy_and_forces(r1, z1)
    expected = fresh_model._same_model(scaled).energy_and_forces(r1, z1)
    assert after[0] != before[0]
    assert after[0] == expected[0] and np.array_equal(after[1], expected[1])


def test_parameters_of_another_layout_get_a_program_compiled_for_them(fresh_model, molecules):
    """Compressed tables have another pytree than the exact filter networks: the cached program
    cannot take them, and the call compiles one that does (as jit would have traced anew)."""
    (r1, z1), _, (r3, z3) = molecules
    fresh_model.energy_and_forces(r1, z1)
    fresh_model.energy_and_forces(r3, z3, batch=np.zeros(len(z3), int))
    compressed = fresh_model.compress()
    fresh_model.params = compressed.params
    for call in (lambda m: m.energy_and_forces(r1, z1), lambda m: m.energy_and_forces(r3, z3, batch=np.zeros(len(z3), int))):
        got, expected = call(fresh_model), call(compressed)
        assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])


def test_a_float32_model_gives_a_fresh_models_results_after_x64_is_switched(load_model, molecules):
    (r1, z1), _, _ = molecules
    model = load_model("ultra-tiny-21k", "float32").with_untrained_elements(False)
    model.energy_and_forces(r1, z1)  # compiled with x64 on (the test session's setting)
    with jax.enable_x64(False):
        got = model.energy_and_forces(r1, z1)
        expected = model._same_model(model.params).energy_and_forces(r1, z1)  # compiled with x64 off
    assert got[0] == expected[0] and np.array_equal(got[1], expected[1])


def test_changing_allow_untrained_elements_on_the_model_applies_to_the_next_call(fresh_model, molecules):
    (r1, z1), _, _ = molecules
    z = z1.copy()
    z[0] = 5  # boron: outside the trained set
    fresh_model.allow_untrained_elements = True
    energy, _ = fresh_model.energy_and_forces(r1, z)
    assert np.isfinite(energy)
    fresh_model.allow_untrained_elements = False
    with pytest.raises(ValueError, match=r"untrained element: B \(Z=5\)"):
        fresh_model.energy_and_forces(r1, z)
