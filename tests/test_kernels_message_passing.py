"""The fused message-passing kernels against their plain-JAX reference, and the model built on them.

Pallas kernels run in interpret mode (CPU). Systems are small (N = 20, H = 36, K = 6) but have every
awkward case: padding atoms, empty slots, slots beyond the cutoff, H and K that need padding.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tolerances as tol
from mlff_jax import painn
from mlff_jax.kernels.message_passing import layout, message_block, message_block_reference
from mlff_jax.kernels.message_passing.model import energy_and_forces_kernel

CUTOFF = 2.5
NUM_ATOMS, NUM_PADDING, HIDDEN, NUM_RBF = 20, 2, 36, 6  # H_pad = 64: four 16-wide chunks of the FMA matmuls
DIFF_ARGS = ("s", "v", "distances", "directions", "block", "centers", "widths")


def make_system(dtype, seed=0, extra_slots=3):
    """Random atoms in a 4 Å cube; neighbours within CUTOFF + 0.6 Å (so some slots lie beyond the
    cutoff), the last NUM_PADDING atoms are padding (no neighbours), ``extra_slots`` empty slots."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0.0, 4.0, (NUM_ATOMS, 3))
    mask = np.arange(NUM_ATOMS) < NUM_ATOMS - NUM_PADDING
    nbr, shifts = layout.all_pairs_dense(pos, CUTOFF + 0.6, atom_mask=mask)
    nbr = np.pad(nbr, ((0, 0), (0, extra_slots)), constant_values=NUM_ATOMS)
    shifts = np.pad(shifts, ((0, 0), (0, extra_slots), (0, 0)))
    d, u, _ = layout.slot_geometry(jnp.asarray(pos), jnp.asarray(nbr), jnp.asarray(shifts))
    h, k = HIDDEN, NUM_RBF
    block = {
        "filter_in": {"kernel": rng.normal(size=(k, h)) / np.sqrt(k), "bias": 0.1 * rng.normal(size=h)},
        "filter_out": {"kernel": rng.normal(size=(h, 3 * h)) / np.sqrt(h), "bias": 0.1 * rng.normal(size=3 * h)},
    }
    cast = functools.partial(jnp.asarray, dtype=dtype)
    args = {
        "s": cast(rng.normal(size=(NUM_ATOMS, h))),
        "v": cast(rng.normal(size=(NUM_ATOMS, 3, h))),
        "distances": cast(d),
        "directions": cast(u),
        "block": jax.tree.map(cast, block),
        "centers": cast(np.linspace(0.0, CUTOFF, k)),
        "widths": cast(np.full(k, CUTOFF / k)),
    }
    return jnp.asarray(nbr), args


INTERPRET = jax.default_backend() == "cpu"  # Pallas kernels compile for real when the tests run on a GPU


def run(implementation, nbr, args, **options):
    return message_block(
        args["s"], args["v"], nbr, args["distances"], args["directions"], args["block"], args["centers"], args["widths"],
        cutoff=CUTOFF, implementation=implementation, interpret=INTERPRET and implementation == "pallas", **options,
    )  # fmt: skip


def loss_and_grads(implementation, nbr, args, **options):
    """A scalar of both outputs (random weights) and its gradient w.r.t. every float input."""
    rng = np.random.default_rng(1)
    w_s = jnp.asarray(rng.normal(size=args["s"].shape), args["s"].dtype)
    w_v = jnp.asarray(rng.normal(size=args["v"].shape), args["s"].dtype)

    def loss(diff):
        ds, dv = run(implementation, nbr, diff, **options)
        return jnp.sum(w_s * jnp.sin(ds)) + jnp.sum(w_v * dv * dv)

    return jax.jit(jax.value_and_grad(loss))(args)


def assert_close(actual, desired, atol=0.0, rel=None, err_msg=""):
    actual, desired = np.asarray(actual), np.asarray(desired)
    if rel is not None:
        atol = rel * max(np.abs(desired).max(), 1e-30)
    np.testing.assert_allclose(actual, desired, rtol=0, atol=atol, err_msg=err_msg)


@pytest.fixture(scope="module")
def system64():
    return make_system(jnp.float64)


@pytest.fixture(scope="module")
def system32():
    return make_system(jnp.float32)


@pytest.fixture(scope="module")
def grads64(system64):
    nbr, args = system64
    return {impl: loss_and_grads(impl, nbr, args) for impl in ("xla", "pallas")}


# ----------------------------------------------------------------------------- reference
def test_system_has_padding_empty_slots_and_slots_beyond_cutoff(system64):
    nbr, args = system64
    valid = np.asarray(nbr) < NUM_ATOMS
    assert not valid[-NUM_PADDING:].any() and not np.isin(np.arange(NUM_ATOMS - NUM_PADDING, NUM_ATOMS), np.asarray(nbr)).any()
    assert (~valid).any(axis=1).all()
    d = np.asarray(args["distances"])
    assert (valid & (d > CUTOFF)).sum() > 10 and (valid & (d <= CUTOFF)).sum() > 50


def test_reference_equals_edge_list_filter_and_message(system64):
    nbr, args = system64
    shifts = jnp.zeros((*nbr.shape, 3))
    edges = layout.dense_to_edges(nbr, shifts)
    d = args["distances"].reshape(-1)
    within = edges.mask & (d <= CUTOFF)
    rbf = painn.radial_features(d, args["centers"], args["widths"], CUTOFF)
    w = painn.filter_weights(args["block"], rbf, within, jax.lax.Precision.HIGHEST)
    s_new, v_new = painn.message(args["s"], args["v"], w, args["directions"].reshape(-1, 3), edges)
    ds, dv = run("xla", nbr, args)
    assert_close(ds, s_new - args["s"], tol.ROUNDOFF_F64)
    assert_close(dv, v_new - args["v"], tol.ROUNDOFF_F64)


# ----------------------------------------------------------------------------- forward
def test_pallas_forward_matches_reference_float64(system64):
    nbr, args = system64
    for actual, desired in zip(run("pallas", nbr, args), run("xla", nbr, args)):
        assert_close(actual, desired, tol.ROUNDOFF_F64)


def test_pallas_forward_matches_reference_to_float32_roundoff(system32):
    nbr, args = system32
    for actual, desired in zip(run("pallas", nbr, args), run("xla", nbr, args)):
        assert actual.dtype == jnp.float32
        assert_close(actual, desired, rel=tol.KERNEL_VS_REFERENCE_F32)


def test_padding_atoms_receive_nothing(system64):
    nbr, args = system64
    ds, dv = run("pallas", nbr, args)
    assert np.all(np.asarray(ds)[-NUM_PADDING:] == 0.0) and np.all(np.asarray(dv)[-NUM_PADDING:] == 0.0)


def test_empty_slots_and_slots_beyond_cutoff_change_nothing(system64):
    """Dropping every slot with d > rc and every empty slot gives the same messages (bit for bit
    in the kernel, which accumulates slots in order)."""
    nbr, args = system64
    nbr_np, d = np.asarray(nbr), np.asarray(args["distances"])
    keep = (nbr_np < NUM_ATOMS) & (d <= CUTOFF)
    width = keep.sum(axis=1).max()
    order = np.argsort(~keep, axis=1, kind="stable")[:, :width]  # kept slots first, in order
    take = lambda x: np.take_along_axis(np.asarray(x), order if x.ndim == 2 else order[..., None], axis=1)
    compact_nbr = np.where(np.take_along_axis(keep, order, axis=1), take(nbr_np), NUM_ATOMS)
    compact = dict(args, distances=jnp.asarray(take(d)), directions=jnp.asarray(take(args["directions"])))
    for full, small in zip(run("pallas", nbr, args), run("pallas", jnp.asarray(compact_nbr), compact)):
        np.testing.assert_array_equal(np.asarray(full), np.asarray(small))


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", DIFF_ARGS)
def test_pallas_gradients_match_reference_float64(grads64, name):
    (value_x, grad_x), (value_p, grad_p) = grads64["xla"], grads64["pallas"]
    assert_close(value_p, value_x, tol.ROUNDOFF_F64)
    for actual, desired in zip(jax.tree.leaves(grad_p[name]), jax.tree.leaves(grad_x[name])):
        assert np.all(np.isfinite(actual))
        assert_close(actual, desired, tol.ROUNDOFF_F64, err_msg=name)


@pytest.mark.parametrize("slot_splits", [1, 4])
def test_slot_splits_change_nothing_but_roundoff(system32, slot_splits):
    """Programs sharing a block's slots (partial sums added afterwards) give the same values and
    gradients as the default split (one program per slot here), to float32 round-off."""
    nbr, args = system32
    (value, grads), (value_split, grads_split) = (loss_and_grads("pallas", nbr, args), loss_and_grads("pallas", nbr, args, slot_splits=slot_splits))
    assert_close(value_split, value, rel=tol.KERNEL_VS_REFERENCE_F32)
    for actual, desired in zip(jax.tree.leaves(grads_split), jax.tree.leaves(grads)):
        assert_close(actual, desired, rel=tol.KERNEL_VS_REFERENCE_F32)


# ----------------------------------------------------------------------------- filter envelope
def test_reference_with_envelope_equals_edge_list_model_filter(system64):
    """envelope="polynomial": the reference multiplies the filter by env(d), as painn.filter_weights does."""
    nbr, args = system64
    edges = layout.dense_to_edges(nbr, jnp.zeros((*nbr.shape, 3)))
    d = args["distances"].reshape(-1)
    within = edges.mask & (d <= CUTOFF)
    rbf = painn.radial_features(d, args["centers"], args["widths"], CUTOFF)
    env = painn.polynomial_envelope(jnp.where(edges.mask, d, CUTOFF), CUTOFF)[0]
    w = painn.filter_weights(args["block"], rbf, within, jax.lax.Precision.HIGHEST, env)
    s_new, v_new = painn.message(args["s"], args["v"], w, args["directions"].reshape(-1, 3), edges)
    ds, dv = run("xla", nbr, args, envelope="polynomial")
    assert_close(ds, s_new - args["s"], tol.ROUNDOFF_F64)
    assert_close(dv, v_new - args["v"], tol.ROUNDOFF_F64)
    assert np.abs(np.asarray(ds) - np.asarray(run("xla", nbr, args)[0])).max() > 1e-3  # the envelope does something


def test_pallas_with_envelope_matches_reference_float64(system64):
    """Forward and every gradient of the envelope kernels (interpret mode) against the reference."""
    nbr, args = system64
    for actual, desired in zip(run("pallas", nbr, args, envelope="polynomial"), run("xla", nbr, args, envelope="polynomial")):
        assert_close(actual, desired, tol.ROUNDOFF_F64)
    (value_x, grad_x), (value_p, grad_p) = (loss_and_grads(impl, nbr, args, envelope="polynomial") for impl in ("xla", "pallas"))
    assert_close(value_p, value_x, tol.ROUNDOFF_F64)
    for name in DIFF_ARGS:
        for actual, desired in zip(jax.tree.leaves(grad_p[name]), jax.tree.leaves(grad_x[name])):
            assert np.all(np.isfinite(actual))
            assert_close(actual, desired, tol.ROUNDOFF_F64, err_msg=name)


def test_unknown_envelope_raises_value_error(system64):
    nbr, args = system64
    with pytest.raises(ValueError, match="envelope"):
        run("xla", nbr, args, envelope="cosine")


def test_gradients_vanish_on_padding_atoms_empty_slots_and_beyond_cutoff(system64, grads64):
    nbr, args = system64
    _, grad = grads64["pallas"]
    silent = (np.asarray(nbr) >= NUM_ATOMS) | (np.asarray(args["distances"]) > CUTOFF)
    assert np.all(np.asarray(grad["s"])[-NUM_PADDING:] == 0.0) and np.all(np.asarray(grad["v"])[-NUM_PADDING:] == 0.0)
    assert np.all(np.asarray(grad["distances"])[silent] == 0.0)
    assert np.all(np.asarray(grad["directions"])[silent] == 0.0)


def _intermediate_shapes(jaxpr):
    """Shapes of every value computed outside the Pallas kernels (sub-jaxprs of jit, scan, custom rules)."""
    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":  # the kernel's own body works on blocks
            continue
        shapes += [tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")]
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    shapes += _intermediate_shapes(inner)
    return shapes


def test_force_gradients_do_not_compute_per_slot_filters(system64):
    """Forces (gradients w.r.t. features and geometry only) never build the [N, C, 3H] filter values:
    those belong to the parameter gradients (18 GB at 100k atoms of water), computed only on request."""
    nbr, args = system64
    per_slot_filters = (NUM_ATOMS, nbr.shape[1], 3 * HIDDEN)

    def loss(s, v, d, u, block):
        ds, dv = run("pallas", nbr, dict(args, s=s, v=v, distances=d, directions=u, block=block))
        return jnp.sum(ds) + jnp.sum(dv * dv)

    geometry = (args["s"], args["v"], args["distances"], args["directions"], args["block"])
    forces_only = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2, 3)))(*geometry).jaxpr
    assert per_slot_filters not in _intermediate_shapes(forces_only)
    with_params = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(*geometry).jaxpr
    assert per_slot_filters in _intermediate_shapes(with_params)  # the check can see them


def test_pallas_vjp_matches_reference_float32(system32):
    nbr, args = system32
    rng = np.random.default_rng(2)
    cotangents = (
        jnp.asarray(rng.normal(size=args["s"].shape), jnp.float32),
        jnp.asarray(rng.normal(size=args["v"].shape), jnp.float32),
    )

    def vjp(implementation):
        f = lambda s, v, d, u: run(implementation, nbr, dict(args, s=s, v=v, distances=d, directions=u))
        _, pullback = jax.vjp(f, args["s"], args["v"], args["distances"], args["directions"])
        return jax.jit(pullback)(cotangents)

    for name, actual, desired in zip(("s", "v", "distances", "directions"), vjp("pallas"), vjp("xla")):
        assert actual.dtype == jnp.float32
        assert_close(actual, desired, rel=tol.KERNEL_VS_REFERENCE_F32, err_msg=name)


def test_bf16_mode_matches_reference_bf16_mode(system32):
    """The opt-in bf16 mode does what it says on both paths (bf16 inputs, float32 accumulation):
    kernel and reference agree far better than either agrees with full float32."""
    nbr, args = system32
    exact = run("xla", nbr, args)[0]
    fast_x = run("xla", nbr, args, precision="bf16")[0]
    fast_p = run("pallas", nbr, args, precision="bf16")[0]
    scale = np.abs(np.asarray(exact)).max()
    bf16_error = np.abs(np.asarray(fast_x - exact)).max() / scale
    assert 1e-4 < bf16_error < 5e-2
    assert np.abs(np.asarray(fast_p - fast_x)).max() / scale < bf16_error / 10


# ----------------------------------------------------------------------------- layout
def periodic_water_box(repeat=2, seed=0):
    """A small periodic box of water (edge ~ 6.2 Å < 2 rc: a pair has several images)."""
    rng = np.random.default_rng(seed)
    a = 3.1
    grid = np.stack(np.meshgrid(*[np.arange(repeat)] * 3, indexing="ij"), -1).reshape(-1, 3) * a
    molecule = np.array([[0.0, 0.0, 0.0], [0.76, 0.59, 0.0], [-0.76, 0.59, 0.0]])
    pos = (grid[:, None, :] + molecule[None] + 0.8).reshape(-1, 3) + rng.normal(0, 0.05, (len(grid) * 3, 3))
    z = np.tile([8, 1, 1], len(grid))
    return pos, z, np.eye(3) * a * repeat


def test_periodic_list_is_full_and_its_geometry_exactly_symmetric():
    pos, _, cell = periodic_water_box()
    nbr, shifts = layout.periodic_dense(pos, cell, 5.0)
    reverse = layout.reverse_slots(nbr, shifts)
    valid = nbr < len(pos)
    d, _, _ = layout.slot_geometry(jnp.asarray(pos), jnp.asarray(nbr), jnp.asarray(shifts))
    d = np.asarray(d)
    b, j = np.nonzero(valid)
    a = nbr[b, j]
    assert len(np.unique(np.stack([b, a], 1), axis=0)) < len(b)  # some pair has several images
    np.testing.assert_array_equal(d[a, reverse[b, j]], d[b, j])


def test_reverse_slots_rejects_a_half_list():
    pos = np.random.default_rng(0).uniform(0, 3, (6, 3))
    nbr, _ = layout.all_pairs_dense(pos, 10.0)
    nbr[0, 0] = 6  # drop one direction of one pair
    with pytest.raises(ValueError, match="not full"):
        layout.reverse_slots(nbr)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "change, message",
    [
        (dict(implementation="cuda"), "implementation"),
        (dict(precision="fp8"), "precision"),
        (dict(block_atoms=24, implementation="pallas"), "block_atoms"),
        (dict(slot_splits=0, implementation="pallas"), "slot_splits"),
        (dict(k_chunk=24, implementation="pallas"), "k_chunk"),
        (dict(interpret=True, implementation="xla_triton"), "implementation"),
        (dict(s=np.zeros((NUM_ATOMS, HIDDEN + 1))), "v must be"),
        (dict(distances=np.zeros((NUM_ATOMS, 2))), "distances"),
        (dict(neighbors_offset=NUM_ATOMS + 1), "neighbor indices"),
        (dict(neighbors_offset=-NUM_ATOMS - 5), "neighbor indices"),
    ],
)
def test_bad_input_raises_value_error(system64, change, message):
    nbr, args = system64
    change = dict(change)
    kwargs = {k: change.pop(k) for k in ("implementation", "precision", "block_atoms", "interpret", "slot_splits", "k_chunk") if k in change}
    if "neighbors_offset" in change:
        nbr = nbr.at[0, 0].set(change.pop("neighbors_offset"))
    args = dict(args, **{k: jnp.asarray(x) for k, x in change.items()})
    with pytest.raises(ValueError, match=message):
        message_block(
            args["s"], args["v"], nbr, args["distances"], args["directions"], args["block"], args["centers"], args["widths"],
            cutoff=CUTOFF, **kwargs,
        )  # fmt: skip


def test_triton_implementation_needs_jax_triton_or_raises(system64):
    nbr, args = system64
    try:
        import jax_triton  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="jax-triton"):
            run("triton", nbr, args)
    else:
        pytest.skip("jax-triton installed: the triton kernels are checked by benchmarks/gpu_check_kernels.py")
    with pytest.raises(ValueError, match="interpret"):
        message_block(
            args["s"], args["v"], nbr, args["distances"], args["directions"], args["block"], args["centers"], args["widths"],
            cutoff=CUTOFF, implementation="triton", interpret=True,
        )  # fmt: skip


# ----------------------------------------------------------------------------- full model
def reference_batch(ref):
    """Every reference structure in one batch: (R, Z, batch, E [B], F)."""
    names = ref.structures
    R = np.concatenate([ref[n, "R"] for n in names])
    Z = np.concatenate([ref[n, "Z"] for n in names])
    batch = np.concatenate([np.full(len(ref[n, "Z"]), i) for i, n in enumerate(names)])
    E = np.array([ref[n, "E_f64"] for n in names])
    F = np.concatenate([ref[n, "F_f64"] for n in names])
    return R, Z, batch, E, F


def kernel_model_outputs(model, R, Z, batch, num_structures, implementation, neighbors=None, shifts=None):
    if neighbors is None:
        neighbors, shifts = layout.all_pairs_dense(R, model.config.cutoff, batch=batch)
    dtype = jnp.float64 if model.dtype == "float64" else jnp.float32
    f = jax.jit(
        functools.partial(energy_and_forces_kernel, config=model.config, num_structures=num_structures,
                          implementation=implementation, interpret=INTERPRET and implementation == "pallas")  # fmt: skip
    )
    return f(
        model.params, positions=jnp.asarray(R, dtype), atomic_numbers=jnp.asarray(Z), neighbors_idx=jnp.asarray(neighbors),
        shifts=jnp.asarray(shifts, dtype), atom_mask=jnp.ones(len(Z), bool), batch=jnp.asarray(batch),
    )  # fmt: skip


@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_kernel_model_matches_upstream_float64(implementation, reference, load_model):
    ref, model = reference("tiny-77k"), load_model("tiny-77k", "float64")
    R, Z, batch, E, F = reference_batch(ref)
    energies, forces = kernel_model_outputs(model, R, Z, batch, len(E), implementation)
    np.testing.assert_allclose(np.asarray(energies), E, rtol=0, atol=tol.PARITY_F64_ENERGY)
    np.testing.assert_allclose(np.asarray(forces), F, rtol=0, atol=tol.PARITY_F64_FORCES)


@pytest.mark.slow
def test_kernel_model_float32_matches_upstream_within_noise_floor(reference, load_model):
    ref, model = reference("tiny-77k"), load_model("tiny-77k", "float32")
    R, Z, batch, E, F = reference_batch(ref)
    energies, forces = kernel_model_outputs(model, R, Z, batch, len(E), "pallas")
    sizes = np.bincount(batch)
    assert np.all(np.abs(np.asarray(energies) - E) / sizes <= tol.PARITY_F32_ENERGY_PER_ATOM)
    np.testing.assert_allclose(np.asarray(forces), F, rtol=0, atol=tol.PARITY_F32_FORCES)


def test_kernel_model_periodic_box_matches_edge_list_model(load_model):
    """The project's neighbour list (periodic images, a 0.5 Å skin: slots beyond the cutoff) through
    the Pallas path equals the port's edge-list model on the same list, and forces sum to zero."""
    from mlff_jax import neighbors

    model = load_model("ultra-tiny-21k", "float64")
    pos, z, cell = periodic_water_box()
    nbrs = neighbors.neighbor_list_fn(cutoff=model.config.cutoff, skin=0.5, cell=cell).allocate(pos)
    nbr, shifts = np.asarray(nbrs.idx), np.asarray(nbrs.cartesian_shifts())
    layout.reverse_slots(nbr, shifts)  # the list is full
    n = len(z)
    mask, batch = jnp.ones(n, bool), jnp.zeros(n, jnp.int32)
    edges = neighbors.neighbor_list_edges(nbrs)

    def edge_energy(p):
        return painn.structure_energies(model.params, model.config, p, jnp.asarray(z), edges, mask, batch, 1)[0]

    energy, grad = jax.jit(jax.value_and_grad(edge_energy))(jnp.asarray(pos))
    energies, forces = kernel_model_outputs(model, pos, z, np.zeros(n, int), 1, "pallas", nbr, shifts)
    np.testing.assert_allclose(float(energies[0]), float(energy), rtol=0, atol=tol.ROUNDOFF_F64)
    np.testing.assert_allclose(np.asarray(forces), -np.asarray(grad), rtol=0, atol=tol.ROUNDOFF_F64)
    np.testing.assert_allclose(np.asarray(forces).sum(axis=0), 0.0, rtol=0, atol=tol.ROUNDOFF_F64)


def test_kernel_model_rejects_mismatched_shapes(load_model):
    model = load_model("ultra-tiny-21k", "float64")
    n = 4
    good = dict(positions=jnp.zeros((n, 3)), atomic_numbers=jnp.ones(n, int), neighbors_idx=jnp.full((n, 2), n),
                shifts=jnp.zeros((n, 2, 3)), atom_mask=jnp.ones(n, bool), batch=jnp.zeros(n, int))  # fmt: skip
    for name, bad in (("shifts", jnp.zeros((n, 3, 3))), ("atomic_numbers", jnp.ones(n + 1, int)), ("batch", jnp.zeros(n - 1, int))):
        with pytest.raises(ValueError, match=name):
            energy_and_forces_kernel(model.params, model.config, num_structures=1, **dict(good, **{name: bad}))


@pytest.mark.slow  # one of the heaviest default tests (5-20 s on 2 cores); CI runs it with the slow ones
def test_kernel_model_adds_per_element_reference_energies(load_model):
    """Our own models may carry per-element reference energies: the kernel model adds them as the
    edge-list model does."""
    model = load_model("ultra-tiny-21k", "float64")
    params = dict(model.params, **{painn.ATOM_REFERENCE: {"energies": jnp.linspace(-3.0, 1.0, model.config.max_z + 1)}})
    pos, z, _ = periodic_water_box(repeat=1)
    nbr, shifts = layout.all_pairs_dense(pos, model.config.cutoff)
    n = len(z)
    edges = layout.dense_to_edges(jnp.asarray(nbr), jnp.asarray(shifts))
    mask, batch = jnp.ones(n, bool), jnp.zeros(n, jnp.int32)
    expected = painn.structure_energies(params, model.config, jnp.asarray(pos), jnp.asarray(z), edges, mask, batch, 1)
    energies, _ = energy_and_forces_kernel(params, model.config, jnp.asarray(pos), jnp.asarray(z), jnp.asarray(nbr), jnp.asarray(shifts),
                                           mask, batch, 1, implementation="xla")  # fmt: skip
    np.testing.assert_allclose(np.asarray(energies), np.asarray(expected), rtol=0, atol=tol.ROUNDOFF_F64)
    without = painn.structure_energies(model.params, model.config, jnp.asarray(pos), jnp.asarray(z), edges, mask, batch, 1)
    assert abs(float(expected[0] - without[0])) > 1.0


# ----------------------------------------------------------------------------- real (non-interpret) kernels
def _abstract_gpu():
    """jax >= 0.11 asks the device for its compute capability when lowering Pallas-Triton; lend it
    an abstract H100 (jax 0.10 needs nothing)."""
    import contextlib

    device_cls = getattr(jax.sharding, "AbstractDevice", None)
    if device_cls is None:
        return contextlib.nullcontext()
    device = device_cls(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
    return jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device))


@pytest.mark.parametrize("dtype, precision, envelope", [(jnp.float32, "highest", None), (jnp.float32, "tf32x3", None), (jnp.float64, "highest", None),
                                                       (jnp.float32, "highest", "polynomial")])  # fmt: skip
def test_pallas_kernels_lower_to_triton_for_cuda(system64, dtype, precision, envelope):
    """Catches ops without a Triton lowering on a CPU machine: forward and backward lower to Triton."""
    nbr, args = system64
    args = jax.tree.map(lambda x: x.astype(dtype), args)

    def forward_and_vjp(a):
        out, pullback = jax.vjp(lambda s, v, d, u: message_block(
            s, v, nbr, d, u, a["block"], a["centers"], a["widths"], cutoff=CUTOFF, implementation="pallas", precision=precision,
            envelope=envelope), a["s"], a["v"], a["distances"], a["directions"])  # fmt: skip
        return out, pullback(out)

    try:
        with _abstract_gpu():
            text = jax.jit(forward_and_vjp).trace(args).lower(lowering_platforms=("cuda",)).as_text()
    except (ImportError, RuntimeError) as error:  # no Triton dialect, or (jax >= 0.11) no Triton compiler without a GPU
        pytest.skip(f"no Triton lowering available here: {error}")
    assert text.count("triton") >= 2  # forward and backward kernels


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (run with MLFF_JAX_TEST_ON_DEVICE=1 on one)")
@pytest.mark.parametrize("implementation", ["pallas", "triton"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("envelope", [None, "polynomial"])
def test_compiled_kernels_on_gpu_match_reference(system64, implementation, dtype, envelope):
    """The real kernels (not interpret mode): values and gradients against the float64 reference."""
    if implementation == "triton":
        pytest.importorskip("jax_triton")
    nbr, args64 = system64
    value64, grads64 = loss_and_grads("xla", nbr, args64, envelope=envelope)
    value, grads = loss_and_grads(implementation, nbr, jax.tree.map(lambda x: x.astype(dtype), args64), envelope=envelope)
    rel = tol.ROUNDOFF_F64 if dtype == jnp.float64 else tol.KERNEL_VS_REFERENCE_F32
    assert_close(value, value64, rel=rel)
    for actual, desired in zip(jax.tree.leaves(grads), jax.tree.leaves(grads64)):
        assert_close(np.asarray(actual, np.float64), desired, rel=rel)
