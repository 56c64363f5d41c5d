"""Users distil and fine-tune their own models: labelled files read into datasets, any ASE
calculator as the teacher, and the worked example of docs/training.md."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import re

import numpy as np
import pytest

import tolerances as tol
from mlff_jax.train.dataset import SPLITS, Dataset
from mlff_jax.train.user_data import ENERGY_UNITS, load_training_data, read_labelled

ase = pytest.importorskip("ase")
import ase.io  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
needs_rdkit = pytest.mark.skipif(importlib.util.find_spec("rdkit") is None, reason="the generator embeds SMILES with RDKit")


def labelled(symbols: str, seed: int, **info) -> Atoms:
    """A distorted small molecule labelled by EMT (stored as single-point results, as a user's file has them)."""
    from ase.build import molecule

    atoms = molecule(symbols)
    atoms.positions += np.random.default_rng(seed).normal(0.0, 0.03, atoms.positions.shape)
    atoms.calc = EMT()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    atoms.info.update(info)
    return atoms


def docs_example_code() -> str:
    """The Python block of the section "Training on your own data" of docs/training.md."""
    text = (ROOT / "docs" / "training.md").read_text()
    section = text.split("## Training on your own data", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    return blocks[0]


# ------------------------------------------------------------------------------------------ reading
def test_extxyz_energies_and_forces_are_read_as_written(tmp_path):
    frames = [labelled("H2O", k, system="water") for k in range(3)] + [labelled("CH4", 9)]
    ase.io.write(tmp_path / "mine.extxyz", frames)
    ds = read_labelled(tmp_path / "mine.extxyz")
    assert ds.num_frames == 4 and list(ds.num_atoms) == [3, 3, 3, 5]
    for i, atoms in enumerate(ase.io.read(tmp_path / "mine.extxyz", ":")):  # (the text file keeps 8 decimals)
        z, r, e, f = ds.frame(i)
        np.testing.assert_array_equal(z, atoms.numbers)
        np.testing.assert_array_equal(r, atoms.positions)
        assert e == atoms.get_potential_energy()
        np.testing.assert_array_equal(f, atoms.get_forces())
        assert e == pytest.approx(frames[i].get_potential_energy(), rel=1e-7)


def test_labels_under_other_names_are_read_with_energy_and_forces_keys(tmp_path):
    atoms = labelled("NH3", 0)
    plain = Atoms(atoms.numbers, atoms.positions, info={"REF_energy": atoms.get_potential_energy()})
    plain.arrays["REF_forces"] = atoms.get_forces().copy()
    ase.io.write(tmp_path / "ref.extxyz", [plain])
    with pytest.raises(ValueError, match=r"frame 0 has no energy and no forces"):
        read_labelled(tmp_path / "ref.extxyz")
    ds = read_labelled(tmp_path / "ref.extxyz", energy_key="REF_energy", forces_key="REF_forces")
    stored = ase.io.read(tmp_path / "ref.extxyz")
    assert ds.energy[0] == stored.info["REF_energy"]
    np.testing.assert_array_equal(ds.forces, stored.arrays["REF_forces"])


def test_npz_of_fixed_size_frames_is_read_and_converted_to_ev(tmp_path):
    rng = np.random.default_rng(1)
    r, e, f = rng.normal(size=(4, 3, 3)), rng.normal(size=(4, 1)), rng.normal(size=(4, 3, 3))
    np.savez(tmp_path / "md17.npz", R=r, z=np.array([8, 1, 1]), E=e, F=f)
    ds = read_labelled(tmp_path / "md17.npz", energy_unit="kcal/mol")
    kcal = ENERGY_UNITS["kcal/mol"]
    np.testing.assert_allclose(ds.energy, e[:, 0] * kcal, rtol=tol.ROUNDOFF_F64)
    np.testing.assert_allclose(ds.forces, f.reshape(-1, 3) * kcal, rtol=tol.ROUNDOFF_F64)
    np.testing.assert_array_equal(ds.numbers, np.tile([8, 1, 1], 4))
    assert ENERGY_UNITS["kcal/mol"] == pytest.approx(4184 / 6.02214076e23 / 1.602176634e-19, rel=1e-8)


def test_a_dataset_file_is_loaded_as_it_is(tmp_path):
    ase.io.write(tmp_path / "mine.extxyz", [labelled("H2O", k) for k in range(3)])
    ds = read_labelled(tmp_path / "mine.extxyz", seed=3)
    ds.save(tmp_path / "mine.npz")
    again = load_training_data(tmp_path / "mine.npz", seed=99)  # a dataset keeps its own split, whatever the seed
    np.testing.assert_array_equal(again.system_split, ds.system_split)
    np.testing.assert_array_equal(again.forces, ds.forces)


def test_frames_of_one_system_share_a_split_and_an_explicit_split_wins(tmp_path):
    frames = [labelled("H2O", k, system=f"mol{k % 5}") for k in range(40)]
    frames += [labelled("CH4", k, system="held out", split="test") for k in range(3)]
    ase.io.write(tmp_path / "mine.extxyz", frames)
    ds = read_labelled(tmp_path / "mine.extxyz", fractions=(0.3, 0.3))
    assert len(ds.system_name) == 6
    for s in range(len(ds.system_name)):
        assert len(set(ds.frame_split()[ds.system == s].tolist())) == 1
    held = list(ds.system_name).index("held out")
    assert ds.system_split[held] == SPLITS["test"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: setattr(a, "calc", SinglePointCalculator(a, energy=1.0)), r"frame 1 has no forces"),
        (lambda a: setattr(a, "calc", SinglePointCalculator(a, forces=np.zeros((len(a), 3)))), r"frame 1 has no energy"),
        (lambda a: setattr(a, "calc", SinglePointCalculator(a, energy=np.nan, forces=np.zeros((len(a), 3)))), r"frame 1: non-finite"),
        (lambda a: a.set_atomic_numbers([0] + list(a.numbers[1:])), r"frame 1: atomic numbers \[0\] outside"),
        (lambda a: a.set_pbc(True) or a.set_cell([10, 10, 10]), r"frame 1 is periodic"),
    ],
    ids=["no forces", "no energy", "nan energy", "unknown element", "periodic"],
)
def test_bad_frames_are_rejected_with_an_error_naming_the_frame(tmp_path, change, message):
    good, bad = labelled("H2O", 0), labelled("H2O", 1)
    if "atomic" in message:  # change the element and keep the labels
        results = dict(bad.calc.results)
        change(bad)
        bad.calc = SinglePointCalculator(bad, **results)
    else:
        change(bad)
    ase.io.write(tmp_path / "bad.extxyz", [good, bad])
    with pytest.raises(ValueError, match=message):
        read_labelled(tmp_path / "bad.extxyz")


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(R=np.zeros((2, 3, 3)), Z=np.ones(3, int), E=np.zeros(2)), r"missing \['F'\]"),
        (dict(R=np.zeros((2, 3, 3)), Z=np.ones(3, int), E=np.zeros(3), F=np.zeros((2, 3, 3))), r"E must be \[2\]"),
        (dict(R=np.zeros((2, 3, 3)), Z=np.ones(3, int), E=np.zeros(2), F=np.zeros((2, 2, 3))), r"F must have the shape of R"),
        (dict(R=np.zeros((2, 3, 3)), Z=np.ones(4, int), E=np.zeros(2), F=np.zeros((2, 3, 3))), r"Z must be \[3\]"),
    ],
    ids=["missing forces", "energies", "forces", "numbers"],
)
def test_npz_with_inconsistent_shapes_is_rejected(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        read_labelled(tmp_path / "bad.npz")


def test_missing_file_and_unknown_unit_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no labelled-structure file"):
        read_labelled(tmp_path / "absent.extxyz")
    ase.io.write(tmp_path / "mine.extxyz", [labelled("H2O", 0)])
    with pytest.raises(ValueError, match="energy_unit"):
        read_labelled(tmp_path / "mine.extxyz", energy_unit="hartree")


# ------------------------------------------------------------------------------------------ command line
def test_data_command_converts_a_users_file_and_train_command_reports_a_bad_one(tmp_path, capsys):
    from mlff_jax.cli import main

    ase.io.write(tmp_path / "mine.extxyz", [labelled("H2O", k) for k in range(4)])
    assert main(["data", "--from-structures", str(tmp_path / "mine.extxyz"), "--out", str(tmp_path / "mine.npz")]) == 0
    assert Dataset.load(tmp_path / "mine.npz").num_frames == 4
    unlabelled = Atoms("H2O", positions=np.eye(3))
    ase.io.write(tmp_path / "unlabelled.extxyz", [unlabelled])
    capsys.readouterr()
    assert main(["train", "finetune", "--data", str(tmp_path / "unlabelled.extxyz"), "--out", str(tmp_path / "run")]) != 0
    assert "frame 0 has no energy and no forces" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ teachers
def test_teacher_is_a_name_an_import_path_a_calculator_or_a_factory():
    from mlff_jax.train.data import teacher_factory

    assert isinstance(teacher_factory("emt")(), EMT)
    assert isinstance(teacher_factory("ase.calculators.emt:EMT")(), EMT)
    calc = EMT()
    assert teacher_factory(calc)() is calc
    assert isinstance(teacher_factory(EMT)(), EMT)  # a class is a factory, not a calculator
    with pytest.raises(ValueError, match="unknown teacher"):
        teacher_factory("dft")
    with pytest.raises(ValueError, match="cannot import"):
        teacher_factory("no_such_package_xyz:Calc")
    with pytest.raises(ValueError, match="not a callable"):
        teacher_factory("ase.calculators.emt:NoSuchThing")


@needs_rdkit
def test_generator_labels_with_any_ase_calculator():
    from mlff_jax.train.data import GenerationConfig, generate

    cfg = GenerationConfig(max_molecules=1, water_cluster_sizes=(), dimers=0, mixed_clusters=0, more_dimers=0,
                           more_mixed_clusters=0, stretch_water_sizes=(), stretch_dimers=0, equilibration_steps=2,
                           frames_per_segment=2, steps_between_frames=2, displaced_frames=1)
    quiet = lambda *a, **k: None  # noqa: E731
    by_object = generate(cfg, log=quiet, calculator=EMT())
    by_name = generate(cfg, log=quiet, calculator="emt")
    assert by_object.num_frames == 5 and "EMT" in by_object.metadata["teacher"]
    assert by_name.metadata["config"]["teacher"] == "emt"
    np.testing.assert_allclose(by_object.energy, by_name.energy, rtol=0, atol=tol.ROUNDOFF_F64)
    z, r, e, f = by_object.frame(4)  # the labels are EMT's
    atoms = Atoms(numbers=z, positions=r, calculator=EMT())
    assert atoms.get_potential_energy() == pytest.approx(e, abs=tol.ROUNDOFF_F64)
    np.testing.assert_allclose(atoms.get_forces(), f, rtol=0, atol=tol.ROUNDOFF_F64)
    with pytest.raises(ValueError, match="cannot be shared by worker processes"):
        generate(cfg, log=quiet, calculator=EMT(), workers=2)


# ------------------------------------------------------------------------------------------ the worked example
@pytest.mark.slow  # ~35 s of CPU, mostly compiling the training step
def test_docs_example_file_trains_a_small_fresh_model_through_the_command(tmp_path, monkeypatch):
    """The Python block of docs/training.md, then `mlff-jax train` from scratch with a tiny shape (fast)."""
    monkeypatch.chdir(tmp_path)
    exec(compile(docs_example_code(), "docs/training.md", "exec"), {})
    from mlff_jax.cli import main

    tiny = ["--init", "", "--set", "model.hidden_dim=8", "--set", "model.num_rbf=4", "--set", "model.max_z=10",
            "--set", "training.max_steps=4", "--set", "training.steps_per_call=2", "--set", "training.eval_every=2",
            "--set", "training.batch_structures=4", "--set", "training.warmup_steps=1"]
    assert main(["train", "finetune", "--data", "my_data.extxyz", "--out", "run", *tiny]) == 0
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert log["config"]["init"] == "" and log["model"]["hidden_dim"] == 8 and log["steps"] == 4
    assert log["dataset"]["elements"] == [1, 6, 7, 8] and np.isfinite(log["validation"]["force_mae"])


@pytest.mark.slow
def test_docs_worked_example_fine_tunes_the_default_model(tmp_path, monkeypatch):
    """The Python block of docs/training.md, then `mlff-jax train finetune` as documented, cut to a few steps."""
    monkeypatch.chdir(tmp_path)
    exec(compile(docs_example_code(), "docs/training.md", "exec"), {})
    data = tmp_path / "my_data.extxyz"
    assert data.stat().st_size < 250_000
    from mlff_jax.cli import main

    # fewer frames and steps than the documented run (its 300 steps take ~1.5 min on a CPU)
    short = ["--set", "training.max_steps=4", "--set", "training.steps_per_call=2", "--set", "training.eval_every=2",
             "--set", "training.batch_structures=4", "--set", "training.warmup_steps=1"]
    assert main(["train", "finetune", "--data", "my_data.extxyz", "--out", "runs/my_model", *short]) == 0
    log = json.loads((tmp_path / "runs" / "my_model" / "log.json").read_text())
    assert log["config"]["init"] == "default" and log["steps"] == 4
    assert log["dataset"]["frames"] == 300 and log["dataset"]["validation_systems"] >= 1
    assert np.isfinite(log["validation"]["force_mae"])
    import mlff_jax

    tuned = mlff_jax.load("runs/my_model/best.safetensors", dtype="float64")
    z, r, _, _ = read_labelled(data).frame(0)
    energy, forces = tuned.energy_and_forces(r, z)
    assert np.isfinite(float(energy)) and np.all(np.isfinite(np.asarray(forces)))


# ------------------------------------------------------------------------------------------ per-atom force weights
def weighted_batch(dataset: Dataset, config):
    from mlff_jax.train.batching import Packer, to_batch

    packer = Packer(dataset, config.cutoff)
    arrays = packer.pack(list(range(dataset.num_frames)), packer.auto_shape(dataset.num_frames), np.float64)
    return to_batch(arrays)


@pytest.mark.slow  # one of the heaviest default tests (5-20 s on 2 cores); CI runs it with the slow ones
def test_atoms_of_force_weight_zero_do_not_enter_the_force_loss_or_its_gradient(tmp_path):
    import jax

    from mlff_jax import painn
    from mlff_jax.config import PaiNNConfig
    from mlff_jax.train.evaluate import PRECISIONS, energies_and_forces
    from mlff_jax.train.trainer import fresh_params, mean_squared_errors

    config = PaiNNConfig(hidden_dim=8, num_interactions=1, num_rbf=4, cutoff=5.0, max_z=10)
    params = painn.cast_params(fresh_params(config, 0), np.float64)
    ase.io.write(tmp_path / "mine.extxyz", [labelled("CH3OH", k) for k in range(3)])
    plain = read_labelled(tmp_path / "mine.extxyz")
    weight = np.tile([1.0, 1.0, 0.0, 0.0, 1.0, 0.0], 3)  # CH3OH: 6 atoms; three of each frame not fitted
    masked = dataclasses.replace(plain, force_weight=weight)
    scrambled = dataclasses.replace(masked, forces=np.where(weight[:, None] > 0, masked.forces, 1e3))
    ones = dataclasses.replace(plain, force_weight=np.ones(len(weight)))
    precision = PRECISIONS["highest"]
    force_mse = jax.jit(jax.value_and_grad(lambda p, b: mean_squared_errors(p, config, b, precision)[1]))

    loss_masked, grad_masked = force_mse(params, weighted_batch(masked, config))
    loss_scrambled, grad_scrambled = force_mse(params, weighted_batch(scrambled, config))
    assert float(loss_scrambled) == pytest.approx(float(loss_masked), rel=tol.ROUNDOFF_F64)
    for a, b in zip(jax.tree_util.tree_leaves(grad_masked), jax.tree_util.tree_leaves(grad_scrambled)):
        np.testing.assert_allclose(a, b, rtol=0, atol=tol.ROUNDOFF_F64)
    # the masked loss is the mean over the fitted atoms' force components only ...
    batch = weighted_batch(plain, config)
    predicted = np.asarray(jax.jit(lambda p, b: energies_and_forces(p, config, b, precision)[1])(params, batch))[: len(weight)]
    fitted = weight > 0
    expected = np.mean((predicted[fitted] - plain.forces[fitted]) ** 2)
    assert float(loss_masked) == pytest.approx(expected, rel=tol.ROUNDOFF_F64)
    # ... and weights of one everywhere give the plain mean over all of them
    assert float(force_mse(params, weighted_batch(ones, config))[0]) == pytest.approx(
        np.mean((predicted - plain.forces) ** 2), rel=tol.ROUNDOFF_F64)


def test_force_weights_survive_saving_selecting_and_reading_extxyz(tmp_path):
    frames = [labelled("H2O", k) for k in range(3)]
    for k, atoms in enumerate(frames):
        atoms.arrays["force_weight"] = np.array([1.0, 0.0, float(k)])
    ase.io.write(tmp_path / "w.extxyz", frames)
    ds = read_labelled(tmp_path / "w.extxyz")
    np.testing.assert_array_equal(ds.force_weight, [1, 0, 0, 1, 0, 1, 1, 0, 2])
    ds.save(tmp_path / "w.npz")
    np.testing.assert_array_equal(Dataset.load(tmp_path / "w.npz").select([2]).force_weight, [1, 0, 2])
    frames[0].arrays["force_weight"] = np.array([1.0, -1.0, 1.0])
    ase.io.write(tmp_path / "bad.extxyz", frames)
    with pytest.raises(ValueError, match="force_weight"):
        read_labelled(tmp_path / "bad.extxyz")


# ------------------------------------------------------------------------------------------ condensed phase
def water_box(molecules: int = 16, seed: int = 0):
    from ase.build import molecule

    from mlff_jax.train.condensed import liquid_box

    return liquid_box([molecule("H2O")], [molecules], 0.997, np.random.default_rng(seed))


def test_liquid_box_has_the_density_and_keeps_molecules_apart():
    box = water_box(32)
    mass_g = np.sum(box.get_masses()) / 6.02214076e23
    volume_cm3 = box.get_volume() * 1e-24
    assert mass_g / volume_cm3 == pytest.approx(0.997, rel=1e-9)
    assert np.all(box.pbc) and len(box) == 96 and len(np.unique(box.arrays["molecule"])) == 32
    distances = box.get_all_distances(mic=True)
    other = box.arrays["molecule"][:, None] != box.arrays["molecule"][None]
    assert distances[other].min() >= 1.6
    with pytest.raises(ValueError, match="could not place molecule"):
        from ase.build import molecule

        from mlff_jax.train.condensed import liquid_box

        liquid_box([molecule("H2O")], [64], 3.0, np.random.default_rng(0), min_distance=2.5, max_tries=50)


def test_carved_cluster_holds_whole_molecules_and_weights_only_the_inner_atoms():
    from mlff_jax.train.condensed import carve_cluster

    box = water_box(16)  # a ~7.8 Å box: a 9 Å sphere needs periodic images as extra molecules
    centre = box.positions[0]
    cluster = carve_cluster(box, centre, radius=9.0, inner_radius=2.5)
    assert not np.any(cluster.pbc) and len(cluster) % 3 == 0 and len(cluster) > len(box)
    numbers = cluster.numbers.reshape(-1, 3)
    assert np.all(numbers == [8, 1, 1])  # whole water molecules, in order
    r = cluster.positions.reshape(-1, 3, 3)
    oh = np.linalg.norm(r[:, 1:] - r[:, :1], axis=-1)
    assert oh.max() < 1.1  # no molecule split across the box boundary
    distance = np.linalg.norm(cluster.positions, axis=1)
    assert np.min(distance.reshape(-1, 3), axis=1).max() <= 9.0  # every molecule has an atom within the radius
    np.testing.assert_array_equal(cluster.arrays["force_weight"], (distance <= 2.5).astype(float))
    assert 3 <= cluster.arrays["force_weight"].sum() < len(cluster)
    # no two atoms on top of each other (each periodic image is used once)
    from scipy.spatial.distance import pdist

    assert pdist(cluster.positions).min() > 0.5
    with pytest.raises(ValueError, match="inner_radius"):
        carve_cluster(box, centre, radius=2.0, inner_radius=3.0)


def test_carved_clusters_are_labelled_with_force_weights_and_seeded():
    from mlff_jax.train.condensed import carved_liquid
    from mlff_jax.train.data import teacher_factory

    first = carved_liquid("water", 16, 2, teacher_factory("emt"), seed=1, radius=5.0, inner_radius=2.0)
    again = carved_liquid("water", 16, 2, teacher_factory("emt"), seed=1, radius=5.0, inner_radius=2.0)
    np.testing.assert_array_equal(first.positions, again.positions)
    assert first.num_frames == 2 and first.force_weight is not None
    assert 0 < first.force_weight.sum() < len(first.numbers)
    z, r, e, f = first.frame(1)
    atoms = Atoms(numbers=z, positions=r, calculator=EMT())
    assert atoms.get_potential_energy() == pytest.approx(e, abs=tol.ROUNDOFF_F64)
    np.testing.assert_allclose(atoms.get_forces(), f, rtol=0, atol=tol.ROUNDOFF_F64)


def test_solvated_molecule_clusters_are_centred_on_the_solute():
    from mlff_jax.train.condensed import carved_liquid
    from mlff_jax.train.data import teacher_factory

    ds = carved_liquid("water", 12, 2, teacher_factory("emt"), seed=0, radius=4.0, inner_radius=1.5, solute="C")
    assert ds.num_frames == 2 and list(ds.system_name) == ["carved:water+C:12#0", "carved:water+C:12#1"]
    for i in range(2):
        z, r, _, _ = ds.frame(i)
        weight = ds.force_weight[ds.offsets[i] : ds.offsets[i + 1]]
        assert 6 in z[weight > 0]  # the methane carbon sits at the centre and is fitted
        assert np.sum(z == 6) >= 1
