"""The ``mlff-jax`` command end to end: eval, md (trajectory, log, progress), bench, convert, bad input."""

import csv
import json
import os
import subprocess
import sys
import types

import ase.io
import numpy as np
import pytest

import tolerances as tol
from conftest import upstream_path
from mlff_jax import _cli_md, cli
from mlff_jax.data import example


@pytest.fixture
def model_path():
    return str(upstream_path("checkpoints", "ultra-tiny-21k.model.pt"))


def _run(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_prints_the_model_energy_and_forces(model_path, capsys, load_model):
    code, out, err = _run(["eval", "ethanol", "--model", model_path, "--dtype", "float64", "--repeats", "2"], capsys)
    assert code == 0, err
    atoms = example("ethanol")
    energy, forces = load_model("ultra-tiny-21k", "float64").energy_and_forces(atoms.positions, atoms.numbers)
    assert f"energy: {float(energy):.6f} eV" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0].isdigit()]
    assert len(rows) == len(atoms)
    np.testing.assert_allclose(np.array([r[2:5] for r in rows], float), forces, rtol=0, atol=1e-6)  # printed with 6 decimals
    assert "µs per call" in out


def test_md_end_to_end_writes_a_readable_trajectory_and_log_and_shows_progress(model_path, capsys, tmp_path, monkeypatch, load_model):
    monkeypatch.setattr(_cli_md, "STEPS_PER_CHUNK", 20)  # two chunks, so the bar shows a steady rate
    traj = tmp_path / "run.xyz"
    argv = ["md", "ethanol", "--model", model_path, "--dtype", "float64", "--steps", "40", "--timestep", "0.25", "--temperature", "100", "--frame-interval", "10",
            "--thermostat", "none", "--relax-fmax", "0", "--equilibrate", "0", "--output", str(traj)]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert "steps/s" in err and "ns/day" in err and "100%" in err
    assert "steps/s" in out and "ns/day" in out
    assert "temperature: mean" in out and "eV/atom/ps" in out and "guards: ok" in out

    frames = ase.io.read(traj, index=":")
    assert len(frames) == 5
    np.testing.assert_allclose(frames[0].positions, example("ethanol").positions, rtol=0, atol=1e-12)
    with open(tmp_path / "run.csv") as handle:
        log = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in log] == [0, 10, 20, 30, 40]
    model = load_model("ultra-tiny-21k", "float64")
    for frame, row in zip(frames, log):
        energy, forces = model.energy_and_forces(frame.positions, frame.numbers)
        assert abs(frame.get_potential_energy() - float(energy)) < 1e-6
        assert abs(float(row["potential_energy_eV"]) - float(energy)) < 1e-6
        np.testing.assert_allclose(frame.get_forces(), forces, rtol=0, atol=1e-6)
        ekin = frame.get_kinetic_energy()
        assert abs(float(row["kinetic_energy_eV"]) - ekin) < 1e-6
        assert abs(float(row["total_energy_eV"]) - float(row["potential_energy_eV"]) - float(row["kinetic_energy_eV"])) < 1e-6
        assert abs(float(row["temperature_K"]) - frame.get_temperature()) < 1e-2


@pytest.mark.slow  # one of the heaviest default tests (5-20 s on 2 cores); CI runs it with the slow ones
def test_md_langevin_is_reproducible_from_its_seed(model_path, capsys, tmp_path):
    paths = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        paths.append(tmp_path / f"{name}.xyz")
        argv = ["md", "ethanol", "--model", model_path, "--steps", "20", "--thermostat", "langevin", "--friction", "0.05", "--seed", seed, "--output", str(paths[-1]), "--log", str(tmp_path / f"{name}.log.csv"), "--quiet",
                "--relax-fmax", "0", "--equilibrate", "5"]
        code, _, err = _run(argv, capsys)
        assert code == 0, err
    a, b, c = (ase.io.read(p, index=-1).positions for p in paths)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_bench_reports_and_writes_json(model_path, capsys, tmp_path):
    out_json = tmp_path / "bench.json"
    code, out, err = _run(["bench", "--model", model_path, "--molecule", "ethanol", "--repeats", "2", "--md-steps", "5", "--json", str(out_json)], capsys)
    assert code == 0, err
    result = json.loads(out_json.read_text())
    assert result["atoms"] == 9 and result["md_steps_per_s"] > 0 and result["energy_and_forces_us_median"] > 0
    assert "µs/step" in out
    physics = result["md_physics"]
    assert physics["temperature_start_K"] > 0 and physics["temperature_max_K"] >= physics["temperature_mean_K"]
    assert result["valid"] == physics["valid"] and isinstance(physics["nve_drift_eV_per_atom_per_ps"], float)
    assert "temperature: start" in out and "eV/atom/ps" in out and "physics:" in out


def test_convert_writes_a_checkpoint_that_loads_to_the_same_model(model_path, capsys, tmp_path, load_model):
    import mlff_jax

    dst = tmp_path / "model.safetensors"
    code, out, err = _run(["convert", model_path, str(dst), "--dtype", "float64"], capsys)
    assert code == 0, err
    atoms = example("water10")
    ours = mlff_jax.load(dst, dtype="float64").energy_and_forces(atoms.positions, atoms.numbers)
    theirs = load_model("ultra-tiny-21k", "float64").energy_and_forces(atoms.positions, atoms.numbers)
    assert abs(float(ours[0]) - float(theirs[0])) <= tol.ROUNDOFF_F64
    code, _, err = _run(["convert", model_path, str(dst)], capsys)
    assert code == 2 and "exists" in err


def _bad_inputs(tmp_path, model_path):
    unsupported = tmp_path / "oganesson.xyz"
    unsupported.write_text("2\n\nOg 0 0 0\nH 0 0 1\n")
    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("2\n\nC 0 0 0\nH 0 0 x\n")
    out = str(tmp_path / "t.xyz")
    return {
        "missing structure": (["eval", str(tmp_path / "missing.xyz"), "--model", model_path], "not found"),
        "unknown model": (["eval", "ethanol", "--model", "no-such-model"], "unknown model"),
        "unsupported element": (["eval", str(unsupported), "--model", model_path], "unknown element"),
        "unreadable file": (["eval", str(garbage), "--model", model_path], "cannot read"),
        "bad number": (["md", "ethanol", "--model", model_path, "--steps", "ten", "--output", out], "--steps"),
        "negative temperature": (["md", "ethanol", "--model", model_path, "--steps", "10", "--temperature", "-5", "--output", out], "--temperature"),
        "abbreviated flag": (["md", "ethanol", "--model", model_path, "--steps", "10", "--step", "100", "--output", out], "unrecognized arguments: --step 100"),
        "abbreviated top-level flag": (["--vers", "eval", "ethanol"], "unrecognized arguments: --vers"),
        "steps vs frames": (["md", "ethanol", "--model", model_path, "--steps", "15", "--output", out], "multiple"),
        "missing checkpoint": (["convert", str(tmp_path / "nope.pt"), str(tmp_path / "x.safetensors")], "not found"),
        "unknown command": (["fly"], "invalid choice"),
    }


@pytest.mark.parametrize("case", ["missing structure", "unknown model", "unsupported element", "unreadable file", "bad number", "negative temperature", "abbreviated flag",
                                  "abbreviated top-level flag", "steps vs frames", "missing checkpoint", "unknown command"])
def test_bad_input_prints_one_line_and_exits_nonzero(case, tmp_path, model_path, capsys):
    argv, expected = _bad_inputs(tmp_path, model_path)[case]
    code, out, err = _run(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("mlff-jax"), err
    assert expected in err and "Traceback" not in err


def test_bad_input_from_the_installed_command_has_no_traceback(tmp_path, model_path):
    unsupported = tmp_path / "oganesson.xyz"
    unsupported.write_text("2\n\nOg 0 0 0\nH 0 0 1\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, "-m", "mlff_jax.cli", "eval", str(unsupported), "--model", model_path], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["mlff-jax eval: error: unknown element: atomic number(s) [118] outside 1..100 (atoms [0])"]


def test_data_and_train_delegate_to_the_trainer(monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("mlff_jax.train.data")
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "mlff_jax.train.data", fake)
    code, _, _ = _run(["data", "--help", "--out", "x"], capsys)
    assert code == 0 and calls == [["--help", "--out", "x"]]
    with pytest.raises(cli.UserError, match="not available"):
        cli._delegate("mlff_jax.no_such_module", "train", [])


@pytest.mark.slow
def test_md_and_eval_of_a_periodic_box(model_path, capsys, tmp_path, load_model):
    pytest.importorskip("mlff_jax.neighbors")
    from md_helpers import two_ethanols_in_a_box

    box = two_ethanols_in_a_box()
    start = tmp_path / "box.xyz"
    ase.io.write(start, box, format="extxyz")
    model = load_model("ultra-tiny-21k", "float64")
    energy, _ = model.energy_and_forces(box.positions, box.numbers, cell=box.cell.array, pbc=box.pbc)
    code, out, err = _run(["eval", str(start), "--model", model_path, "--dtype", "float64", "--repeats", "0"], capsys)
    assert code == 0, err
    assert f"energy: {float(energy):.6f} eV" in out

    traj = tmp_path / "run.xyz"
    code, out, err = _run(["md", str(start), "--model", model_path, "--dtype", "float64", "--steps", "20", "--timestep", "0.25", "--output", str(traj), "--quiet",
                           "--relax-fmax", "0", "--equilibrate", "0"], capsys)
    assert code == 0, err
    last = ase.io.read(traj, index=-1)
    assert last.pbc.all() and np.allclose(last.cell.array, box.cell.array)
    energy, forces = model.energy_and_forces(last.positions, last.numbers, cell=last.cell.array, pbc=last.pbc)
    assert abs(last.get_potential_energy() - float(energy)) < 1e-6
    np.testing.assert_allclose(last.get_forces(), forces, rtol=0, atol=1e-6)


def test_eval_uses_the_bundled_default_model(capsys):
    import mlff_jax

    try:
        model = mlff_jax.load("default")
    except (FileNotFoundError, ValueError):
        pytest.skip("no bundled default model in this installation yet")
    code, out, err = _run(["eval", "ethanol", "--repeats", "0"], capsys)
    assert code == 0, err
    atoms = example("ethanol")
    energy, _ = model.energy_and_forces(atoms.positions, atoms.numbers)
    assert f"energy: {float(energy):.6f} eV" in out


def test_every_subcommand_refuses_abbreviated_flags():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    assert parser.allow_abbrev is False
    assert all(p.allow_abbrev is False for p in subparsers.choices.values())


def test_cli_helpers_live_in_one_module_that_imports_neither_command():
    import importlib

    common = importlib.import_module("mlff_jax._cli_common")
    assert cli.UserError is common.UserError and _cli_md.UserError is common.UserError
    def imported(module):
        import ast

        tree = ast.parse(open(module.__file__).read())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    assert not imported(common) & {"mlff_jax.cli", "mlff_jax._cli_md"}
    assert "mlff_jax.cli" not in imported(_cli_md)


def test_md_that_explodes_stops_with_one_line_naming_the_guard(model_path, capsys, tmp_path):
    # 20 fs steps: ethanol's hydrogens fly apart within a few steps
    argv = ["md", "ethanol", "--model", model_path, "--steps", "100", "--timestep", "20", "--thermostat", "none", "--relax-fmax", "0", "--equilibrate", "0",
            "--output", str(tmp_path / "boom.xyz"), "--quiet"]
    code, out, err = _run(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and "simulation guard tripped in chunk 0" in err, err
    assert any(q in err for q in ("temperature", "energy change", "closest pair", "non-finite"))


def test_md_relaxes_before_drawing_velocities(model_path, capsys, tmp_path):
    traj = tmp_path / "run.xyz"
    argv = ["md", "ethanol", "--model", model_path, "--dtype", "float64", "--steps", "10", "--temperature", "0", "--thermostat", "none", "--equilibrate", "0",
            "--relax-fmax", "0.05", "--output", str(traj), "--quiet"]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert out.startswith("relaxed (FIRE)")
    first = ase.io.read(traj, index=0)
    assert np.linalg.norm(first.get_forces(), axis=1).max() <= 0.05
