"""Compressed blocks in the fused kernels: the filter W(d) and dW/dd read from the Hermite table
inside the kernel, against the XLA compressed path (``radial_table.tabulated_filter``).

Pallas interpret mode (CPU), the awkward system of test_kernels_message_passing (padding atoms,
empty slots, slots beyond the cutoff, H and K that need padding), with a table of spacing 0.01 Å.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tolerances as tol
from mlff_jax import painn
from mlff_jax.compress import build_filter_table
from mlff_jax.radial_table import tabulated_filter
from test_kernels_message_passing import (
    CUTOFF, DIFF_ARGS, HIDDEN, INTERPRET, NUM_ATOMS, NUM_PADDING, _abstract_gpu, assert_close, loss_and_grads, make_system, run,
)  # fmt: skip

TABLE_SPACING = 0.01  # Å: 250 intervals over the test's 2.5 Å cutoff


def compressed(system):
    """The system's block with its filter table (built in float64, cast to the system's dtype)."""
    nbr, args = system
    dtype = args["s"].dtype
    block64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), args["block"])
    rbf = {"centers": jnp.asarray(args["centers"], jnp.float64), "widths": jnp.asarray(args["widths"], jnp.float64)}
    table = jax.tree.map(lambda x: jnp.asarray(x, dtype), build_filter_table(block64, rbf, CUTOFF, TABLE_SPACING))
    return nbr, dict(args, block=dict(args["block"], filter_table=table))


@pytest.fixture(scope="module")
def table64():
    return compressed(make_system(jnp.float64))


@pytest.fixture(scope="module")
def table32():
    return compressed(make_system(jnp.float32))


@pytest.fixture(scope="module")
def table_grads64(table64):
    nbr, args = table64
    return {impl: loss_and_grads(impl, nbr, args) for impl in ("xla", "pallas")}


def test_reference_uses_the_table_exactly_as_the_model_does(table64):
    """The reference's compressed filter is painn's: tabulated_filter masked by the cutoff."""
    nbr, args = table64
    d = np.asarray(args["distances"])
    valid = np.asarray(nbr) < NUM_ATOMS
    within = valid & (d <= CUTOFF)
    w = tabulated_filter(args["block"]["filter_table"], jnp.asarray(np.where(valid, d, CUTOFF)).reshape(-1), CUTOFF)
    w = np.asarray(w).reshape(*d.shape, -1) * within[..., None]
    h = args["s"].shape[1]
    s = np.asarray(args["s"])
    expected_ds = np.sum(s[np.where(valid, nbr, 0)] * w[..., :h], axis=1)
    ds, _ = run("xla", nbr, args)
    assert_close(ds, expected_ds, tol.ROUNDOFF_F64)


def test_table_kernel_forward_matches_compressed_reference_float64(table64):
    nbr, args = table64
    for actual, desired in zip(run("pallas", nbr, args), run("xla", nbr, args)):
        assert_close(actual, desired, tol.ROUNDOFF_F64)


def test_table_kernel_differs_from_the_network_kernel(table64):
    """The kernel really reads the table: a table of a different network gives other messages."""
    nbr, args = table64
    table = args["block"]["filter_table"]
    shifted = dict(args, block=dict(args["block"], filter_table={"coefficients": table["coefficients"].at[:, 0].add(1.0)}))
    ds, _ = run("pallas", nbr, args)
    ds_shifted, _ = run("pallas", nbr, shifted)
    assert np.abs(np.asarray(ds_shifted - ds)).max() > 0.1


def test_table_kernel_matches_compressed_reference_to_float32_roundoff(table32, table64, table_grads64):
    """Float32 kernel vs the float64 compressed reference, values and gradients, at the float32 floor.

    Both paths evaluate dW/dd from the stored coefficients (c1 + t(2 c2 + 3t c3)) / h, which holds no
    difference of nearly equal numbers, so the kernel agrees with XLA's float32 gradients as well as
    with float64 (distance cotangent: 2e-7 relative for both; with node values stored in float32,
    XLA's autodiff of the interpolant cancelled to 1.3e-5 here and the kernel sat at 2.4e-6).
    """
    nbr, args = table32
    for actual, desired, xla in zip(run("pallas", nbr, args), run("xla", *table64), run("xla", nbr, args)):
        assert actual.dtype == jnp.float32
        assert_close(actual, desired, rel=tol.KERNEL_VS_REFERENCE_F32)
        assert_close(actual, xla, rel=tol.KERNEL_VS_REFERENCE_F32)
    value_p, grads_p = loss_and_grads("pallas", nbr, args)
    value64, grads64 = table_grads64["xla"]
    _, grads32 = loss_and_grads("xla", nbr, args)
    assert_close(value_p, value64, rel=tol.KERNEL_VS_REFERENCE_F32)
    for name in ("s", "v", "distances", "directions"):
        assert_close(grads_p[name], grads64[name], rel=tol.KERNEL_VS_REFERENCE_F32, err_msg=name)
        assert_close(grads_p[name], grads32[name], rel=tol.KERNEL_VS_REFERENCE_F32, err_msg=name)


@pytest.mark.parametrize("name", DIFF_ARGS)
def test_table_kernel_gradients_match_compressed_reference_float64(table_grads64, name):
    """Values and every gradient (table cotangents from the reference's VJP) agree with the XLA path."""
    (value_x, grad_x), (value_p, grad_p) = table_grads64["xla"], table_grads64["pallas"]
    assert_close(value_p, value_x, tol.ROUNDOFF_F64)
    for actual, desired in zip(jax.tree.leaves(grad_p[name]), jax.tree.leaves(grad_x[name])):
        assert np.all(np.isfinite(actual))
        assert_close(actual, desired, tol.ROUNDOFF_F64, err_msg=name)


def test_table_kernel_gradients_vanish_on_padding_empty_slots_and_beyond_cutoff(table64, table_grads64):
    nbr, args = table64
    _, grad = table_grads64["pallas"]
    silent = (np.asarray(nbr) >= NUM_ATOMS) | (np.asarray(args["distances"]) > CUTOFF)
    assert silent.any() and (~silent).any()
    assert np.all(np.asarray(grad["s"])[-NUM_PADDING:] == 0.0) and np.all(np.asarray(grad["v"])[-NUM_PADDING:] == 0.0)
    assert np.all(np.asarray(grad["distances"])[silent] == 0.0)
    assert np.all(np.asarray(grad["directions"])[silent] == 0.0)
    ds, dv = run("pallas", nbr, args)
    assert np.all(np.asarray(ds)[-NUM_PADDING:] == 0.0) and np.all(np.asarray(dv)[-NUM_PADDING:] == 0.0)


@pytest.mark.slow
def test_table_kernel_slot_splits_change_nothing_but_roundoff(table32):
    nbr, args = table32
    (value, grads), (value_split, grads_split) = loss_and_grads("pallas", nbr, args, slot_splits=1), loss_and_grads("pallas", nbr, args, slot_splits=4)
    assert_close(value_split, value, rel=tol.KERNEL_VS_REFERENCE_F32)
    for actual, desired in zip(jax.tree.leaves(grads_split), jax.tree.leaves(grads)):
        assert_close(actual, desired, rel=tol.KERNEL_VS_REFERENCE_F32)


@pytest.mark.parametrize("table", [{"coefficients": jnp.zeros((5, 7))}, {"coefficients": jnp.zeros((5, 3, 3 * HIDDEN))},
                                   {"values": jnp.zeros((6, 3 * HIDDEN)), "slopes": jnp.zeros((6, 3 * HIDDEN))}])  # fmt: skip
def test_malformed_table_raises_value_error(table64, table):
    nbr, args = table64
    bad = dict(args, block=dict(args["block"], filter_table=table))
    with pytest.raises(ValueError, match="filter_table"):
        run("pallas", nbr, bad)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_table_kernels_lower_to_triton_for_cuda(table64, dtype):
    nbr, args = table64
    args = jax.tree.map(lambda x: x.astype(dtype), args)

    def forward_and_vjp(a):
        from mlff_jax.kernels.message_passing import message_block

        out, pullback = jax.vjp(lambda s, v, d, u: message_block(
            s, v, nbr, d, u, a["block"], a["centers"], a["widths"], cutoff=CUTOFF, implementation="pallas"),
            a["s"], a["v"], a["distances"], a["directions"])  # fmt: skip
        return out, pullback(out)

    try:
        with _abstract_gpu():
            text = jax.jit(forward_and_vjp).trace(args).lower(lowering_platforms=("cuda",)).as_text()
    except (ImportError, RuntimeError) as error:
        pytest.skip(f"no Triton lowering available here: {error}")
    assert "painn_message_table_fwd" in text and "painn_message_table_bwd" in text


@pytest.mark.slow
def test_compressed_kernel_model_equals_compressed_edge_list_model(load_model):
    """The whole compressed model through the Pallas kernels (tables inside) equals the XLA compressed
    model on the same molecule, float64."""
    from mlff_jax.kernels.message_passing import layout
    from mlff_jax.kernels.message_passing.model import energy_and_forces_kernel

    model = load_model("ultra-tiny-21k", "float64").compress()
    rng = np.random.default_rng(3)
    pos = rng.uniform(0.0, 5.0, (10, 3))
    z = rng.choice([1, 6, 8], 10)
    nbr, shifts = layout.all_pairs_dense(pos, model.config.cutoff)
    mask, batch = jnp.ones(10, bool), jnp.zeros(10, jnp.int32)
    edges = layout.dense_to_edges(jnp.asarray(nbr), jnp.asarray(shifts))
    energy, grad = jax.value_and_grad(lambda p: painn.structure_energies(model.params, model.config, p, jnp.asarray(z), edges, mask, batch, 1)[0])(
        jnp.asarray(pos))  # fmt: skip
    kernel = jax.jit(lambda params, p: energy_and_forces_kernel(params, model.config, p, jnp.asarray(z), jnp.asarray(nbr), jnp.asarray(shifts),
                                                                mask, batch, 1, implementation="pallas", interpret=INTERPRET))  # fmt: skip
    energies, forces = kernel(model.params, jnp.asarray(pos))
    np.testing.assert_allclose(float(energies[0]), float(energy), rtol=0, atol=tol.ROUNDOFF_F64)
    np.testing.assert_allclose(np.asarray(forces), -np.asarray(grad), rtol=0, atol=tol.ROUNDOFF_F64)
