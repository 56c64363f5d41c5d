"""The liquid-MD validation benchmark (benchmarks/liquid_md_validation.py): its analysis on synthetic
inputs with known answers (g(r), first peak, drift fit, water structure), its target rules, a
tripped guard that is recorded instead of raised, and (slow) its whole run on a tiny box."""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlff_jax import md
from tolerances import DRIFT_FIT, RDF_FIRST_PEAK_POSITION, RDF_IDEAL_GAS, ROUNDOFF_F64

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import liquid_analysis as analysis  # noqa: E402
import liquid_md_validation as validation  # noqa: E402


# ----------------------------------------------------------------------------- g(r) and its first peak
def test_rdf_of_a_jittered_simple_cubic_lattice_peaks_at_the_lattice_constant_with_six_neighbours():
    a, cells = 3.0, 5
    grid = np.stack(np.meshgrid(*[np.arange(cells)] * 3, indexing="ij"), -1).reshape(-1, 3) * a
    rng = np.random.default_rng(0)
    frames = grid[None] + rng.normal(scale=0.05, size=(4, len(grid), 3))  # nearest pairs stay within 2.5-3.5 Å
    cell = np.eye(3) * a * cells
    r, g, counts = analysis.radial_distribution(frames, cell, 7.5, 0.02)
    position, height = analysis.first_peak(r, g)
    assert abs(position - a) <= RDF_FIRST_PEAK_POSITION
    assert height > 5.0
    assert analysis.coordination_number(r, counts, len(grid), len(frames), 3.5) == pytest.approx(6.0, abs=ROUNDOFF_F64)
    assert analysis.coordination_number(r, counts, len(grid), len(frames), 2.5) == 0.0


def test_rdf_of_uniformly_random_points_is_one():
    # few points per frame, many frames: a normalisation by M² instead of M (M - 1) pairs would be 11 % off
    rng = np.random.default_rng(0)
    length = 20.0
    r, g, _ = analysis.radial_distribution(rng.uniform(0, length, (4000, 10, 3)), np.eye(3) * length, 10.0, 0.02)
    assert abs(np.mean(g[(r > 2.0) & (r < 9.5)]) - 1.0) < RDF_IDEAL_GAS


def _water_like(r):
    """O-O g(r) of liquid water in shape: 0 below 2.4 Å, first peak 2.8 Å (height ~2.8), minimum near 3.4 Å, second peak 4.5 Å."""
    gauss = lambda centre, width: np.exp(-0.5 * ((r - centre) / width) ** 2)  # noqa: E731
    return (1.0 + 1.8 * gauss(2.8, 0.12) - 0.35 * gauss(3.4, 0.2) + 0.15 * gauss(4.5, 0.3)) / (1.0 + np.exp(-(r - 2.55) / 0.04))


def test_first_peak_of_a_noisy_water_like_g():
    r = np.arange(0.01, 6.0, 0.02)
    g = _water_like(r) + np.random.default_rng(0).normal(scale=0.05, size=r.shape)
    position, height = analysis.first_peak(r, g)
    assert abs(position - 2.8) <= RDF_FIRST_PEAK_POSITION
    assert 2.5 < height < 3.0


def test_first_peak_is_the_first_excursion_above_one_not_the_highest():
    r = np.arange(0.01, 6.0, 0.02)
    collapsed = 1.0 + 0.6 * np.exp(-0.5 * ((r - 2.2) / 0.08) ** 2) + 2.0 * np.exp(-0.5 * ((r - 2.9) / 0.1) ** 2)
    collapsed[r < 1.9] = 0.0
    collapsed[(r > 2.45) & (r < 2.6)] = 0.5  # g falls below 1 between the two peaks
    position, _ = analysis.first_peak(r, collapsed)
    assert abs(position - 2.2) <= RDF_FIRST_PEAK_POSITION


def test_first_peak_without_structure_is_nan():
    r = np.arange(0.01, 6.0, 0.02)
    assert all(np.isnan(analysis.first_peak(r, np.minimum(1.0, r / 3.0))))


@pytest.mark.parametrize("cell, r_max", [(np.eye(3) * 10.0, 5.5), (np.array([[10.0, 1.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]]), 4.0)])
def test_rdf_refuses_a_radius_beyond_half_the_cell_and_a_skewed_cell(cell, r_max):
    with pytest.raises(ValueError, match="half the shortest|orthorhombic"):
        analysis.radial_distribution(np.zeros((1, 2, 3)) + [[0, 0, 0], [1, 1, 1]], cell, r_max)


# ----------------------------------------------------------------------------- drift and structure
def test_drift_fit_recovers_a_known_linear_drift_under_an_oscillation():
    atoms, slope = 648, 0.05  # meV/atom/ps
    t = np.arange(0.0, 10000.001, 10.0)  # fs
    per_atom = -5.0 + slope * 1e-3 * t / 1000.0 + 0.5e-3 * np.cos(2 * np.pi * t / 23.0 + 0.3)  # eV/atom
    drift = analysis.drift_meV(atoms * per_atom, t, atoms)
    assert abs(drift["drift_meV_per_atom_per_ps"] - slope) < DRIFT_FIT
    assert drift["max_abs_change_frames_meV_per_atom"] == pytest.approx(1000 * np.max(np.abs(per_atom - per_atom[0])), rel=ROUNDOFF_F64)


def test_water_structure_sees_a_broken_molecule():
    box = validation.packed_water(32, 1.0, 0)
    cell = np.asarray(box.cell.array)
    whole = analysis.water_structure(box.positions, box.numbers, cell)
    assert whole["intact_water_fraction"] == 1.0 and whole["closest_OO_A"] > 1.6
    broken = box.positions.copy()
    broken[1] = broken[0] + 2.0 * (broken[1] - broken[0]) / np.linalg.norm(broken[1] - broken[0])  # an H of molecule 0 (O, H, H) 2 Å out
    oxygens = broken[box.numbers == 8]
    assert np.min(analysis.minimum_image_distances(broken[1:2], oxygens, cell)) > analysis.OH_BOND_MAX  # it belongs to no O now
    assert analysis.water_structure(broken, box.numbers, cell)["intact_water_fraction"] == pytest.approx(31 / 32)


# ----------------------------------------------------------------------------- targets and guard trips
def _stage(**changes):
    stage = {"steps_asked": 100, "steps_done": 100, "guard": None}
    stage.update(changes)
    return stage


@pytest.mark.parametrize("drift, nve_guard, passes", [(0.05, None, True), (-0.05, None, True), (-0.2, None, False), (0.05, {"quantity": "x"}, False)])
def test_the_drift_target_takes_the_magnitude_and_needs_a_clean_run(drift, nve_guard, passes):
    water = {"equilibration": _stage(), "nve": _stage(drift_meV_per_atom_per_ps=drift, guard=nve_guard), "nvt": _stage(), "rdf_OO": {"first_peak_A": 2.8}}
    targets = validation.targets({"water": water, "vacuum": {}})
    assert targets["water_nve_drift"]["pass"] is passes
    assert targets["water_nvt_stable"]["pass"] and targets["water_rdf_first_peak"]["pass"]


@pytest.mark.parametrize("peak, nvt, passes", [(2.59, _stage(), False), (3.01, _stage(), False), (2.6, _stage(), True),
                                               (2.8, _stage(steps_done=50), False), (None, _stage(), False)])
def test_the_rdf_target_needs_the_peak_in_range_and_a_complete_production(peak, nvt, passes):
    water = {"equilibration": _stage(), "nve": _stage(drift_meV_per_atom_per_ps=0.0), "nvt": nvt, "rdf_OO": {"first_peak_A": peak}}
    assert validation.targets({"water": water, "vacuum": {}})["water_rdf_first_peak"]["pass"] is passes


def test_a_failed_liquid_fails_every_liquid_target_and_a_vacuum_molecule_that_flew_apart_fails():
    vacuum = {"ethanol": {"thermalisation": _stage(), "nve": _stage(initial_max_radius_A=2.0, max_radius_A=5.5)},
              "water_hexamer": {"thermalisation": _stage(), "nve": _stage(initial_max_radius_A=4.0, max_radius_A=6.5)}}
    targets = validation.targets({"water": {"error": "RuntimeError: x"}, "vacuum": vacuum})
    assert not any(targets[name]["pass"] for name in ("water_nve_drift", "water_nvt_stable", "water_rdf_first_peak", "ethanol_vacuum_stable"))
    assert targets["water_hexamer_vacuum_stable"]["pass"]


def _springs(positions, **unused):
    return 50.0 * jnp.sum((positions - jnp.array([[0.75, 0.0, 0.0], [-0.75, 0.0, 0.0]])) ** 2)


def test_a_tripped_guard_is_recorded_with_its_time_and_the_stage_returns():
    init_fn, step_fn = md.langevin(_springs, 0.5, temperature=300.0)
    state = init_fn(np.array([[0.75, 0.0, 0.0], [-0.75, 0.0, 0.0]]), np.array([1.008, 1.008]), key=jax.random.key(0), temperature=300.0)
    chunk = validation.make_chunk({}, step_fn, 10, 2, guards=md.Guards(max_temperature=1.0))  # 300 K trips a 1 K bound at once
    end, record, series = validation.run_stage(chunk, state, 3)
    assert record["guard"]["quantity"] == "temperature (K)" and record["guard"]["chunk"] == 0
    assert record["guard"]["steps"] == [1, 20] and record["guard"]["time_ps"] == [0.0005, 0.01]
    assert record["steps_done"] == 0 and end is state and len(series["step"]) == 0


@pytest.mark.parametrize("ps, frame_ps, chunk_ps, plan", [(100.0, 0.1, 5.0, (200, 50, 20)), (5.0, 0.1, 5.0, (200, 50, 1)),
                                                          (10.0, 0.01, 5.0, (20, 500, 2)), (0.7, 0.1, 0.5, (200, 1, 7))])
def test_chunk_plan(ps, frame_ps, chunk_ps, plan):
    assert validation.chunk_plan("x", ps, frame_ps, chunk_ps) == plan


@pytest.mark.parametrize("argv, match", [(["--nve-ps", "0.0003"], "multiple of the 0.5 fs"), (["--nvt-ps", "1.05"], "whole number of frame"),
                                         (["--rdf-last-ps", "200"], "rdf-last-ps"), (["--water-molecules", "1"], "water-molecules"),
                                         (["--equil-ps", "-1"], "equil-ps")])
def test_bad_settings_are_refused_with_a_value_error(argv, match):
    with pytest.raises(ValueError, match=match):
        validation.check_settings(validation.parse_args(["--out", "x.json"] + argv))


# ----------------------------------------------------------------------------- the whole run, tiny
TINY = ["--model", "default", "--dtype", "float64", "--water-molecules", "32", "--relax-steps", "20", "--equil-ps", "0.05", "--nve-ps", "0.05",
        "--nvt-ps", "0.1", "--rdf-last-ps", "0.05", "--frame-ps", "0.01", "--nve-frame-ps", "0.005", "--chunk-ps", "0.05",
        "--vacuum-thermalise-ps", "0.01", "--vacuum-ps", "0.05"]


@pytest.mark.slow
def test_main_on_a_tiny_box_writes_every_field(tmp_path):
    out = tmp_path / "liquid.json"
    returned = validation.main(TINY + ["--out", str(out)])
    data = json.loads(out.read_text())  # strict JSON: no NaN
    assert data == returned
    for key in ("device", "jax", "command", "environment", "settings", "water", "vacuum", "targets", "all_pass", "wall_s"):
        assert key in data, key
    assert len(data["model"]["sha256"]) == 64 and data["model"]["file"] == "default.safetensors" and data["model"]["compressed"] is False
    assert set(data["targets"]) == {"water_nve_drift", "water_nvt_stable", "water_rdf_first_peak", "ethanol_vacuum_stable", "water_hexamer_vacuum_stable"}
    water = data["water"]
    assert water["atoms"] == 96 and water["relax"]["max_force_last_step_eV_A"] < water["relax"]["max_force_first_step_eV_A"]
    for stage, steps in (("equilibration", 100), ("nve", 100), ("nvt", 200)):
        record = water[stage]
        assert record["guard"] is None and record["steps_done"] == steps, (stage, record)
        assert record["neighbor_capacity"] >= validation.CAPACITY_MULTIPLIER * water["neighbor_allocations"][-1]["max_neighbors"] and record["neighbor_allocations"] == []
        for key in ("temperature_mean_K", "temperature_std_K", "temperature_max_K_every_step", "closest_pair_A", "reallocations", "wall_s"):
            assert record[key] is not None, (stage, key)
    for key in ("drift_meV_per_atom_per_ps", "max_abs_energy_change_meV_per_atom_every_step", "max_abs_change_frames_meV_per_atom"):
        assert np.isfinite(water["nve"][key]), key
    rdf = water["rdf_OO"]
    assert rdf["frames"] == 5 and len(rdf["r_A"]) == len(rdf["g"]) > 100 and rdf["first_peak_A"] is not None
    assert set(water["structure"]) == {"packed", "relaxed", "equilibrated", "after_nve", "after_nvt"}
    for name in ("ethanol", "water_hexamer"):
        nve = data["vacuum"][name]["nve"]
        assert nve["steps_done"] == 100 and np.isfinite(nve["drift_meV_per_atom_per_ps"]) and nve["max_radius_A"] > 0
    assert data["command"].startswith("python3 benchmarks/liquid_md_validation.py --model default")
