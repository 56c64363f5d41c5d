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


def test_float32_copy_halves_the_labels_and_loads_as_float64(subset, tmp_path):
    subset.save(tmp_path / "f64.npz")
    subset.save(tmp_path / "f32.npz", float32=True)
    again = Dataset.load(tmp_path / "f32.npz")
    assert again.positions.dtype == np.float64 and again.metadata["stored_float32"]
    np.testing.assert_array_equal(again.positions, subset.positions.astype(np.float32))
    np.testing.assert_array_equal(again.forces, subset.forces.astype(np.float32))
    np.testing.assert_array_equal(again.energy, subset.energy)  # energies stay float64
    assert (tmp_path / "f32.npz").stat().st_size < 0.7 * (tmp_path / "f64.npz").stat().st_size


def test_split_is_by_system_so_no_test_molecule_is_in_training(subset):
    ds = few_systems(subset, 4, 2)
    train_names = set(ds.system_name[np.unique(ds.split("train").system)])
    held_out = set(ds.system_name[np.unique(ds.split("validation").system)])
    assert train_names and held_out and not (train_names & held_out)


# ------------------------------------------------------------------------------------------ model pieces
@pytest.mark.slow  # one of the heaviest default tests (5-20 s on 2 cores); CI runs it with the slow ones
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


@pytest.mark.slow  # one of the heaviest default tests (5-20 s on 2 cores); CI runs it with the slow ones
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
    assert dataclasses.replace(config, elements=None) == TINY  # a file recording no elements reads with upstream's set
    assert config.elements == (1, 6, 7, 8, 9, 16, 17)
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


@pytest.mark.slow  # one of the heaviest default tests (5-20 s on 2 cores); CI runs it with the slow ones
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
    # the saved model records the elements of its training set, and refuses others
    assert model.config.elements == tuple(Dataset.load(tmp / "data.npz").split("train").elements())
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


@pytest.mark.slow  # one of the heaviest default tests (5-20 s on 2 cores); CI runs it with the slow ones
def test_validation_on_a_subset_still_reports_the_best_weights_on_all_validation_frames(subset, tmp_path):
    ds = few_systems(subset, 3, 2)
    log = tiny_run(tmp_path, ds, validation_frames=3, max_steps=20, eval_every=10)
    assert all(h["validation"]["frames"] == 3 for h in log["history"])
    assert log["validation_subset"]["frames"] == 3
    assert log["validation"]["frames"] == ds.split("validation").num_frames > 3


@pytest.mark.slow
def test_time_budget_covers_the_whole_run_including_the_final_evaluations(subset, tmp_path):
    ds = few_systems(subset, 5, 3)
    # (before the first validation the trainer keeps 30 s for the final evaluations: budgets must exceed that)
    # 2 minutes: with 1 the 30 s kept for the final evaluations left ~30 s of training, which on a loaded
    # 2-core machine covered only the compilation and ~10 steps
    log = tiny_run(tmp_path, ds, max_minutes=2.0, max_steps=10**6, eval_every=20, validation_frames=4)
    assert log["stop_reason"] == "time budget" and log["steps"] > 20
    assert log["wall_seconds"] <= 120


def test_weight_decay_shrinks_weight_matrices_and_not_biases():
    from mlff_jax.train.trainer import adam_or_adamw

    cfg = TrainConfig(learning_rate=0.01, weight_decay=0.1)
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    optimizer = adam_or_adamw(cfg)
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zero, optimizer.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.01 * 0.1 * np.ones((2, 3)), rtol=1e-6)
    np.testing.assert_array_equal(updates["b"], np.zeros(3))
    plain = adam_or_adamw(TrainConfig(learning_rate=0.01))
    updates, _ = plain.update(zero, plain.init(params), params)
    np.testing.assert_array_equal(updates["w"], np.zeros((2, 3)))


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
    assert model.config == PaiNNConfig(hidden_dim=64, num_interactions=2, num_rbf=12, cutoff=5.0, max_z=100, elements=(1, 6, 7, 8, 9, 16, 17))
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
@pytest.mark.slow  # tblite SCF on a few frames: 30-40 s on the 2-core CI machine
def test_data_generation_is_seeded_and_labels_with_the_teacher():
    from mlff_jax.train.data import GenerationConfig, generate

    cfg = GenerationConfig(max_molecules=2, water_cluster_sizes=(2,), water_clusters_per_size=1, dimers=0, mixed_clusters=0,
                           more_dimers=0, more_mixed_clusters=0, stretch_water_sizes=(), stretch_dimers=0,
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


def test_molecule_list_has_thousands_of_distinct_valid_molecules():
    from rdkit import Chem

    from mlff_jax.train.data import DEFAULT_SMILES_FILE, read_smiles
    from mlff_jax.train.enumerate_molecules import MARKER, acceptable, split_file

    smiles = read_smiles(DEFAULT_SMILES_FILE)  # raises on a repeated line
    canonical = {Chem.MolToSmiles(Chem.MolFromSmiles(s)) for s in smiles}
    assert len(canonical) == len(smiles) >= 2000
    kept, generated = split_file(DEFAULT_SMILES_FILE)
    assert MARKER in DEFAULT_SMILES_FILE.read_text() and len(generated) >= 2000
    assert all(acceptable(Chem.MolFromSmiles(s), 25) for s in generated)
    # the committed test subset's molecules are still listed (their split and frames are unchanged)
    listed = set(smiles)
    assert all(n in listed for n in Dataset.load(SUBSET).system_name if not n.startswith(("cluster:", "stretch:")))


@pytest.mark.slow
def test_molecule_list_is_what_the_enumeration_writes():
    from mlff_jax.train.enumerate_molecules import main

    assert main(["--check"]) == 0


def test_enumeration_rejects_peroxides_hydrazines_and_charged_molecules():
    from rdkit import Chem

    from mlff_jax.train.enumerate_molecules import acceptable

    for bad in ("COOC", "CNNC", "CC(=O)[O-]", "C[N+](C)(C)C", "CSOC", "CCCCCCCCCC"):
        assert not acceptable(Chem.MolFromSmiles(bad), 25), bad
    for good in ("CC[N+](=O)[O-]", "CS(=O)(=O)NC", "c1ccncc1", "COC(=O)C", "CCCCCCCC"):
        assert acceptable(Chem.MolFromSmiles(good), 26), good


@pytest.mark.slow  # tblite SCF on a few frames: 30-40 s on the 2-core CI machine
def test_stretched_water_dimer_is_pulled_apart_and_frames_do_not_depend_on_workers():
    from mlff_jax.train.data import GenerationConfig, generate

    cfg = GenerationConfig(max_molecules=1, water_cluster_sizes=(), dimers=0, mixed_clusters=0, more_dimers=0,
                           more_mixed_clusters=0, stretch_water_sizes=(2,), stretch_water_per_size=1, stretch_dimers=1,
                           stretch_relax_steps=5, stretch_frames=6, stretch_pull_A=(2.0, 3.0), stretch_scale=(1.5, 1.6),
                           equilibration_steps=2, frames_per_segment=1, steps_between_frames=1, displaced_frames=1)
    quiet = lambda *a, **k: None  # noqa: E731
    one = generate(cfg, log=quiet)
    assert list(one.system_name) == ["O", "stretch:O.O#0", "stretch:" + one.system_name[2].split(":")[1]]
    water = one.select(one.system == 1)
    assert water.num_frames == 6
    oxygen_distance = [np.linalg.norm(water.frame(i)[1][0] - water.frame(i)[1][3]) for i in range(6)]
    assert min(oxygen_distance) > 4.0  # relaxed O-O ~2.9 Å, pulled by >= 2 Å or scaled by >= 1.5
    two = generate(cfg, workers=2, log=quiet)
    np.testing.assert_array_equal(one.system_name, two.system_name)
    np.testing.assert_allclose(one.positions, two.positions, rtol=0, atol=1e-9)
    np.testing.assert_allclose(one.energy, two.energy, rtol=0, atol=1e-9)


def test_a_dataset_made_before_the_stretch_settings_is_reused_only_with_equal_sampling_settings():
    from mlff_jax.train.data import GenerationConfig, reusable_frames

    old_cfg = dataclasses.asdict(GenerationConfig())
    for key in ("stretch_relax_steps", "stretch_frames", "stretch_pull_A", "stretch_scale", "stretch_noise_A"):
        old_cfg.pop(key)
    old = Dataset.load(SUBSET)
    old = dataclasses.replace(old, metadata={"config": old_cfg})
    assert len(reusable_frames(GenerationConfig(), old)) == len(old.system_name)
    with pytest.raises(ValueError, match="other sampling settings"):
        reusable_frames(GenerationConfig(frames_per_segment=3), old)
