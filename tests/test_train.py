"""Distillation pipeline: data container, packing, reference energies, training, the bundled model."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlff_jax
import tolerances as tol
from mlff_jax import painn
from mlff_jax.config import PaiNNConfig
from mlff_jax.io import read_checkpoint, write_checkpoint
from mlff_jax.model import PaiNNStudent
from mlff_jax.train.batching import Packer, to_batch
from mlff_jax.train.dataset import SPLITS, Dataset
from mlff_jax.train.evaluate import Predictor, dataset_errors, energies_and_forces, nve_run
from mlff_jax.train.trainer import TrainConfig, fit_reference_energies, fresh_params, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUBSET = ROOT / "tests" / "data" / "gfn2_xtb_test_subset.npz"
TINY = PaiNNConfig(hidden_dim=16, num_interactions=2, num_rbf=8, cutoff=5.0, max_z=20)
needs_teacher = pytest.mark.skipif(
    importlib.util.find_spec("tblite") is None or importlib.util.find_spec("rdkit") is None,
    reason="data generation needs tblite and rdkit (pip install 'mlff-jax[train]')",
)


@pytest.fixture(scope="module")
def subset() -> Dataset:
    return Dataset.load(SUBSET)


def few_systems(dataset: Dataset, n_train: int, n_val: int) -> Dataset:
    """The first n_train + n_val systems, relabelled train / validation (the committed file is all test)."""
    keep = np.isin(dataset.system, np.arange(n_train + n_val))
    small = dataset.select(keep)
    split = np.full(len(small.system_name), SPLITS["test"], np.int8)
    split[:n_train] = SPLITS["train"]
    split[n_train : n_train + n_val] = SPLITS["validation"]
    return dataclasses.replace(small, system_split=split)


def float64_params(config, seed=0):
    return painn.cast_params(fresh_params(config, seed), jnp.float64)


# ------------------------------------------------------------------------------------------ data
def test_committed_subset_is_small_and_holds_only_test_molecules(subset):
    assert SUBSET.stat().st_size < 2_000_000
    assert np.all(subset.frame_split() == SPLITS["test"])
    assert set(subset.elements()) <= {1, 6, 7, 8, 9, 16, 17}
    assert np.all(np.isfinite(subset.energy)) and np.all(np.isfinite(subset.forces))


def test_dataset_round_trips_and_selects_whole_frames(subset, tmp_path):
    path = tmp_path / "d.npz"
    subset.save(path)
    again = Dataset.load(path)
    for field in ("numbers", "positions", "forces", "energy", "num_atoms", "system"):
        np.testing.assert_array_equal(getattr(again, field), getattr(subset, field))
    picked = subset.select([3, 0])
    z, r, e, f = subset.frame(3)
    np.testing.assert_array_equal(picked.frame(0)[1], r)
    assert picked.frame(0)[2] == e and len(picked.frame(1)[0]) == subset.num_atoms[0]


def test_split_is_by_system_so_no_test_molecule_is_in_training(subset):
    ds = few_systems(subset, 4, 2)
    train_names = set(ds.system_name[np.unique(ds.split("train").system)])
    held_out = set(ds.system_name[np.unique(ds.split("validation").system)])
    assert train_names and held_out and not (train_names & held_out)


# ------------------------------------------------------------------------------------------ model pieces
def test_packed_batches_give_the_same_energies_and_forces_as_the_model(subset):
    """Cutoff-pruned per-frame edges + padding == the model's dense all-pairs evaluation, in float64."""
    ds = subset.select(np.arange(0, 120, 10))  # 12 frames of 12 molecules
    params = float64_params(TINY)
    model = PaiNNStudent(TINY, params, dtype="float64")
    packer = Packer(ds, TINY.cutoff)
    shape = packer.auto_shape(5)
    evaluate = jax.jit(lambda p, b: energies_and_forces(p, TINY, b, jax.lax.Precision.HIGHEST))
    for group in packer.groups(np.arange(ds.num_frames), shape):
        energies, forces = evaluate(params, to_batch({k: jnp.asarray(v) for k, v in packer.pack(group, shape, np.float64).items()}))
        a0 = 0
        for slot, i in enumerate(group):
            z, r, _, _ = ds.frame(i)
            e_ref, f_ref = model.energy_and_forces(r, z)
            assert abs(float(energies[slot]) - float(e_ref)) <= tol.ROUNDOFF_F64
            np.testing.assert_allclose(np.asarray(forces[a0 : a0 + len(z)]), np.asarray(f_ref), rtol=0, atol=tol.ROUNDOFF_F64)
            a0 += len(z)
        assert np.all(np.asarray(energies)[len(group):] == 0.0)  # padding slots are exactly zero
        assert np.all(np.asarray(forces)[a0:] == 0.0)  # padding atoms feel exactly no force


def test_analytic_and_autodiff_training_forces_give_the_same_parameter_gradient(subset):
    ds = subset.select(np.arange(0, 60, 10))
    params = {**float64_params(TINY), painn.ATOM_REFERENCE: {"energies": jnp.linspace(-1.0, 1.0, TINY.max_z + 1)}}
    packer = Packer(ds, TINY.cutoff)
    shape = packer.auto_shape(6)
    batch = to_batch({k: jnp.asarray(v) for k, v in packer.pack(list(range(ds.num_frames)), shape, np.float64).items()})

    def loss(p, method):
        energies, forces = energies_and_forces(p, TINY, batch, jax.lax.Precision.HIGHEST, method)
        return jnp.sum(jnp.where(batch.structure_mask, energies - batch.energy, 0.0) ** 2) + jnp.sum((forces - batch.forces) ** 2)

    grads = {m: jax.jit(jax.grad(loss), static_argnums=1)(params, m) for m in ("autodiff", "analytic")}
    for a, b in zip(jax.tree_util.tree_leaves(grads["autodiff"]), jax.tree_util.tree_leaves(grads["analytic"])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=tol.PARAM_GRAD_F64 * max(1.0, float(np.abs(a).max())))


def test_atom_reference_adds_one_energy_per_element_and_no_force(subset):
    z, r, _, _ = subset.frame(0)
    params = float64_params(TINY)
    refs = np.linspace(-5.0, 5.0, TINY.max_z + 1)
    plain = PaiNNStudent(TINY, params, dtype="float64")
    shifted = PaiNNStudent(TINY, {**params, painn.ATOM_REFERENCE: {"energies": refs}}, dtype="float64")
    e0, f0 = plain.energy_and_forces(r, z)
    e1, f1 = shifted.energy_and_forces(r, z)
    assert abs(float(e1) - float(e0) - refs[z].sum()) <= tol.ROUNDOFF_F64
    np.testing.assert_array_equal(np.asarray(f1), np.asarray(f0))


def test_checkpoint_stores_the_optional_atom_reference_and_still_rejects_unknown_tensors(tmp_path):
    params = painn.flatten(float64_params(TINY))
    refs = np.arange(TINY.max_z + 1, dtype=np.float64)
    write_checkpoint(tmp_path / "ref.safetensors", TINY, {**params, "atom_reference/energies": refs})
    config, flat = read_checkpoint(tmp_path / "ref.safetensors")
    assert config == TINY
    np.testing.assert_array_equal(flat["atom_reference/energies"], refs)
    write_checkpoint(tmp_path / "bad_shape.safetensors", TINY, {**params, "atom_reference/energies": refs[:5]})
    with pytest.raises(ValueError, match="wrong shape: atom_reference/energies"):
        read_checkpoint(tmp_path / "bad_shape.safetensors")
    write_checkpoint(tmp_path / "extra.safetensors", TINY, {**params, "atom_reference/bias": refs})
    with pytest.raises(ValueError, match="unexpected tensor: atom_reference/bias"):
        read_checkpoint(tmp_path / "extra.safetensors")


def test_reference_energy_fit_recovers_per_element_energies(subset):
    truth = np.zeros(21)
    truth[[1, 6, 7, 8, 9, 16, 17]] = [-10.0, -40.0, -55.0, -70.0, -90.0, -100.0, -120.0]
    synthetic = dataclasses.replace(subset, energy=subset.composition(20) @ truth + 0.25)
    refs = fit_reference_energies(synthetic, np.full(subset.num_frames, 0.25), 20)
    present = subset.elements()
    np.testing.assert_allclose(refs[present], truth[present], atol=1e-8)
    assert np.all(refs[[z for z in range(21) if z not in present]] == 0.0)


def test_config_rejects_unknown_settings(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[training]\nlearning_rat = 1e-3\n')
    with pytest.raises(ValueError, match="unknown settings \\['learning_rat'\\]"):
        TrainConfig.from_toml(path)
    path.write_text('[training]\nprecision = "fast"\n')
    with pytest.raises(ValueError, match="precision"):
        TrainConfig.from_toml(path)


# ------------------------------------------------------------------------------------------ training
def tiny_run(tmp_path, dataset: Dataset, **settings) -> dict:
    data = tmp_path / "data.npz"
    dataset.save(data)
    base = dict(data=str(data), out_dir=str(tmp_path / "run"), hidden_dim=16, num_interactions=2, num_rbf=8, max_z=20,
                batch_structures=8, learning_rate=3e-3, warmup_steps=5, max_steps=60, steps_per_call=10, eval_every=30,
                log_every=1000, ema_decay=0.9)
    return train(TrainConfig(**{**base, **settings}), log=lambda *a, **k: None)


@pytest.fixture(scope="module")
def tiny_training(subset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    return tmp, tiny_run(tmp, few_systems(subset, 5, 2))


def test_training_decreases_the_validation_error(tiny_training):
    _, log = tiny_training
    first, last = log["history"][0], log["history"][-1]
    assert log["steps"] == 60 and log["stop_reason"] == "max_steps"
    assert last["score"] < first["score"]
    assert log["validation"]["force_mae"] < first["validation"]["force_mae"]


def test_trained_checkpoint_round_trips_through_load(tiny_training, subset):
    tmp, log = tiny_training
    model = mlff_jax.load(log["checkpoint"], dtype="float64")
    assert painn.ATOM_REFERENCE in model.params
    saved = json.loads((tmp / "run" / "log.json").read_text())
    assert saved["best_step"] == log["best_step"]
    # the loaded model reproduces the trainer's validation errors (float32 training vs float64 here)
    val = Dataset.load(tmp / "data.npz").split("validation")
    again = dataset_errors(model, val)
    assert again["force_mae"] == pytest.approx(log["validation"]["force_mae"], rel=1e-4)
    assert again["energy_mae_per_atom"] == pytest.approx(log["validation"]["energy_mae_per_atom"], rel=1e-3)


def test_fine_tuning_starts_from_the_given_checkpoint(tiny_training, subset, tmp_path):
    _, log = tiny_training
    tuned = tiny_run(tmp_path, few_systems(subset, 5, 2), init=log["checkpoint"], max_steps=10, eval_every=10,
                     learning_rate=1e-9, warmup_steps=1)
    # with a vanishing learning rate the fine-tuned weights are the starting weights
    assert tuned["validation"]["force_mae"] == pytest.approx(log["validation"]["force_mae"], rel=1e-4)


def test_predictor_matches_dataset_order(subset):
    ds = subset.select(np.arange(7))
    params = float64_params(TINY)
    energies, forces = Predictor(ds, TINY, batch_structures=3, dtype=np.float64)(params)
    model = PaiNNStudent(TINY, params, dtype="float64")
    for i in range(ds.num_frames):
        z, r, _, _ = ds.frame(i)
        e, f = model.energy_and_forces(r, z)
        assert abs(energies[i] - float(e)) <= tol.ROUNDOFF_F64
        np.testing.assert_allclose(forces[ds.offsets[i] : ds.offsets[i + 1]], np.asarray(f), atol=tol.ROUNDOFF_F64, rtol=0)


# ------------------------------------------------------------------------------------------ bundled model
def test_default_model_loads_from_the_package_and_gives_finite_forces_summing_to_zero():
    model = mlff_jax.load("default")
    assert model.config == PaiNNConfig(hidden_dim=64, num_interactions=2, num_rbf=12, cutoff=5.0, max_z=100)
    from ase.build import molecule

    ethanol = molecule("CH3CH2OH")
    energy, forces = model.energy_and_forces(ethanol.positions, ethanol.numbers)
    assert np.isfinite(float(energy)) and np.all(np.isfinite(np.asarray(forces)))
    assert np.abs(np.asarray(forces).sum(0)).max() < 1e-3  # float32 round-off


def test_default_model_errors_on_the_committed_subset_match_its_model_card(subset):
    card = json.loads((ROOT / "weights" / "default.metrics.json").read_text())["subset"]
    measured = dataset_errors(mlff_jax.load("default", dtype="float64"), subset)
    assert measured["frames"] == card["frames"]
    for key in ("energy_mae_per_atom", "force_mae", "energy_rmse_per_atom", "force_rmse"):
        assert measured[key] == pytest.approx(card[key], rel=tol.MODEL_CARD_METRICS_REL), key


@pytest.mark.slow
def test_nve_of_ethanol_with_the_default_model_is_finite_and_bound():
    from ase.build import molecule

    result = nve_run(mlff_jax.load("default", dtype="float64"), molecule("CH3CH2OH"), duration_ps=0.1, record_every=50)
    assert result["finite"] and result["stable"] and result["steps"] == 200


def test_nve_integrator_conserves_the_energy_of_harmonic_springs():
    """The NVE check itself, on a potential with a known answer: springs between all atom pairs."""
    from ase.build import molecule

    ethanol = molecule("CH3CH2OH")
    rest = np.linalg.norm(ethanol.positions[:, None] - ethanol.positions[None], axis=-1)

    class Springs:
        dtype = "float64"

        def energy_fn(self, r, z):
            d = jnp.sqrt(jnp.sum((r[:, None] - r[None]) ** 2, -1) + jnp.eye(len(r)))
            return 2.5 * jnp.sum(jnp.triu((d - rest) ** 2, 1))

    result = nve_run(Springs(), ethanol, duration_ps=1.0, record_every=100)
    assert result["finite"] and result["stable"] and result["steps"] == 2000
    assert result["max_energy_deviation_eV"] < 5e-3  # 0.5 fs steps, stiff springs: ~1e-3 eV
    assert 50 < result["mean_temperature_K"] < 200  # equipartition: about half the initial 300 K


@pytest.mark.slow
def test_default_model_loads_from_an_installed_wheel(tmp_path):
    """Builds the wheel, installs it into a bare folder, and loads "default" from there (no source tree)."""
    import shutil

    source, wheels, target = tmp_path / "source", tmp_path / "wheels", tmp_path / "site"
    # a clean copy: a stale build/ or *.egg-info in the checkout could hide missing package data
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".device", "build", "*.egg-info", "__pycache__", ".pytest_cache", "runs"))
    offline = ["--no-build-isolation"] if all(importlib.util.find_spec(p) for p in ("setuptools", "wheel")) else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *offline, "-q", str(source), "-w", str(wheels)],
                   check=True, cwd=tmp_path)
    wheel = next(wheels.glob("mlff_jax-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True)
    code = ("import mlff_jax, pathlib; m = mlff_jax.load('default'); "
            "from mlff_jax.api import bundled_model_path as p; "
            "print(pathlib.Path(mlff_jax.__file__).parent, p('default'), m.config.hidden_dim)")
    env = {**os.environ, "PYTHONPATH": str(target), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path, env=env).stdout.split()
    assert out[0].startswith(str(target)) and out[1].startswith(str(target)) and out[2] == "64"


# ------------------------------------------------------------------------------------------ teacher
@needs_teacher
def test_data_generation_is_seeded_and_labels_with_the_teacher():
    from mlff_jax.train.data import GenerationConfig, generate

    cfg = GenerationConfig(max_molecules=2, water_cluster_sizes=(2,), water_clusters_per_size=1, dimers=0, mixed_clusters=0,
                           equilibration_steps=4, frames_per_segment=2, steps_between_frames=2, displaced_frames=1, cluster_frames=2)
    quiet = lambda *a, **k: None  # noqa: E731
    first, second = generate(cfg, log=quiet), generate(cfg, log=quiet)
    assert first.num_frames == 5 + 5 + 2 and list(first.system_name) == ["O", "N", "cluster:O.O#0"]
    # bit-identical with OMP_NUM_THREADS=1 (as `mlff-jax data` runs); threaded SCF sums differ in round-off
    np.testing.assert_allclose(first.positions, second.positions, rtol=0, atol=1e-9)
    np.testing.assert_allclose(first.energy, second.energy, rtol=0, atol=1e-9)
    # labels are the teacher's: re-evaluate one frame with tblite directly
    from ase import Atoms

    from mlff_jax.train.data import teacher_calculator

    z, r, e, f = first.frame(4)
    atoms = Atoms(numbers=z, positions=r)
    atoms.calc = teacher_calculator()
    assert abs(atoms.get_potential_energy() - e) < tol.TEACHER_RELABEL_ENERGY
    np.testing.assert_allclose(atoms.get_forces(), f, rtol=0, atol=tol.TEACHER_RELABEL_FORCES)
