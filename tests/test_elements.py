"""A model knows the elements it was trained on and refuses others, unless the user opts in."""

import json
import pathlib

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlff_jax
from conftest import upstream_path
from mlff_jax import cli
from mlff_jax.config import PaiNNConfig
from mlff_jax.elements import UPSTREAM_ELEMENTS, check_trained_elements

WEIGHTS = pathlib.Path(__file__).resolve().parents[1] / "weights"


@pytest.fixture(scope="module")
def default_model():
    return mlff_jax.load("default", dtype="float64")


def _with(symbol: str) -> ase.Atoms:
    """A water molecule next to one atom of ``symbol``, 2.5 Å away."""
    return ase.Atoms(["O", "H", "H", symbol], positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0], [0, 0, 2.5]])


@pytest.mark.parametrize("symbol, z", [("Au", 79), ("U", 92)])
def test_an_untrained_element_raises_naming_the_element_and_the_model(default_model, symbol, z):
    atoms = _with(symbol)
    with pytest.raises(ValueError, match=rf"{symbol} \(Z={z}\) is not among the elements model 'default' was trained on") as info:
        default_model.energy_and_forces(atoms.positions, atoms.numbers)
    assert "H, C, N, O, F, S, Cl" in str(info.value) and "allow_untrained_elements=True" in str(info.value)


def test_the_batched_and_periodic_host_paths_check_elements_too(default_model):
    atoms = _with("Au")
    with pytest.raises(ValueError, match="Au"):
        default_model.energy_and_forces(atoms.positions, atoms.numbers, batch=np.zeros(len(atoms), int))
    with pytest.raises(ValueError, match="Au"):
        default_model.energy_and_forces(atoms.positions, atoms.numbers, cell=np.eye(3) * 12.0)


def test_opting_in_evaluates_untrained_elements():
    model = mlff_jax.load("default", dtype="float64", allow_untrained_elements=True)
    atoms = _with("Au")
    energy, forces = model.energy_and_forces(atoms.positions, atoms.numbers)
    assert np.isfinite(float(energy)) and np.all(np.isfinite(forces))
    assert "(others allowed)" in repr(model)


def test_with_untrained_elements_allows_on_a_copy_and_keeps_the_original_strict(default_model):
    atoms = _with("U")
    lenient = default_model.with_untrained_elements()
    energy, _ = lenient.energy_and_forces(atoms.positions, atoms.numbers)
    assert np.isfinite(float(energy))
    with pytest.raises(ValueError, match="U"):
        default_model.energy_and_forces(atoms.positions, atoms.numbers)


def test_copies_of_the_model_keep_its_elements_name_and_choice(default_model):
    copy = default_model.with_implementation("xla")
    assert (copy.config.elements, copy.name, copy.allow_untrained_elements) == (default_model.config.elements, "default", False)
    with pytest.raises(ValueError, match="Au"):
        copy.check_elements(_with("Au").numbers)
    assert copy.with_untrained_elements().with_implementation("xla").allow_untrained_elements


def test_the_shipped_default_model_records_the_elements_of_its_training_data(default_model):
    log = json.loads((WEIGHTS / "default.train_log.json").read_text())
    assert default_model.config.elements == tuple(log["dataset"]["elements"]) == (1, 6, 7, 8, 9, 16, 17)
    assert sorted(int(z) for z in log["reference_energies_eV"]) == list(default_model.config.elements)
    assert "elements=H, C, N, O, F, S, Cl" in repr(default_model)


def test_a_checkpoint_without_a_record_gets_upstreams_elements():
    model = mlff_jax.load(upstream_path("checkpoints", "ultra-tiny-21k.model.pt"))
    assert model.config.elements == UPSTREAM_ELEMENTS


def test_elements_given_at_load_replace_the_recorded_ones():
    model = mlff_jax.load("default", elements="H,O")
    assert model.config.elements == (1, 8)
    assert mlff_jax.load("default", elements=["H", 8, "Au"]).config.elements == (1, 8, 79)
    atoms = _with("H")
    model.energy_and_forces(atoms.positions, atoms.numbers)
    methane = ase.Atoms("CH4", positions=np.eye(5, 3) * 1.1)
    with pytest.raises(ValueError, match=r"C \(Z=6\)"):
        model.energy_and_forces(methane.positions, methane.numbers)
    with pytest.raises(ValueError, match="unknown element 'Xx'"):
        mlff_jax.load("default", elements="H,Xx")


def test_save_and_load_keep_the_elements(tmp_path):
    model = mlff_jax.load("default", dtype="float64", elements=[1, 6, 8])
    mlff_jax.save(model, tmp_path / "m.safetensors")
    assert mlff_jax.load(tmp_path / "m.safetensors").config.elements == (1, 6, 8)


@pytest.mark.parametrize("bad", [(), (0,), (101,), (1.0,), (True,), "HCN"])
def test_config_refuses_elements_that_are_not_atomic_numbers_up_to_max_z(bad):
    with pytest.raises(ValueError, match="PaiNNConfig.elements"):
        PaiNNConfig(max_z=100, elements=bad)


def test_config_elements_are_sorted_unique_and_survive_a_dict_round_trip():
    config = PaiNNConfig(elements=[8, 1, 8])
    assert config.elements == (1, 8)
    assert PaiNNConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_jit_calls_are_not_checked_but_check_elements_is_available(default_model):
    atoms = _with("Au")
    energy = jax.jit(default_model.energy_fn)(jnp.asarray(atoms.positions), jnp.asarray(atoms.numbers))
    assert np.isfinite(float(energy))  # documented: traced values cannot be checked
    with pytest.raises(ValueError, match="Au"):
        default_model.check_elements(atoms.numbers)


def test_md_potential_checks_elements_once_on_the_host(default_model):
    from mlff_jax import md

    with pytest.raises(ValueError, match=r"U \(Z=92\)"):
        md.model_potential(default_model, _with("U").numbers)
    md.model_potential(default_model.with_untrained_elements(), _with("U").numbers)


def test_the_check_is_one_vectorised_lookup_that_names_each_element_once():
    z = np.array([1, 79, 79, 92, 6] * 1000)
    with pytest.raises(ValueError, match=r"Au \(Z=79\), U \(Z=92\) is not among the elements model m"):
        check_trained_elements(z, (1, 6), "m")
    check_trained_elements(z, None, "m")  # not recorded: nothing refused


# ------------------------------------------------------------------------- ASE calculator
def test_calculator_refuses_an_untrained_element_unless_allowed(default_model):
    from mlff_jax import MLFFCalculator

    atoms = _with("Au")
    atoms.calc = MLFFCalculator(default_model)
    with pytest.raises(ValueError, match=r"Au \(Z=79\).*'default'"):
        atoms.get_potential_energy()
    assert MLFFCalculator("default", allow_untrained_elements=True).model.allow_untrained_elements
    atoms.calc = MLFFCalculator(default_model, allow_untrained_elements=True)
    assert np.isfinite(atoms.get_potential_energy())
    assert not default_model.allow_untrained_elements  # the caller's model is left strict


def test_calculator_refuses_an_untrained_element_in_a_periodic_cell(default_model):
    from mlff_jax import MLFFCalculator

    atoms = _with("U")
    atoms.cell, atoms.pbc = np.eye(3) * 10.0, True
    atoms.calc = MLFFCalculator(default_model)
    with pytest.raises(ValueError, match=r"U \(Z=92\)"):
        atoms.get_forces()


# ------------------------------------------------------------------------- CLI
def _run(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return (code, *capsys.readouterr())


def test_cli_refuses_an_untrained_element_unless_allowed(tmp_path, capsys):
    path = tmp_path / "gold.xyz"
    _with("Au").write(path)
    code, _, err = _run(["eval", str(path), "--repeats", "0"], capsys)
    assert code == 2 and "Au (Z=79)" in err and "'default'" in err and "--allow-untrained-elements" in err
    assert err.count("\n") == 1
    code, out, err = _run(["eval", str(path), "--repeats", "0", "--allow-untrained-elements"], capsys)
    assert code == 0, err
    assert "energy:" in out


def test_cli_convert_records_elements_given_on_the_command_line(tmp_path, capsys):
    dst = tmp_path / "m.safetensors"
    code, out, err = _run(["convert", str(upstream_path("checkpoints", "ultra-tiny-21k.model.pt")), str(dst), "--elements", "H,C,O"], capsys)
    assert code == 0, err
    assert mlff_jax.load(dst).config.elements == (1, 6, 8)
