"""Condensed-phase data at scale: the seeded task list, its parallel labelling under a budget,
clusters carved from MD frames, and merging datasets. EMT labels (fast); GFN2 is not needed here."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

import tolerances as tol
from mlff_jax.train.condensed_run import (BoxSpec, Settings, Task, _interleave, _cluster_rng, balance_splits, build_box,
                                          frame_tasks, load_frames, run)
from mlff_jax.train.dataset import SPLITS, Dataset, merge

SETTINGS = Settings(seed=3, radius=4.0, inner_radius=2.0)


def small_tasks(clusters: int = 2) -> list[Task]:
    """Two water boxes, one methanol box, one solvated methane: interleaved streams."""
    streams = []
    for liquid, boxes in (("water", 2), ("methanol", 1)):
        specs = [BoxSpec(liquid, 12, b) for b in range(boxes)]
        streams.append([Task(s.name, s.kind, s, None, int(_cluster_rng(SETTINGS, s.name, k).integers(12)), k)
                        for k in range(clusters) for s in specs])
    solvated = BoxSpec("water", 12, 0, "C")
    streams.append([Task(solvated.name, solvated.kind, solvated, None, None, 0)])
    return _interleave(streams)


def same(a: Dataset, b: Dataset, arrays=("numbers", "positions", "forces", "energy", "num_atoms", "force_weight")) -> None:
    for name in arrays:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_relaxed_box_keeps_molecules_rigid_and_apart_at_the_density():
    from mlff_jax.train.condensed import contact_distance

    spec = BoxSpec("methanol", 24, 0)
    box = build_box(spec, Settings())
    distances = box.get_all_distances(mic=True)
    molecule = box.arrays["molecule"]
    other = molecule[:, None] != molecule[None]
    target = np.vectorize(contact_distance)(box.numbers[:, None], box.numbers[None])
    assert np.min(np.where(other, distances - target, np.inf)) > -0.05  # relax_box's tolerance
    packed = build_box(spec, Settings(relax_steps=0))  # random packing alone leaves closer pairs
    d0 = packed.get_all_distances(mic=True)
    assert np.min(np.where(other, d0 - target, np.inf)) < -0.05
    # rigid molecules: intramolecular distances are those of the monomer
    first = molecule == molecule[0]
    from mlff_jax.train.condensed import monomer

    reference = monomer("CO", Settings().seed)
    np.testing.assert_allclose(box.get_all_distances(mic=True)[np.ix_(first, first)], reference.get_all_distances(),
                               rtol=0, atol=1e-9)
    density = np.sum(box.get_masses()) / box.get_volume() / 0.602214076
    assert density == pytest.approx(0.792, rel=1e-9)


def test_a_contact_scale_below_one_keeps_closer_contacts_than_the_default_and_no_closer_than_scaled():
    from mlff_jax.train.condensed import contact_distance, relax_box

    spec = BoxSpec("water", 32, 0)
    box = build_box(spec, Settings(contact_scale=0.8))
    distances = box.get_all_distances(mic=True)
    other = box.arrays["molecule"][:, None] != box.arrays["molecule"][None]
    target = np.vectorize(contact_distance)(box.numbers[:, None], box.numbers[None])
    assert np.min(np.where(other, distances - 0.8 * target, np.inf)) > -0.05
    assert np.min(np.where(other, distances - target, np.inf)) < -0.05  # closer than the default allows
    for bad in (0.0, -1.0, 2.0):
        with pytest.raises(ValueError, match="contact_scale"):
            relax_box(box, contact_scale=bad)


def test_task_list_interleaves_liquids_so_that_any_prefix_is_a_mix():
    from mlff_jax.train.condensed_run import DEFAULT_LIQUIDS, default_recipe

    tasks = default_recipe(Settings(), boxes=2, clusters_per_box=3)
    kinds_per_round = len(DEFAULT_LIQUIDS) + 1
    assert len(tasks) == kinds_per_round * 2 * 3
    first_round = tasks[:kinds_per_round]
    assert len({(t.spec.liquid, t.spec.molecules, bool(t.spec.solute)) for t in first_round}) == kinds_per_round
    assert all(t.system.startswith("carved:") for t in tasks)
    assert default_recipe(Settings(), boxes=2, clusters_per_box=3) == tasks  # seeded


def test_labels_depend_on_the_number_of_finished_tasks_not_on_the_workers(tmp_path):
    tasks = small_tasks()
    one = run(tasks, SETTINGS, "emt", workers=1, log=lambda *a, **k: None)
    two = run(tasks, SETTINGS, "emt", workers=2, log=lambda *a, **k: None)
    same(one, two)
    np.testing.assert_array_equal(one.system_split, two.system_split)
    assert one.metadata["finished"] and one.num_frames == len(tasks)
    # a prefix of the task list gives the first frames of the full run
    prefix = run(tasks[:4], SETTINGS, "emt", workers=1, log=lambda *a, **k: None)
    same(prefix, one.select(np.arange(4)))
    assert prefix.metadata["tasks_done"] == 4 and prefix.metadata["tasks_total"] == 4
    # the solvated cluster is centred on the methane carbon, which is fitted
    i = [k for k, t in enumerate(tasks) if t.spec.solute][0]
    z, r, _, _ = one.frame(i)
    weight = one.force_weight[one.offsets[i]:one.offsets[i + 1]]
    assert 6 in z[weight > 0]
    # every frame's energy is EMT's energy of its positions
    from ase import Atoms
    from ase.calculators.emt import EMT

    z, r, e, f = one.frame(1)
    assert Atoms(numbers=z, positions=r, calculator=EMT()).get_potential_energy() == pytest.approx(e, abs=tol.ROUNDOFF_F64)


def test_a_spent_budget_stops_the_run_and_the_partial_file_is_a_dataset(tmp_path):
    tasks = small_tasks()
    empty = run(tasks, SETTINGS, "emt", workers=1, budget_s=0.0, log=lambda *a, **k: None)
    assert empty.num_frames == 0 and empty.metadata["tasks_done"] == 0 and not empty.metadata["finished"]
    partial = tmp_path / "out.partial.npz"
    done = run(tasks[:3], SETTINGS, "emt", workers=1, partial_path=partial, partial_seconds=0.0, log=lambda *a, **k: None)
    written = Dataset.load(partial)
    assert 0 < written.num_frames < done.num_frames and not written.metadata["finished"]
    same(written, done.select(np.arange(written.num_frames)))


def test_balance_gives_each_kind_with_enough_boxes_a_test_and_a_validation_box():
    train, validation, test = SPLITS["train"], SPLITS["validation"], SPLITS["test"]
    names = ["a0", "a1", "a2", "b0", "b1", "c0"]
    kinds = ["a", "a", "a", "b", "b", "c"]
    assert balance_splits(names, kinds, [train] * 6) == [train, validation, test, train, test, train]
    # a kind that has them keeps its splits
    assert balance_splits(names, kinds, [test, validation, train, train, test, train]) == [test, validation, train, train, test, train]


def write_frames(path, frames: int = 3, wrap: bool = True):
    box = build_box(BoxSpec("water", 12, 0), Settings())
    rng = np.random.default_rng(0)
    positions = np.stack([box.positions + rng.normal(0, 0.05, box.positions.shape) for _ in range(frames)])
    cell = np.asarray(box.cell.array)
    if wrap:  # as MD writes them: molecules split across the boundary
        positions = ((positions @ np.linalg.inv(cell)) % 1.0) @ cell
    np.savez(path, positions=positions, numbers=box.numbers, cell=cell, molecule=box.arrays["molecule"],
             liquid="water", temperature=300.0)
    return box


def test_clusters_carved_from_md_frames_hold_whole_molecules_with_the_centre_fitted(tmp_path):
    write_frames(tmp_path / "w.npz")
    tasks = frame_tasks([load_frames(tmp_path / "w.npz")], 2, SETTINGS)
    (system,) = {t.system for t in tasks}
    assert len(tasks) == 6 and system.startswith("carved-md:water:36:w:") and len(system) == len("carved-md:water:36:w:") + 8
    ds = run(tasks, SETTINGS, "emt", workers=1, log=lambda *a, **k: None)
    assert ds.num_frames == 6 and list(ds.system_name) == [system]
    for i in range(ds.num_frames):
        z, r, _, _ = ds.frame(i)
        assert np.all(z.reshape(-1, 3) == [8, 1, 1])
        oh = np.linalg.norm(r.reshape(-1, 3, 3)[:, 1:] - r.reshape(-1, 3, 3)[:, :1], axis=-1)
        assert oh.max() < 1.2  # whole molecules although the frame was wrapped into the cell
        weight = ds.force_weight[ds.offsets[i]:ds.offsets[i + 1]]
        assert 0 < weight.sum() < len(z)
    assert frame_tasks([load_frames(tmp_path / "w.npz")], 2, SETTINGS) == tasks  # seeded


def test_bad_frames_files_are_clear_errors(tmp_path):
    np.savez(tmp_path / "nomol.npz", positions=np.zeros((1, 3, 3)), numbers=[8, 1, 1], cell=np.eye(3) * 5)
    with pytest.raises(ValueError, match="molecule"):
        load_frames(tmp_path / "nomol.npz")
    np.savez(tmp_path / "shape.npz", positions=np.zeros((1, 3, 3)), numbers=[8, 1], cell=np.eye(3) * 5, molecule=[0, 0, 0])
    with pytest.raises(ValueError, match="numbers and molecule"):
        load_frames(tmp_path / "shape.npz")
    np.savez(tmp_path / "cell.npz", positions=np.zeros((2, 3, 3)), numbers=[8, 1, 1], cell=np.zeros((3, 3, 3)), molecule=[0, 0, 0])
    with pytest.raises(ValueError, match="cell"):
        load_frames(tmp_path / "cell.npz")
    write_frames(tmp_path / "w.npz")
    with pytest.raises(ValueError, match="clusters_per_frame"):
        frame_tasks([load_frames(tmp_path / "w.npz")], 0, SETTINGS)


def test_merge_keeps_each_parts_splits_and_force_weights_and_refuses_shared_names(tmp_path):
    from mlff_jax.train.dataset import main

    carved = run(small_tasks(1), SETTINGS, "emt", workers=1, log=lambda *a, **k: None)
    molecules = Dataset(numbers=np.array([8, 1, 1]), positions=np.zeros((3, 3)), forces=np.ones((3, 3)),
                        energy=np.array([-1.0]), num_atoms=np.array([3]), system=np.array([0]),
                        system_name=np.array(["O"]), system_split=np.array([2], np.int8))
    carved.save(tmp_path / "a.npz")
    molecules.save(tmp_path / "b.npz")
    assert main(["merge", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--out", str(tmp_path / "c.npz"),
                 "--float32-out", str(tmp_path / "c32.npz")]) == 0
    merged = Dataset.load(tmp_path / "c.npz")
    assert list(merged.system_name) == list(carved.system_name) + ["O"]
    np.testing.assert_array_equal(merged.system_split, np.concatenate([carved.system_split, [2]]))
    np.testing.assert_array_equal(merged.force_weight, np.concatenate([carved.force_weight, np.ones(3)]))
    np.testing.assert_array_equal(merged.positions, np.concatenate([carved.positions, molecules.positions]))
    assert Dataset.load(tmp_path / "c32.npz").metadata["stored_float32"]
    assert main(["merge", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--out", str(tmp_path / "d.npz"),
                 "--split-of", f"{tmp_path / 'a.npz'}=test"]) == 0
    resplit = Dataset.load(tmp_path / "d.npz")
    assert not np.all(carved.system_split == 2)  # the option changed something
    np.testing.assert_array_equal(resplit.system_split, np.concatenate([np.full(len(carved.system_name), 2), [2]]))
    for bad in (f"{tmp_path / 'c.npz'}=test", f"{tmp_path / 'a.npz'}=holdout"):
        with pytest.raises(SystemExit):
            main(["merge", str(tmp_path / "a.npz"), "--out", str(tmp_path / "e.npz"), "--split-of", bad])
    with pytest.raises(ValueError, match="is in both"):
        merge([carved, molecules, carved])
    with pytest.raises(ValueError, match="at least one"):
        merge([])


# ------------------------------------------------------------------------------------------ training on the mix
def test_force_errors_count_fitted_atoms_only_and_are_reported_per_group():
    from mlff_jax.train.evaluate import error_metrics, system_group

    assert [system_group(n) for n in ("CCO", "cluster:O.O#1", "stretch:O.O#0", "carved:water:64:box0",
                                      "carved-md:water:192:w")] == ["molecules", "clusters", "clusters", "condensed", "model_md"]
    ds = Dataset(numbers=np.array([8, 1, 1, 8, 1, 1, 8, 1, 1]), positions=np.zeros((9, 3)), forces=np.zeros((9, 3)),
                 energy=np.zeros(3), num_atoms=np.array([3, 3, 3]), system=np.array([0, 1, 1]),
                 system_name=np.array(["O", "carved:water:8:box0"]), system_split=np.array([2, 2], np.int8),
                 force_weight=np.array([1, 1, 1, 1, 0, 0, 0, 0, 0], float))
    forces = np.zeros((9, 3))
    forces[0] = 0.3  # molecule: an error on a fitted atom
    forces[3] = 0.6  # cluster: an error on its one fitted atom
    forces[4:] = 100.0  # buffer atoms: errors that must not count
    energies = np.array([0.3, 0.0, 0.6])
    m = error_metrics(ds, energies, forces)
    assert m["groups"]["molecules"]["force_mae"] == pytest.approx(0.3 / 3, abs=tol.ROUNDOFF_F64)
    assert m["groups"]["condensed"]["force_mae"] == pytest.approx(0.6, abs=tol.ROUNDOFF_F64)
    assert m["groups"]["condensed"]["fitted_atoms"] == 1 and m["groups"]["condensed"]["frames"] == 2
    assert m["force_mae"] == pytest.approx((0.9 + 1.8) / 12, abs=tol.ROUNDOFF_F64)
    assert m["groups"]["condensed"]["energy_mae_per_atom"] == pytest.approx(0.1, abs=tol.ROUNDOFF_F64)


@pytest.mark.slow  # one of the heaviest default tests (5-20 s on 2 cores); CI runs it with the slow ones
def test_molecules_and_carved_clusters_pack_into_one_shape_and_train(tmp_path):
    import dataclasses

    from mlff_jax.train.batching import Packer
    from mlff_jax.train.trainer import TrainConfig, train

    molecules = Dataset.load(pathlib.Path(__file__).parent / "data" / "gfn2_xtb_test_subset.npz")
    molecules = molecules.select(np.isin(molecules.system, np.arange(12))).compact()
    split = np.full(12, SPLITS["train"], np.int8)
    split[8:10], split[10:] = SPLITS["validation"], SPLITS["test"]
    molecules = dataclasses.replace(molecules, system_split=split, force_weight=None)
    carved = run(small_tasks(2), Settings(seed=3, radius=6.0, inner_radius=3.0), "emt", log=lambda *a, **k: None)
    carved = dataclasses.replace(carved, system_split=np.array([0, 1, 2, 2][: len(carved.system_name)], np.int8))
    mixed = merge([molecules, carved])
    packer = Packer(mixed, 5.0)
    shape = packer.auto_shape(32)
    # the largest cluster fits one batch, and the shape stays that of 32 average frames (no blow-up to 32 clusters)
    assert shape.max_atoms >= mixed.num_atoms.max() and shape.max_atoms < 2 * 32 * mixed.num_atoms.mean() + 64
    groups = packer.groups(np.random.default_rng(0).permutation(mixed.num_frames), shape)
    assert sorted(i for g in groups for i in g) == list(range(mixed.num_frames))
    mixed.save(tmp_path / "mixed.npz")
    log = train(TrainConfig(data=str(tmp_path / "mixed.npz"), out_dir=str(tmp_path / "run"), hidden_dim=8, num_interactions=1,
                            num_rbf=4, max_z=20, batch_structures=8, max_steps=10, steps_per_call=5, eval_every=10,
                            log_every=1000, warmup_steps=2), log=lambda *a, **k: None)
    assert log["steps"] == 10 and set(log["test"]["groups"]) == {"molecules", "condensed"}
    condensed = log["test"]["groups"]["condensed"]
    assert condensed["fitted_atoms"] == int(np.sum(carved.split("test").force_weight > 0))
    assert np.isfinite(condensed["force_mae"]) and np.isfinite(log["validation"]["groups"]["molecules"]["force_mae"])


# ------------------------------------------------------------------------------------------ the model's own MD
@pytest.mark.slow  # two compilations of the MD loop: ~1-2 min on a shared 2-core CPU
def test_model_md_of_a_tiny_water_box_writes_frames_that_carving_reads(tmp_path, load_model):
    from mlff_jax.train.sample_md import main, sample_liquid

    model = load_model("ultra-tiny-21k", "float32")
    arrays = sample_liquid(model, "water", 8, 300.0, steps=6, frame_every=2, frames_per_chunk=3, log=lambda *a, **k: None)
    assert arrays["positions"].shape == (3, 24, 3) and list(arrays["step"]) == [2, 4, 6]
    assert not arrays["blew_up"] and str(arrays["status"]) == "completed"
    assert not np.allclose(arrays["positions"][0], arrays["positions"][-1])  # it moved
    np.savez(tmp_path / "w.npz", **arrays)
    frames = load_frames(tmp_path / "w.npz")
    tasks = frame_tasks([frames], 1, SETTINGS)
    assert len(tasks) == 3 and tasks[0].system.startswith("carved-md:water:24:w:")
    moved = dict(frames, positions=frames["positions"] + 0.01)  # another trajectory in a file of the same name
    assert frame_tasks([moved], 1, SETTINGS)[0].system != tasks[0].system
    # a run that goes wrong keeps the frames before it and says so (here: a closest-pair bound no
    # relaxed box meets, so the first frame already fails)
    bad = sample_liquid(model, "water", 8, 300.0, steps=4, frame_every=2, min_pair=3.0, log=lambda *a, **k: None)
    assert bad["blew_up"] and bad["positions"].shape == (0, 24, 3)
    assert "apart at step 2" in str(bad["status"]) and "kept the 0 frames" in str(bad["status"])
    with pytest.raises(ValueError, match="frame_every"):
        sample_liquid(model, "water", 8, 300.0, steps=4, frame_every=0)


def test_split_dataset_tool_parts_rejoin_to_the_float32_dataset_and_foreign_parts_are_refused(tmp_path):
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location("split_dataset", pathlib.Path(__file__).parents[1] / "tools" / "split_dataset.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rng = np.random.default_rng(0)
    sizes = np.array([3, 3, 5, 5, 5])
    dataset = Dataset(numbers=np.tile([8, 1, 1, 6, 1], 5)[: sizes.sum()], positions=rng.normal(size=(sizes.sum(), 3)),
                      forces=rng.normal(size=(sizes.sum(), 3)), energy=rng.normal(size=5), num_atoms=sizes,
                      system=np.array([0, 0, 1, 1, 1]), system_name=np.array(["a", "b"]), system_split=np.array([0, 2], np.int8),
                      force_weight=rng.uniform(size=sizes.sum()))
    dataset.save(tmp_path / "d.npz")
    tool.split(str(tmp_path / "d.npz"), tmp_path, 2)
    joined = tool.join([str(tmp_path / "d_part0.npz"), str(tmp_path / "d_part1.npz")])
    assert list(joined.system_name) == ["a", "b"]
    np.testing.assert_array_equal(joined.system, dataset.system)
    np.testing.assert_array_equal(joined.num_atoms, dataset.num_atoms)
    np.testing.assert_array_equal(joined.positions, dataset.positions.astype(np.float32))
    np.testing.assert_array_equal(joined.force_weight, dataset.force_weight)
    other = Dataset.load(tmp_path / "d_part1.npz")
    other.system_name[:] = ["a", "c"]
    other.save(tmp_path / "foreign.npz")
    with pytest.raises(ValueError, match="system table differs"):
        tool.join([str(tmp_path / "d_part0.npz"), str(tmp_path / "foreign.npz")])
