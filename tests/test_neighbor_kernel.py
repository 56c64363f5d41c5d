"""The Pallas neighbour-gather kernel (interpret mode on CPU) equals the XLA reference exactly."""

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlff_jax import neighbors
from mlff_jax.kernels.neighbors import api, pallas_gather, reference
from mlff_jax.neighbors import binning, plan
from mlff_jax.neighbors.plan import SearchSpec
from test_neighbor_pairs import ase_pairs, as_set, random_system


def binned(positions, cells, batch, pbc, cutoff, method="cell_list", bin_slack=1):
    """Bins for a search (host plan + device binning); bin capacity = fullest bin * bin_slack."""
    positions, cells, batch = np.asarray(positions), np.asarray(cells), np.asarray(batch, np.int64)
    grid, stencil, occupancy = plan.plan_grid(positions, cells, batch, cells.shape[0], pbc, cutoff, method)
    spec = SearchSpec(cutoff, 0.0, pbc, grid, stencil, plan.next_power_of_two(occupancy * bin_slack), 0, cells.shape[0])
    args = (jnp.asarray(positions), jnp.asarray(cells), jnp.asarray(batch, jnp.int32), jnp.ones(len(positions), bool))
    return spec, args, binning.assign_bins(*args, spec)


def gather_both(spec, args, bins, capacity, block=32):
    common = (bins.wrapped, bins.coords, args[2], args[3], bins.table, bins.table_positions, args[1])
    static = dict(grid=spec.grid, stencil=spec.stencil, pbc=spec.pbc, cutoff=spec.cutoff, capacity=capacity)
    expected = reference.gather_neighbors(*common, **static)
    got = pallas_gather.gather_neighbors(*common, bins.order, interpret=True, block=block, **static)
    return expected, got


def assert_same(expected, got, capacity):
    np.testing.assert_array_equal(got[2], expected[2])  # counts
    if capacity:
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    else:
        assert got[0] is None


CASES = {
    "triclinic_cell_list": ((True, True, True), (7.0, 12.0), 60, 3.5),
    "slab": ((True, True, False), (6.0, 10.0), 45, 4.0),
    "wire_thin": ((False, False, True), (2.0, 4.0), 20, 4.5),
    "vacuum": ((False, False, False), (8.0, 12.0), 50, 3.0),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_pallas_gather_equals_reference(case):
    pbc, lengths, n, cutoff = CASES[case]
    rng = np.random.default_rng(len(case))
    positions, cell = random_system(rng, n, pbc, lengths)
    spec, args, bins = binned(positions, cell[None], np.zeros(n), pbc, cutoff)
    capacity = plan.bucket_capacity(int(np.max(reference.gather_neighbors(
        bins.wrapped, bins.coords, args[2], args[3], bins.table, bins.table_positions, args[1],
        grid=spec.grid, stencil=spec.stencil, pbc=pbc, cutoff=cutoff, capacity=0)[2])))
    expected, got = gather_both(spec, args, bins, capacity)
    assert_same(expected, got, capacity)
    assert int(np.asarray(expected[2]).sum()) == len(ase_pairs(positions, cell, pbc, cutoff))


def test_pallas_gather_on_a_batch_with_padding_and_a_partial_last_block():
    rng = np.random.default_rng(21)
    pbc = (True, True, True)
    systems = [random_system(rng, k, pbc, (5.0, 8.0)) for k in (9, 23, 4)]
    positions = np.concatenate([p for p, _ in systems])
    cells = np.stack([c for _, c in systems])
    batch = np.repeat(np.arange(3), [9, 23, 4])
    spec, args, bins = binned(positions, cells, batch, pbc, 4.0, method="all_pairs")
    args = (*args[:3], jnp.asarray(np.arange(36) % 7 != 3))  # some padding atoms
    bins = binning.assign_bins(*args, spec)
    expected, got = gather_both(spec, args, bins, 48, block=16)
    assert_same(expected, got, 48)
    assert np.all(np.asarray(got[0])[np.arange(36) % 7 == 3] == 36)


def test_pallas_gather_overflowing_rows_keep_counting_and_count_only_mode():
    rng = np.random.default_rng(22)
    positions, cell = random_system(rng, 40, (True,) * 3, (6.0, 7.0))
    spec, args, bins = binned(positions, cell[None], np.zeros(40), (True,) * 3, 4.0)
    expected, got = gather_both(spec, args, bins, 3)
    assert_same(expected, got, 3)
    assert int(np.max(got[2])) > 3
    expected, got = gather_both(spec, args, bins, 0)
    assert_same(expected, got, 0)


def test_neighbor_list_with_the_pallas_kernel_equals_the_xla_list():
    rng = np.random.default_rng(23)
    positions, cell = random_system(rng, 50, (True, False, True), (6.0, 11.0))
    common = dict(cell=cell, pbc=(True, False, True), method="cell_list")
    xla = neighbors.neighbor_list_fn(4.0, **common).allocate(positions)
    pallas = neighbors.neighbor_list_fn(4.0, implementation="pallas", interpret=True, **common).allocate(positions)
    np.testing.assert_array_equal(pallas.idx, xla.idx)
    np.testing.assert_array_equal(pallas.image, xla.image)
    assert as_set(*pallas.pairs()) == ase_pairs(positions, cell, (True, False, True), 4.0)


def test_api_rejects_unknown_implementation_and_non_power_of_two_tiles():
    rng = np.random.default_rng(24)
    positions, cell = random_system(rng, 10, (True,) * 3, (6.0, 7.0))
    spec, args, bins = binned(positions, cell[None], np.zeros(10), (True,) * 3, 3.0)
    common = (bins.wrapped, bins.coords, args[2], args[3], bins.table, bins.table_positions, args[1])
    static = dict(grid=spec.grid, stencil=spec.stencil, pbc=spec.pbc, cutoff=3.0, capacity=8)
    with pytest.raises(ValueError, match="implementation"):
        api.gather_neighbors(*common, implementation="cuda", **static)
    with pytest.raises(ValueError, match="power-of-two"):
        pallas_gather.gather_neighbors(*common, bins.order, interpret=True, block=24, **static)


def _cuda_lowering_context():
    """jax >= 0.11 needs an abstract GPU to lower Pallas-Triton without one; 0.10 does not."""
    device_cls = getattr(jax.sharding, "AbstractDevice", None)
    if device_cls is None:
        return contextlib.nullcontext()
    device = device_cls(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
    return jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device))


@pytest.mark.parametrize("dtype, capacity", [(jnp.float32, 16), (jnp.float64, 0)])
def test_pallas_kernel_lowers_to_triton_for_cuda(dtype, capacity):
    """Catches unsupported ops on a CPU machine: the kernel must lower to a Triton module."""
    rng = np.random.default_rng(25)
    positions, cell = random_system(rng, 40, (True, True, False), (7.0, 9.0))
    spec, args, bins = binned(positions.astype(dtype), cell[None], np.zeros(40), (True, True, False), 3.0)
    kernel = functools.partial(pallas_gather.gather_neighbors, grid=spec.grid, stencil=spec.stencil, pbc=spec.pbc, cutoff=3.0, capacity=capacity)
    inputs = (bins.wrapped.astype(dtype), bins.coords, args[2], args[3], bins.table, bins.table_positions.astype(dtype), args[1].astype(dtype), bins.order)
    try:
        with _cuda_lowering_context():
            text = jax.jit(kernel).trace(*inputs).lower(lowering_platforms=("cuda",)).as_text()
    except ImportError as error:  # a jaxlib built without the Triton dialect
        pytest.skip(f"no Triton lowering available: {error}")
    assert "triton" in text


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (run with MLFF_JAX_TEST_ON_DEVICE=1 on one)")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_compiled_pallas_kernel_on_gpu_equals_reference(dtype):
    """The real Triton kernel (not interpret mode) on a 3,000-atom periodic triclinic box."""
    rng = np.random.default_rng(26)
    cell = np.array([[31.0, 0.0, 0.0], [3.0, 30.0, 0.0], [-2.0, 2.5, 32.0]])
    positions = rng.uniform(-0.2, 1.2, (3000, 3)) @ cell
    spec, args, bins = binned(positions, cell[None], np.zeros(3000), (True,) * 3, 5.0)
    args = tuple(a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in args)
    bins = binning.assign_bins(*args, spec)
    common = (bins.wrapped, bins.coords, args[2], args[3], bins.table, bins.table_positions, args[1])
    static = dict(grid=spec.grid, stencil=spec.stencil, pbc=spec.pbc, cutoff=5.0, capacity=128)
    expected = reference.gather_neighbors(*common, **static)
    got = pallas_gather.gather_neighbors(*common, bins.order, **static)
    if dtype == jnp.float64:
        assert_same(expected, got, 128)
    else:  # float32: rounding may differ (FMA) only for pairs at the cutoff distance
        differ = np.nonzero(np.asarray(got[2]) != np.asarray(expected[2]))[0]
        assert len(differ) <= 2, differ
