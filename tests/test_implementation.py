"""Choosing the message-passing implementation of the model: ``load(..., implementation=)``,
``PaiNNStudent.with_implementation``, the measured ``auto`` table, and the full model through each
implementation (Pallas in interpret mode on CPU) against upstream and against the XLA path."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tolerances as tol
from mlff_jax import implementation as impl_lib
from mlff_jax.implementation import choose, size_class, workload_key

GPU = jax.default_backend() == "gpu"
KERNELS = ["pallas"] + (["triton"] if GPU and impl_lib.triton_available() else [])


def with_impl(model, implementation):
    return model.with_implementation(implementation, interpret=not GPU and implementation == "pallas")


def reference_batch(ref, max_atoms=None):
    """Reference structures in one batch (the first ones up to ``max_atoms`` atoms): R, Z, batch, E, F."""
    names, total = [], 0
    for name in ref.structures:
        n = len(ref[name, "Z"])
        if max_atoms is not None and total + n > max_atoms:
            continue
        names.append(name)
        total += n
    R = np.concatenate([ref[n, "R"] for n in names])
    Z = np.concatenate([ref[n, "Z"] for n in names])
    batch = np.concatenate([np.full(len(ref[n, "Z"]), i) for i, n in enumerate(names)])
    return R, Z, batch, np.array([ref[n, "E_f64"] for n in names]), np.concatenate([ref[n, "F_f64"] for n in names])


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("implementation", ["xla"] + KERNELS)
def test_reference_set_through_each_implementation_matches_upstream_float64(implementation, reference, load_model):
    """All 66 reference structures in one batch (531 atoms: the neighbour-list path of the model)."""
    model = with_impl(load_model("ultra-tiny-21k", "float64"), implementation)
    R, Z, batch, E, F = reference_batch(reference("ultra-tiny-21k"))
    assert model.message_implementation(len(Z)) == implementation
    energies, forces = model.energy_and_forces(R, Z, batch=batch)
    np.testing.assert_allclose(energies, E, rtol=0, atol=tol.PARITY_F64_ENERGY)
    np.testing.assert_allclose(forces, F, rtol=0, atol=tol.PARITY_F64_FORCES)


@pytest.mark.parametrize("implementation", KERNELS)
def test_small_batch_all_pairs_path_through_kernels_matches_upstream_float64(implementation, reference, load_model):
    """Molecules padded to <= 128 atoms take the all-pairs path (dense all-pairs slots in the kernels)."""
    model = with_impl(load_model("ultra-tiny-21k", "float64"), implementation)
    R, Z, batch, E, F = reference_batch(reference("ultra-tiny-21k"), max_atoms=60)
    energies, forces = model.energy_and_forces(R, Z, batch=batch)
    np.testing.assert_allclose(energies, E, rtol=0, atol=tol.PARITY_F64_ENERGY)
    np.testing.assert_allclose(forces, F, rtol=0, atol=tol.PARITY_F64_FORCES)


def test_compressed_model_through_kernels_equals_compressed_xla_float32(reference, load_model):
    """The compressed model (tables inside the kernels) equals the compressed XLA path to float32
    round-off, and stays within the compression error of upstream."""
    xla = load_model("ultra-tiny-21k", "float32").compress().with_implementation("xla")
    kernel = with_impl(xla, "pallas")
    R, Z, batch, E, F = reference_batch(reference("ultra-tiny-21k"), max_atoms=60)
    e_xla, f_xla = xla.energy_and_forces(R, Z, batch=batch)
    e_k, f_k = kernel.energy_and_forces(R, Z, batch=batch)
    assert f_k.dtype == np.float32
    scale = np.abs(f_xla).max()
    np.testing.assert_allclose(f_k, f_xla, rtol=0, atol=tol.KERNEL_VS_REFERENCE_F32 * scale)
    np.testing.assert_allclose(e_k, e_xla, rtol=0, atol=tol.KERNEL_VS_REFERENCE_F32 * np.abs(e_xla).max())
    np.testing.assert_allclose(f_k, F, rtol=0, atol=tol.PARITY_F32_FORCES)


def periodic_box(seed=0):
    rng = np.random.default_rng(seed)
    from ase.build import molecule

    water = molecule("H2O").positions
    centres = rng.uniform(0.0, 6.0, (4, 3))
    pos = (centres[:, None, :] + water[None]).reshape(-1, 3)
    return pos, np.tile([8, 1, 1], 4), np.array([[6.0, 0.0, 0.0], [0.5, 6.2, 0.0], [0.0, 0.3, 5.8]])


def test_energy_fn_with_a_periodic_neighbor_list_through_pallas_equals_xla(load_model):
    """``energy_fn`` with a neighbour list (what MD and JAX-MD-style loops use) gives the XLA path's
    forces through the kernels, float64, on a triclinic box with several images per pair."""
    from mlff_jax import neighbors

    xla = load_model("ultra-tiny-21k", "float64").with_implementation("xla")
    kernel = with_impl(xla, "pallas")
    pos, z, cell = periodic_box()
    nbrs = neighbors.neighbor_list_fn(xla.config.cutoff, skin=0.3, cell=cell).allocate(pos)
    grads = [jax.jit(jax.grad(lambda r, m=m: m.energy_fn(r, jnp.asarray(z), neighbors=nbrs)))(jnp.asarray(pos)) for m in (xla, kernel)]
    np.testing.assert_allclose(np.asarray(grads[1]), np.asarray(grads[0]), rtol=0, atol=tol.ROUNDOFF_F64)
    np.testing.assert_allclose(np.asarray(grads[1]).sum(axis=0), 0.0, rtol=0, atol=tol.ROUNDOFF_F64)


@pytest.mark.slow
def test_periodic_energy_forces_and_stress_through_pallas_equal_xla(load_model):
    """The periodic host path: forces and the stress (through the strained shifts of the slots)."""
    xla = load_model("ultra-tiny-21k", "float64").with_implementation("xla")
    kernel = with_impl(xla, "pallas")
    pos, z, cell = periodic_box()
    e0, f0, s0 = xla.energy_forces_stress(pos, z, cell=cell)
    e1, f1, s1 = kernel.energy_forces_stress(pos, z, cell=cell)
    np.testing.assert_allclose(e1, e0, rtol=0, atol=tol.ROUNDOFF_F64)
    np.testing.assert_allclose(f1, f0, rtol=0, atol=tol.ROUNDOFF_F64)
    np.testing.assert_allclose(s1, s0, rtol=0, atol=tol.ROUNDOFF_F64)


def test_energy_fn_without_neighbors_and_traced_forces_use_the_kernels(load_model):
    """energy_fn (all pairs) and energy_and_forces under jit route through the kernels too."""
    from ase.build import molecule

    xla = load_model("ultra-tiny-21k", "float64").with_implementation("xla")
    kernel = with_impl(xla, "pallas")
    atoms = molecule("CH3CH2OH")
    r, z = jnp.asarray(atoms.positions), jnp.asarray(atoms.numbers)
    assert "pallas_call" in str(jax.make_jaxpr(jax.grad(lambda p: kernel.energy_fn(p, z)))(r))
    assert "pallas_call" not in str(jax.make_jaxpr(jax.grad(lambda p: xla.energy_fn(p, z)))(r))
    g0, g1 = (jax.jit(jax.grad(lambda p, m=m: m.energy_fn(p, z)))(r) for m in (xla, kernel))
    np.testing.assert_allclose(np.asarray(g1), np.asarray(g0), rtol=0, atol=tol.ROUNDOFF_F64)
    e1, f1 = jax.jit(kernel.energy_and_forces)(r, z)
    np.testing.assert_allclose(np.asarray(f1), -np.asarray(g0), rtol=0, atol=tol.ROUNDOFF_F64)


# ----------------------------------------------------------------------------- selection
def test_auto_is_the_default_and_picks_xla_on_cpu():
    import mlff_jax

    model = mlff_jax.load(_checkpoint("ultra-tiny-21k"), dtype="float64")
    assert model.implementation == "auto"
    if not GPU:
        assert model.message_implementation(100_000) == "xla"
        assert model.compress().message_implementation(12) == "xla"


def _checkpoint(name):
    from conftest import upstream_path

    return upstream_path("checkpoints", f"{name}.model.pt")


H100 = "NVIDIA H100 80GB HBM3"


def test_auto_follows_the_measured_table_on_a_gpu(monkeypatch):
    """On a GPU, auto takes the first installed implementation of the measured ranking; anything
    not measured (other sizes, widths, devices, precisions) gets XLA."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(impl_lib, "device_kind", lambda: H100)
    monkeypatch.setattr(impl_lib, "triton_available", lambda: False)
    key = workload_key("float32", "highest", False, 128, 10_000)
    assert key == "float32/highest/exact/H128/10k"
    choices = {H100: {key: ["triton", "pallas", "xla"], workload_key("float32", "highest", True, 128, 500): ["pallas", "xla"]}}
    assert choose("auto", 10_000, "float32", "highest", False, 128, choices) == "pallas"  # triton not installed
    assert choose("auto", 800, "float32", "highest", True, 128, choices) == "pallas"
    assert choose("auto", 100_000, "float32", "highest", False, 128, choices) == "xla"  # size not measured
    assert choose("auto", 10_000, "float32", "highest", False, 64, choices) == "xla"  # width not measured
    assert choose("auto", 10_000, "float64", "highest", False, 128, choices) == "xla"
    assert choose("auto", 10_000, "float32", "high", False, 128, choices) == "xla"
    assert choose("xla", 10_000, "float32", "highest", False, 128, choices) == "xla"
    monkeypatch.setattr(impl_lib, "device_kind", lambda: "NVIDIA A100-SXM4-40GB")
    assert choose("auto", 10_000, "float32", "highest", False, 128, choices) == "xla"


def test_size_classes_cover_every_size():
    assert [size_class(n) for n in (1, 300, 301, 3000, 3001, 30_000, 30_001, 10**7)] == ["small", "small", "1k", "1k", "10k", "10k", "100k", "100k"]


def test_committed_table_is_well_formed():
    table = json.loads(impl_lib.CHOICE_FILE.read_text())
    for device, entries in table["choices"].items():
        for key, ranking in entries.items():
            dtype, precision, kind, width, size = key.split("/")
            assert dtype in ("float32", "float64") and kind in ("exact", "compressed") and width.startswith("H")
            assert size in [name for name, _ in impl_lib.SIZE_CLASSES]
            assert ranking[-1] == "xla" and set(ranking) <= {"xla", "pallas", "triton"}, (device, key)


def test_make_kernels_choice_ranks_by_measured_time_and_never_picks_a_wrong_kernel(tmp_path):
    import sys

    sys.path.insert(0, str(impl_lib.CHOICE_FILE.parents[1] / "benchmarks"))
    import make_kernels_choice

    def row(key, implementation, ms, **extra):
        return dict(key=key, implementation=implementation, median_s=ms / 1e3, finite=True, **extra)

    k1, k2, k3, k4 = "float32/highest/exact/H128/1k", "float32/highest/exact/H128/10k", "float32/highest/exact/H128/100k", "float32/highest/compressed/H128/1k"
    rows = [
        row(k1, "xla", 1.0), row(k1, "pallas", 0.99), row(k1, "triton", 2.0),  # < 5 % faster: XLA stays
        row(k2, "xla", 10.0), row(k2, "pallas", 5.0), row(k2, "triton", 4.0),
        dict(key=k3, implementation="xla", error="RESOURCE_EXHAUSTED: out of memory"), row(k3, "pallas", 50.0),
        row(k4, "xla", 2.0), row(k4, "pallas", 1.0, max_force_diff_vs_xla_eV_A=0.5),  # wrong forces: never chosen
    ]
    path = tmp_path / "bench_api.json"
    path.write_text(json.dumps({"environment": {"device": H100, "platform": "gpu", "time": "t"}, "workload": make_kernels_choice.API_WORKLOAD, "rows": rows}))
    table = make_kernels_choice.main([str(path), "--out", str(tmp_path / "choice.json")])
    assert table["choices"] == {H100: {k2: ["triton", "pallas", "xla"], k3: ["pallas", "xla"]}}
    assert table["measurements_ms"][H100][k1] == {"pallas": 0.99, "triton": 2.0, "xla": 1.0}
    assert any("never chosen" in note for note in table["notes"])


# ----------------------------------------------------------------------------- errors
def test_unknown_implementation_raises_value_error(load_model):
    import mlff_jax

    model = load_model("ultra-tiny-21k", "float64")
    with pytest.raises(ValueError, match="implementation must be one of"):
        model.with_implementation("cuda")
    with pytest.raises(ValueError, match="implementation must be one of"):
        mlff_jax.load(_checkpoint("ultra-tiny-21k"), implementation="XLA")


@pytest.mark.skipif(impl_lib.triton_available(), reason="jax-triton is installed here")
def test_triton_without_jax_triton_raises_with_install_hint(load_model):
    with pytest.raises(ValueError, match=r"pip install 'mlff-jax\[triton\]'"):
        load_model("ultra-tiny-21k", "float64").with_implementation("triton")


@pytest.mark.skipif(GPU, reason="a GPU runs Pallas kernels without interpret mode")
def test_pallas_without_a_gpu_needs_interpret_mode(load_model):
    model = load_model("ultra-tiny-21k", "float64")
    with pytest.raises(ValueError, match="interpret=True"):
        model.with_implementation("pallas")
    assert model.with_implementation("pallas", interpret=True).implementation == "pallas"
