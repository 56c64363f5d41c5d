"""Analytic forces (mlff_jax.analytic): equal to autodiff, to finite differences and to upstream,
NaN-free at the cusps, with working parameter gradients and an exact virial."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tolerances as tol
from conftest import MODEL_NAMES
from mlff_jax import analytic, painn
from mlff_jax.analytic_graph import all_pairs_graph, default_accumulation, edges_from_pair_graph, fold_symmetric_edges, pair_graph_from_edges, pair_graph_from_pairs
from mlff_jax.graph import Edges, all_pairs_edges

ELEMENTS = (1, 6, 7, 8, 9, 16, 17)  # H C N O F S Cl
HIGHEST = jax.lax.Precision.HIGHEST
PADDED_ATOMS = 64  # every random molecule (1..60 atoms) is padded to this: one program per model


# ---------------------------------------------------------------------------------- helpers
@functools.partial(jax.jit, static_argnames=("config", "num_structures", "layout", "store_filters"))
def analytic_run(params, config, positions, numbers, mask, batch, num_structures=1, layout=None, store_filters=True):
    """layout: "gather" / "scatter" (PairGraph) or "edges" (directed)."""
    if layout == "edges":
        graph = all_pairs_edges(mask, batch, positions.dtype)
    else:
        graph = all_pairs_graph(mask, batch, positions.dtype, accumulate=layout or default_accumulation())
    return analytic.energy_forces_virial(params, config, positions, numbers, graph, mask, batch, num_structures, store_filters=store_filters)


def autodiff_forces(params, config, positions, numbers, mask, batch, num_structures=1):
    edges = all_pairs_edges(mask, batch, positions.dtype)

    def total(pos):
        energies = painn.structure_energies(params, config, pos, numbers, edges, mask, batch, num_structures)
        return jnp.sum(energies), energies

    grad, energies = jax.grad(total, has_aux=True)(positions)
    return energies, -grad


autodiff_run = jax.jit(autodiff_forces, static_argnames=("config", "num_structures"))
analytic_jit = jax.jit(analytic.energy_forces_virial, static_argnums=(1, 7))


def force_matching_loss(params, config, positions, numbers, mask, batch, target_energy, target_forces, method):
    run = analytic_run if method == "analytic" else autodiff_forces
    energies, forces = run(params, config, positions, numbers, mask, batch)[:2]
    return (energies[0] - target_energy) ** 2 + jnp.sum((forces - target_forces) ** 2)


force_matching_grad = jax.jit(jax.grad(force_matching_loss), static_argnames=("config", "method"))


def pad_size(n: int) -> int:
    """Few padded sizes for the reference structures: few compilations."""
    return next(size for size in (16, 32, 96) if n <= size)


def single(positions, numbers, pad_to=None, dtype=jnp.float64):
    """Arrays for one structure, optionally padded with far-away masked atoms."""
    positions, numbers = np.asarray(positions, np.float64), np.asarray(numbers)
    n = len(numbers)
    size = pad_to or n
    pos = np.zeros((size, 3))
    pos[:n] = positions
    pos[n:, 0] = 1e3 + 50.0 * np.arange(size - n)
    z = np.ones(size, np.int32)
    z[:n] = numbers
    return jnp.asarray(pos, dtype), jnp.asarray(z), jnp.asarray(np.arange(size) < n), jnp.zeros(size, jnp.int32)


def random_molecule(n: int, seed: int) -> np.ndarray:
    """n random positions at organic-liquid density (0.1 atoms/Å^3), no pair closer than 0.5 Å."""
    rng = np.random.default_rng(seed)
    side = (n / 0.1) ** (1 / 3)
    points: list[np.ndarray] = []
    while len(points) < n:
        p = rng.uniform(0.0, side, 3)
        if all(np.linalg.norm(p - q) >= 0.5 for q in points):
            points.append(p)
    return np.array(points)


def max_abs_diff(tree_a, tree_b) -> float:
    diffs = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b), initial=0.0)), tree_a, tree_b)
    return max(jax.tree_util.tree_leaves(diffs))


def all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree))


# ------------------------------------------------------------------- agreement with autodiff
@pytest.mark.parametrize("name", [n if n == "tiny-77k" else pytest.param(n, marks=pytest.mark.slow) for n in MODEL_NAMES])
def test_analytic_forces_match_autodiff_and_upstream_on_reference_structures(name, reference, load_model):
    ref, model = reference(name), load_model(name, "float64")
    for s in ref.structures:
        n = len(ref[s, "Z"])
        args = single(ref[s, "R"], ref[s, "Z"], pad_to=pad_size(n))
        result = analytic_run(model.params, model.config, *args)
        energies_ad, forces_ad = autodiff_run(model.params, model.config, *args)
        energy, forces = float(result.energies[0]), np.asarray(result.forces)
        np.testing.assert_allclose(energy, float(energies_ad[0]), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64, err_msg=s)
        np.testing.assert_allclose(forces, np.asarray(forces_ad), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64, err_msg=s)
        np.testing.assert_allclose(energy, ref[s, "E_f64"], rtol=0, atol=tol.PARITY_F64_ENERGY, err_msg=s)
        np.testing.assert_allclose(forces[:n], ref[s, "F_f64"], rtol=0, atol=tol.PARITY_F64_FORCES, err_msg=s)
    energies, forces = model.energy_and_forces(ref["batch", "R"], ref["batch", "Z"], batch=ref["batch", "batch"], method="analytic")
    np.testing.assert_allclose(np.asarray(energies), ref["batch", "E_f64"], rtol=0, atol=tol.PARITY_F64_ENERGY)
    np.testing.assert_allclose(np.asarray(forces), ref["batch", "F_f64"], rtol=0, atol=tol.PARITY_F64_FORCES)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "student-427k" else n for n in MODEL_NAMES])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    numbers=st.lists(st.sampled_from(ELEMENTS), min_size=1, max_size=60),
    seed=st.integers(0, 2**31 - 1),
)
def test_analytic_forces_match_autodiff_on_random_molecules(name, numbers, seed, load_model):
    model = load_model(name, "float64")
    positions = random_molecule(len(numbers), seed)
    args = single(positions, numbers, pad_to=PADDED_ATOMS)
    result = analytic_run(model.params, model.config, *args)
    energies_ad, forces_ad = autodiff_run(model.params, model.config, *args)
    np.testing.assert_allclose(np.asarray(result.energies), np.asarray(energies_ad), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64)
    np.testing.assert_allclose(np.asarray(result.forces), np.asarray(forces_ad), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64)
    assert np.all(np.asarray(result.forces)[len(numbers) :] == 0.0)  # padding atoms feel nothing


def test_every_layout_matches_autodiff(reference, load_model):
    """Directed edges (scatter), pairs with scatter-adds, pairs with the neighbour-table gathers, and
    recomputed filters all agree with autodiff."""
    ref, model = reference("tiny-77k"), load_model("tiny-77k", "float64")
    args = single(ref["062_water10", "R"], ref["062_water10", "Z"], pad_to=32)
    pairs = analytic_run(model.params, model.config, *args, layout="gather")
    scattered = analytic_run(model.params, model.config, *args, layout="scatter")
    directed = analytic_run(model.params, model.config, *args, layout="edges")
    recomputed = analytic_run(model.params, model.config, *args, store_filters=False)
    _, forces_ad = autodiff_run(model.params, model.config, *args)
    for result in (pairs, scattered, directed, recomputed):
        np.testing.assert_allclose(np.asarray(result.forces), np.asarray(forces_ad), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64)
        np.testing.assert_allclose(np.asarray(result.virial), np.asarray(pairs.virial), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64)


def test_compressed_model_analytic_forces_match_autodiff_of_the_table(reference, load_model):
    """Blocks with a filter table (model.compress()): the sweep differentiates the cubic Hermite
    interpolant by hand (tabulated_filter_slope) and must equal autodiff of the same compressed energy."""
    ref, model = reference("ultra-tiny-21k"), load_model("ultra-tiny-21k", "float64")
    compressed = model.compress()
    for s in ("000_CH3CHO", "062_water10"):
        args = single(ref[s, "R"], ref[s, "Z"], pad_to=pad_size(len(ref[s, "Z"])))
        result = analytic_run(compressed.params, model.config, *args)
        energies_ad, forces_ad = autodiff_run(compressed.params, model.config, *args)
        np.testing.assert_allclose(np.asarray(result.energies), np.asarray(energies_ad), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64, err_msg=s)
        np.testing.assert_allclose(np.asarray(result.forces), np.asarray(forces_ad), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64, err_msg=s)


def test_analytic_forces_sum_to_zero(reference, load_model):
    ref, model = reference("ultra-tiny-21k"), load_model("ultra-tiny-21k", "float64")
    for s in ("003_CH3CH2OCH3", "062_water10", "065_two_far_fragments"):
        forces = analytic_run(model.params, model.config, *single(ref[s, "R"], ref[s, "Z"], pad_to=pad_size(len(ref[s, "Z"])))).forces
        assert np.abs(np.asarray(forces)).max() > 0.1
        np.testing.assert_allclose(np.asarray(forces).sum(axis=0), 0.0, rtol=0, atol=tol.ROUNDOFF_F64, err_msg=s)


def test_forces_match_central_finite_differences(reference, load_model):
    model = load_model("tiny-77k", "float64")
    ref = reference("tiny-77k")
    step = 1e-5  # Å: truncation ~h^2 E''' and round-off ~1e-16 |E| / h both stay below 1e-7 eV/Å
    for s in ("000_CH3CHO", "027_C4H4S"):
        positions, numbers, mask, batch = single(ref[s, "R"], ref[s, "Z"], pad_to=12)
        n = len(numbers)  # padding atoms included: their forces must be exactly zero too
        forces = analytic_run(model.params, model.config, positions, numbers, mask, batch).forces
        displacements = step * jnp.eye(3 * n).reshape(3 * n, n, 3)
        energy = jax.vmap(lambda pos: analytic_run(model.params, model.config, pos, numbers, mask, batch).energies[0])
        plus, minus = energy(positions + displacements), energy(positions - displacements)
        fd_forces = -((plus - minus) / (2 * step)).reshape(n, 3)
        np.testing.assert_allclose(np.asarray(forces), np.asarray(fd_forces), rtol=0, atol=tol.FINITE_DIFFERENCE_FORCES, err_msg=s)


# ------------------------------------------------------------------------------- the cusps
def _cusp_cases():
    a = 0.629  # CH4 with C-H = sqrt(3) a = 1.089 Å: a perfect tetrahedron
    return {
        "isolated_atom": ([[0.0, 0.0, 0.0]], [8]),
        "dimer": ([[0.0, 0.0, 0.0], [0.0, 0.0, 0.74]], [1, 1]),
        "linear_co2": ([[-1.16, 0.0, 0.0], [0.0, 0.0, 0.0], [1.16, 0.0, 0.0]], [8, 6, 8]),
        "tetrahedral_ch4": ([[0, 0, 0], [a, a, a], [-a, -a, a], [-a, a, -a], [a, -a, -a]], [6, 1, 1, 1, 1]),
    }


@pytest.mark.parametrize("case", sorted(_cusp_cases()))
def test_no_nan_in_values_or_gradients_at_the_norm_cusp(case, load_model):
    """Isolated atom, dimer, and molecules whose central atom's vector features cancel exactly by
    symmetry (||v|| = 0: the norm's cusp). Values, forces and the parameter gradient of a
    force-matching loss are finite for both methods, and forces sum to zero.

    Beyond block 0 the symmetric cancellations are exact only if the two filter rows of equal
    distances round alike, which a matmul does not promise: there forces depend on round-off in
    both methods (design doc), so they are compared with autodiff only for the atom and the dimer.
    """
    model = load_model("ultra-tiny-21k", "float64")
    positions, numbers = _cusp_cases()[case]
    args = single(positions, numbers, pad_to=8)
    result = analytic_run(model.params, model.config, *args)
    assert all_finite(result)
    np.testing.assert_allclose(np.asarray(result.forces).sum(axis=0), 0.0, rtol=0, atol=tol.ROUNDOFF_F64)
    symmetric = case in ("linear_co2", "tetrahedral_ch4")
    if symmetric or case == "isolated_atom":  # the test really sits on the cusp (block 0)
        graph = all_pairs_graph(args[2], args[3], jnp.float64)
        _, tape = analytic.forward_sweep(model.params, model.config, args[0], args[1], graph, args[2])
        center = 1 if case == "linear_co2" else 0
        assert np.all(np.asarray(tape[2][0].norm)[center] == 0.0)
    if not symmetric:
        _, forces_ad = autodiff_run(model.params, model.config, *args)
        np.testing.assert_allclose(np.asarray(result.forces), np.asarray(forces_ad), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64)

    targets = (jnp.asarray(-10.0, jnp.float64), jnp.ones((8, 3), jnp.float64))
    grad_analytic = force_matching_grad(model.params, model.config, *args, *targets, method="analytic")
    grad_autodiff = force_matching_grad(model.params, model.config, *args, *targets, method="autodiff")
    assert all_finite(grad_analytic) and all_finite(grad_autodiff)
    if not symmetric:
        assert max_abs_diff(grad_analytic, grad_autodiff) <= tol.PARAM_GRAD_F64


def test_isolated_atom_through_energy_fn_has_zero_force(load_model):
    model = load_model("ultra-tiny-21k", "float64")
    positions = jnp.zeros((1, 3))
    energy = jax.jit(model.energy_fn)(positions, jnp.array([6]))
    grad = jax.jit(jax.grad(model.energy_fn))(positions, jnp.array([6]))
    assert np.isfinite(float(energy)) and np.all(np.asarray(grad) == 0.0)


# ------------------------------------------------------------------------ parameter gradients
def test_parameter_gradient_of_force_matching_loss_matches_autodiff(reference, load_model):
    """Training differentiates through the analytic forces (plain JAX): same gradient as autodiff."""
    ref, model = reference("ultra-tiny-21k"), load_model("ultra-tiny-21k", "float64")  # shares the cusp tests' programs
    args = single(ref["000_CH3CHO", "R"], ref["000_CH3CHO", "Z"], pad_to=8)
    targets = (jnp.asarray(ref["000_CH3CHO", "E_f64"] + 0.3, jnp.float64), jnp.asarray(np.pad(ref["000_CH3CHO", "F_f64"], ((0, 1), (0, 0))) * 0.9, jnp.float64))
    grad_analytic = force_matching_grad(model.params, model.config, *args, *targets, method="analytic")
    grad_autodiff = force_matching_grad(model.params, model.config, *args, *targets, method="autodiff")
    assert max_abs_diff(grad_analytic, grad_autodiff) <= tol.PARAM_GRAD_F64
    assert max_abs_diff(grad_autodiff, jax.tree_util.tree_map(jnp.zeros_like, grad_autodiff)) > 1e-2  # not trivially zero


def test_custom_vjp_energy_gives_analytic_forces_and_parameter_gradients(reference, load_model):
    """jax.grad of analytic.structure_energies (the custom rule) w.r.t. positions and parameters,
    and the parameter gradient of a force-matching loss whose forces come from jax.grad of it,
    equal plain autodiff."""
    ref, model = reference("ultra-tiny-21k"), load_model("ultra-tiny-21k", "float64")
    positions, numbers, mask, batch = args = single(ref["000_CH3CHO", "R"], ref["000_CH3CHO", "Z"], pad_to=8)
    graph, edges = all_pairs_graph(mask, batch, jnp.float64), all_pairs_edges(mask, batch, jnp.float64)
    target_energy, target_forces = jnp.asarray(-30.0, jnp.float64), jnp.full((8, 3), 0.5, jnp.float64)

    def energy_custom(params, pos):
        return analytic.structure_energies(params, model.config, pos, numbers, graph, mask, batch, 1)[0]

    def energy_plain(params, pos):
        return painn.structure_energies(params, model.config, pos, numbers, edges, mask, batch, 1)[0]

    def loss_custom(params):
        energy, grad = jax.value_and_grad(energy_custom, argnums=1)(params, positions)
        return (energy - target_energy) ** 2 + jnp.sum((-grad - target_forces) ** 2)

    custom_params, custom_positions = jax.jit(jax.grad(energy_custom, argnums=(0, 1)))(model.params, positions)
    plain_params, plain_positions = jax.jit(jax.grad(energy_plain, argnums=(0, 1)))(model.params, positions)
    assert max_abs_diff(custom_positions, plain_positions) <= tol.ANALYTIC_VS_AUTODIFF_F64
    assert max_abs_diff(custom_params, plain_params) <= tol.PARAM_GRAD_F64
    loss_grad = jax.jit(jax.grad(loss_custom))(model.params)
    expected = force_matching_grad(model.params, model.config, *args, target_energy, target_forces, method="autodiff")
    assert max_abs_diff(loss_grad, expected) <= tol.PARAM_GRAD_F64


def test_jax_grad_of_model_energy_fn_runs_the_analytic_sweep(reference, load_model):
    ref, model = reference("ultra-tiny-21k"), load_model("ultra-tiny-21k", "float64")
    positions, numbers = jnp.asarray(ref["000_CH3CHO", "R"]), jnp.asarray(ref["000_CH3CHO", "Z"])
    grad = jax.jit(jax.grad(model.energy_fn))(positions, numbers)
    _, forces_ad = model.energy_and_forces(positions, numbers, method="autodiff")
    np.testing.assert_allclose(np.asarray(-grad), np.asarray(forces_ad), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64)
    assert "custom_vjp_call" in str(jax.make_jaxpr(model.energy_fn)(positions, numbers))


def test_hessian_through_the_custom_rule_is_reverse_over_reverse(load_model):
    """Forward mode cannot pass a custom_vjp; jax.jacrev(jax.grad(energy_fn)) gives the Hessian."""
    model = load_model("ultra-tiny-21k", "float64")
    positions, numbers = jnp.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]), jnp.array([8, 1, 1])
    mask, batch = jnp.ones(3, bool), jnp.zeros(3, jnp.int32)
    edges = all_pairs_edges(mask, batch, jnp.float64)
    plain = lambda pos: painn.structure_energies(model.params, model.config, pos, numbers, edges, mask, batch, 1)[0]
    hessian = jax.jit(jax.jacrev(jax.grad(model.energy_fn)))(positions, numbers)
    np.testing.assert_allclose(np.asarray(hessian), np.asarray(jax.jit(jax.hessian(plain))(positions)), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64)


# ------------------------------------------------------------------------------------ float32
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n != "tiny-77k" else n for n in MODEL_NAMES])
def test_float32_analytic_forces_stay_at_the_float32_floor(name, reference, load_model):
    """Float32 analytic forces vs float64, on the same float32-representable positions and weights.

    Asserts |F32_analytic - F64| <= ANALYTIC_F32_VS_F64_FORCES + |F32_autodiff - F64|: the analytic
    sweep adds at most 1e-5 eV/Å to the float32 error the forward pass already has. (The float32
    floor itself reaches 1.6e-5 eV/Å for both methods on a few structures with |F| ~ 20 eV/Å;
    see docs/analytic-forces.md.)
    """
    ref, model32 = reference(name), load_model(name, "float32")
    params32, params64 = model32.params, painn.cast_params(model32.params, jnp.float64)
    for s in ref.structures:
        pad = pad_size(len(ref[s, "Z"]))
        args64 = single(ref[s, "R"].astype(np.float32), ref[s, "Z"], pad_to=pad)
        args32 = single(ref[s, "R"].astype(np.float32), ref[s, "Z"], pad_to=pad, dtype=jnp.float32)
        forces64 = np.asarray(autodiff_run(params64, model32.config, *args64)[1])  # independent of the sweep under test
        forces32 = np.asarray(analytic_run(params32, model32.config, *args32).forces)
        forces32_ad = np.asarray(autodiff_run(params32, model32.config, *args32)[1])
        assert forces32.dtype == np.float32
        floor = np.abs(forces32_ad.astype(np.float64) - forces64).max()
        error = np.abs(forces32.astype(np.float64) - forces64).max()
        assert error <= tol.ANALYTIC_F32_VS_F64_FORCES + floor, (s, error, floor)


# ----------------------------------------------------------------------------------- virial
def _strain_derivative(params, config, positions, numbers, edges, mask, batch, num_structures):
    """dE_b/d(strain) [B, 3, 3] by autodiff: positions and shifts deformed as x -> x (I + eps)."""

    def energies(strain):
        deform = jnp.eye(3) + strain
        strained = Edges(edges.senders, edges.receivers, edges.shifts @ deform, edges.mask)
        return painn.structure_energies(params, config, positions @ deform, numbers, strained, mask, batch, num_structures)

    return jax.jacobian(energies)(jnp.zeros((3, 3)))


def test_virial_equals_minus_strain_derivative_for_molecules(reference, load_model):
    ref, model = reference("tiny-77k"), load_model("tiny-77k", "float64")
    positions, numbers, batch = (jnp.asarray(ref["batch", k]) for k in ("R", "Z", "batch"))
    mask = jnp.ones(len(numbers), bool)
    edges = all_pairs_edges(mask, batch, jnp.float64)
    expected = -jax.jit(_strain_derivative, static_argnums=(1, 7))(model.params, model.config, positions, numbers, edges, mask, batch, 4)
    for graph in (edges, all_pairs_graph(mask, batch, jnp.float64)):
        virial = analytic_jit(model.params, model.config, positions, numbers, graph, mask, batch, 4).virial
        np.testing.assert_allclose(np.asarray(virial), np.asarray(expected), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64)
        assert np.abs(np.asarray(virial)).max() > 1.0


def test_custom_vjp_scales_each_structure_by_its_own_cotangent(reference, load_model):
    """jax.grad of sum_b c_b E_b through the custom rule, for a batch of four structures."""
    ref, model = reference("ultra-tiny-21k"), load_model("ultra-tiny-21k", "float64")
    positions, numbers, batch = (jnp.asarray(ref["batch", k]) for k in ("R", "Z", "batch"))
    mask = jnp.ones(len(numbers), bool)
    graph, edges = all_pairs_graph(mask, batch, jnp.float64), all_pairs_edges(mask, batch, jnp.float64)
    weights = jnp.array([1.0, -2.0, 0.5, 3.0])

    def weighted(pos, energy_fn, layout):
        return jnp.sum(weights * energy_fn(model.params, model.config, pos, numbers, layout, mask, batch, 4))

    grad = jax.jit(jax.grad(weighted), static_argnums=(1,))
    np.testing.assert_allclose(
        np.asarray(grad(positions, analytic.structure_energies, graph)), np.asarray(grad(positions, painn.structure_energies, edges)),
        rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64,
    )


def _periodic_edges(positions, cell, cutoff):
    """Directed edges to every periodic image within the cutoff, by brute force over images."""
    senders, receivers, shifts = [], [], []
    images = np.array([(i, j, k) for i in range(-2, 3) for j in range(-2, 3) for k in range(-2, 3)])
    for a in range(len(positions)):
        for b in range(len(positions)):
            for image in images:
                shift = image @ cell
                if (a == b and not image.any()) or np.linalg.norm(positions[a] - positions[b] + shift) > cutoff:
                    continue
                senders.append(a), receivers.append(b), shifts.append(shift)
    # two padding edge slots (masked, pointing anywhere) to check they contribute nothing
    senders += [0, 1]
    receivers += [1, 0]
    shifts += [np.full(3, 7.0), np.zeros(3)]
    mask = np.arange(len(senders)) < len(senders) - 2
    return Edges(jnp.asarray(senders, jnp.int32), jnp.asarray(receivers, jnp.int32), jnp.asarray(np.array(shifts)), jnp.asarray(mask))


def test_periodic_forces_and_virial_with_nonzero_edge_shifts(load_model):
    """A small periodic box (edges to images, incl. an atom's own images): forces equal autodiff and
    the virial equals minus the strain derivative, for both layouts."""
    model = load_model("ultra-tiny-21k", "float64")
    rng = np.random.default_rng(7)
    cell = np.diag([4.2, 4.6, 5.1]) + 0.3 * rng.uniform(-1, 1, (3, 3))
    positions = rng.uniform(0, 1, (5, 3)) @ cell
    numbers = jnp.asarray([8, 1, 1, 6, 17])
    edges = _periodic_edges(positions, cell, model.config.cutoff)
    positions = jnp.asarray(positions)
    mask, batch = jnp.ones(5, bool), jnp.zeros(5, jnp.int32)
    graph = pair_graph_from_edges(edges, num_atoms=5, max_neighbors=None)
    assert int(jnp.sum(graph.first == graph.second)) > 0  # self-image pairs are exercised

    def total(pos):
        return jnp.sum(painn.structure_energies(model.params, model.config, pos, numbers, edges, mask, batch, 1))

    forces_ad = -jax.jit(jax.grad(total))(positions)
    expected_virial = -jax.jit(_strain_derivative, static_argnums=(1, 7))(model.params, model.config, positions, numbers, edges, mask, batch, 1)
    folded = jax.jit(fold_symmetric_edges)(edges)  # the same pairs, found under jit
    assert int(jnp.sum(folded.mask)) == int(jnp.sum(graph.mask))
    for layout in (edges, graph, folded):
        result = analytic_jit(model.params, model.config, positions, numbers, layout, mask, batch, 1)
        np.testing.assert_allclose(np.asarray(result.forces), np.asarray(forces_ad), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64)
        np.testing.assert_allclose(np.asarray(result.virial), np.asarray(expected_virial), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64)

    # the custom rule's cotangent for the edge shifts is minus the per-edge forces
    def energy_of_shifts(shifts, energy_fn, layout):
        moved = dataclasses.replace(layout, shifts=shifts)
        return energy_fn(model.params, model.config, positions, numbers, moved, mask, batch, 1)[0]

    shift_grad = jax.jit(jax.grad(energy_of_shifts), static_argnums=(1,))
    expected_shift_grad = shift_grad(edges.shifts, painn.structure_energies, edges)
    np.testing.assert_allclose(np.asarray(shift_grad(edges.shifts, analytic.structure_energies, edges)), np.asarray(expected_shift_grad), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64)


def test_periodic_model_folds_the_neighbour_list_and_matches_autodiff(load_model):
    """PaiNNStudent with a cell: the neighbour list's edges are folded into pairs for the analytic
    sweep; energies, forces and stress equal autodiff on the unfolded list."""
    from periodic_systems import water_box

    model = load_model("ultra-tiny-21k", "float64")
    boxes = (
        np.array([[6.25, 0.0, 0.0], [0.6, 6.2, 0.0], [-0.4, 0.5, 6.3]]),  # 8 waters, thinner than 2 rc
        np.array([[4.4, 0.0, 0.0], [0.5, 4.3, 0.0], [-0.3, 0.4, 4.6]]),  # 1 water: its own images within rc
    )
    for per_side, cell in zip((2, 1), boxes):
        positions, numbers = water_box(per_side, cell, seed=3)
        analytic_out = model.energy_forces_stress(positions, numbers, cell=cell)
        autodiff_out = model.energy_forces_stress(positions, numbers, cell=cell, method="autodiff")
        for a, b in zip(analytic_out, autodiff_out):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64)
        assert np.abs(np.asarray(analytic_out[1])).max() > 0.1


# ------------------------------------------------------------------- padding and bad input
def test_padding_pairs_and_slots_contribute_exactly_zero(reference, load_model):
    """Extra masked pairs and padded neighbour slots leave energies, forces and virial unchanged,
    and parameter gradients through them stay finite."""
    ref, model = reference("ultra-tiny-21k"), load_model("ultra-tiny-21k", "float64")
    positions, numbers, mask, batch = single(ref["000_CH3CHO", "R"], ref["000_CH3CHO", "Z"])
    n = len(numbers)
    first, second = np.triu_indices(n, 1)
    tight = pair_graph_from_pairs(first, second, None, n)
    extra_first, extra_second = np.append(first, [0, 3, 2]), np.append(second, [4, 3, 6])
    extra_mask = np.arange(len(extra_first)) < len(first)
    padded = pair_graph_from_pairs(extra_first, extra_second, None, n, mask=extra_mask, max_neighbors=n + 5)
    assert np.any(np.asarray(padded.neighbor_signs) == 0.0)
    def run(params, graph):
        return analytic.energy_forces_virial(params, model.config, positions, numbers, graph, mask, batch, 1)

    a, b = jax.jit(run)(model.params, tight), jax.jit(run)(model.params, padded)
    for x, y in zip(a[:3], b[:3]):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=tol.ROUNDOFF_F64)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(run(p, padded).forces ** 2)))(model.params)
    assert all_finite(grads)


@pytest.mark.slow
def test_chunked_sweep_equals_the_single_pass(reference, load_model):
    """chunk_size: the per-edge work in a lax.scan over chunks (with padding to whole chunks) gives
    the single pass's energies, forces, virial and edge forces, for both layouts, network and table
    filters; the custom rule with chunks gives the same position and parameter gradients."""
    ref, model = reference("ultra-tiny-21k"), load_model("ultra-tiny-21k", "float64")
    positions, numbers, mask, batch = single(ref["062_water10", "R"], ref["062_water10", "Z"], pad_to=32)
    graphs = (all_pairs_graph(mask, batch, jnp.float64, accumulate="scatter"), all_pairs_edges(mask, batch, jnp.float64))
    run = jax.jit(analytic.energy_forces_virial, static_argnums=(1, 7, 8, 9, 10))
    for params in (model.params, model.compress().params):
        for graph in graphs:
            whole = run(params, model.config, positions, numbers, graph, mask, batch, 1)
            chunked = run(params, model.config, positions, numbers, graph, mask, batch, 1, HIGHEST, None, 100)  # 496 pairs: 5 chunks, padded
            for x, y in zip(whole, chunked):
                assert x.shape == y.shape
                np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=0, atol=tol.ROUNDOFF_F64)

    def energy(params, pos, chunk_size):
        return analytic.structure_energies(params, model.config, pos, numbers, graphs[0], mask, batch, 1, HIGHEST, chunk_size)[0]

    grads = jax.jit(jax.grad(energy, argnums=(0, 1)), static_argnums=2)
    assert max_abs_diff(grads(model.params, positions, 64), grads(model.params, positions, None)) <= tol.ROUNDOFF_F64
    with pytest.raises(ValueError, match="neighbour table"):
        analytic.energy_forces_virial(model.params, model.config, positions, numbers, all_pairs_graph(mask, batch, jnp.float64, accumulate="gather"),
                                      mask, batch, 1, chunk_size=100)


def test_atom_reference_energies_shift_energy_not_forces(load_model):
    model = load_model("ultra-tiny-21k", "float64")
    positions, numbers, mask, batch = single([[0, 0, 0], [0, 0, 1.1], [0.9, 0, -0.4]], [6, 8, 1], pad_to=8)
    reference_energies = jnp.arange(model.config.max_z + 1, dtype=jnp.float64) * 0.25
    params = {**model.params, "atom_reference": {"energies": reference_energies}}
    plain = analytic_run(model.params, model.config, positions, numbers, mask, batch)
    shifted = analytic_run(params, model.config, positions, numbers, mask, batch)
    np.testing.assert_allclose(float(shifted.energies[0] - plain.energies[0]), 0.25 * (6 + 8 + 1), rtol=0, atol=tol.ROUNDOFF_F64)
    np.testing.assert_array_equal(np.asarray(shifted.forces), np.asarray(plain.forces))


def test_asymmetric_edges_cannot_become_a_pair_graph():
    edges = Edges(jnp.array([0, 1, 0]), jnp.array([1, 0, 2]), jnp.zeros((3, 3)), jnp.ones(3, bool))
    with pytest.raises(ValueError, match="no reverse edge 0 -> 2|no reverse edge 2 -> 0"):
        pair_graph_from_edges(edges, num_atoms=3)


def test_pair_graph_round_trips_to_its_directed_edges():
    graph = pair_graph_from_pairs([0, 0, 1], [1, 2, 2], [[0, 0, 0], [1.5, 0, 0], [0, 0, 0]], 3)
    back = pair_graph_from_edges(edges_from_pair_graph(graph), num_atoms=3)
    np.testing.assert_array_equal(np.asarray(back.neighbors), np.asarray(graph.neighbors))
    np.testing.assert_array_equal(np.asarray(back.shifts), np.asarray(graph.shifts))


def test_unknown_force_method_is_a_value_error(load_model):
    model = load_model("ultra-tiny-21k", "float64")
    with pytest.raises(ValueError, match="method must be one of"):
        model.energy_and_forces([[0.0, 0.0, 0.0]], [1], method="finite-difference")
