"""Several devices (mlff_jax.parallel): sharded batches and slab decomposition equal one device.

The multi-device checks run in a subprocess with 4 faked CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``): the device count is fixed when JAX
initialises, and this process already did so with one. See tests/parallel_checks.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import upstream_path
from tolerances import FLOAT32_TRANSLATION_ENERGY_PER_ATOM, FLOAT32_TRANSLATION_FORCES, ROUNDOFF_F64

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = "ultra-tiny-21k"


def run_checks(what: str) -> dict:
    model_path = upstream_path("checkpoints", f"{MODEL}.model.pt")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "parallel_checks.py"), what, str(model_path)], env=env,
                          capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"parallel checks failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def fast():
    return run_checks("fast")


# ----------------------------------------------------------------------------- 4 faked devices
def test_four_devices_are_visible_to_the_checks(fast):
    assert fast["devices"] == 4


def test_sharded_batch_of_molecules_equals_one_device(fast):
    energy, forces = fast["batch_dense"]
    assert energy < ROUNDOFF_F64 and forces < ROUNDOFF_F64


def test_sharded_periodic_batch_equals_one_device(fast):
    energy, forces = fast["batch_periodic"]
    assert energy < ROUNDOFF_F64 and forces < ROUNDOFF_F64


def test_slab_decomposition_forces_equal_one_device(fast):
    energy, forces = fast["domain_4"]  # triclinic cell, atoms outside the cell, 4 slabs
    assert energy < ROUNDOFF_F64 and forces < ROUNDOFF_F64


def test_slab_decomposition_with_the_directed_edge_layout_equals_one_device(fast):
    energy, forces = fast["domain_3_edges"]  # GPU default layout, 3 slabs
    assert energy < ROUNDOFF_F64 and forces < ROUNDOFF_F64


def test_float32_translated_structures_give_the_same_results_on_four_devices():
    """Molecules 1e8 Å away in a sharded batch, a box 10^4 cells away in slabs (float32, 4 devices)."""
    checks = run_checks("float32")
    for key in ("f32_batch_translation", "f32_domain_translation"):
        energy_per_atom, forces = checks[key]
        assert energy_per_atom <= FLOAT32_TRANSLATION_ENERGY_PER_ATOM and forces <= FLOAT32_TRANSLATION_FORCES, (key, checks[key])


def test_energy_and_forces_with_devices_decomposes_a_periodic_system(fast):
    energy, forces = fast["domain_2_model"]
    assert energy < ROUNDOFF_F64 and forces < ROUNDOFF_F64


def test_migration_puts_every_atom_on_its_slab_device_exactly_once(fast):
    assert fast["migration_complete"] and fast["migration_owner_ok"]
    assert fast["migration_positions"] == 0.0
    assert not fast["migration_overflow_ok_capacity"]


def test_migration_beyond_capacity_raises_the_overflow_flag(fast):
    assert fast["migration_overflow_flag"]


@pytest.mark.slow
def test_domain_md_matches_one_device_and_loses_no_atom():
    result = run_checks("md")
    assert result["md_atoms_crossed"] > result["md_num_atoms"] // 4  # the test is meaningful: many atoms changed slab
    assert result["md_rebuilds"] >= 5
    for key in ("md_positions", "md_velocities", "md_forces", "md_energy"):
        assert result[key] < ROUNDOFF_F64, (key, result[key])


# ----------------------------------------------------------------------------- this process (one device)
def test_balance_by_atoms_keeps_the_largest_device_within_one_structure_of_the_mean():
    from mlff_jax.parallel import balance_by_atoms

    rng = np.random.default_rng(0)
    for num_devices in (2, 3, 8):
        sizes = rng.integers(1, 60, 101)
        groups = balance_by_atoms(sizes, num_devices)
        assert sorted(np.concatenate(groups).tolist()) == list(range(101))
        loads = [sizes[g].sum() for g in groups]
        assert max(loads) <= sizes.sum() / num_devices + sizes.max()


def test_plan_shards_places_every_atom_once():
    from mlff_jax.parallel import plan_shards

    batch = np.repeat(np.arange(7), [5, 1, 9, 3, 3, 12, 2])
    plan = plan_shards(batch, 7, 3)
    placed = plan.atom_index[plan.atom_index >= 0]
    assert sorted(placed.tolist()) == list(range(len(batch)))
    for d, group in enumerate(plan.groups):  # each slot's structure is the one recorded for it
        real = plan.atom_index[d] >= 0
        np.testing.assert_array_equal(batch[plan.atom_index[d, real]], np.asarray(group)[plan.local_batch[d, real]])


def test_balance_by_atoms_deals_largest_first_to_the_lightest_device():
    from mlff_jax.parallel import balance_by_atoms

    rng = np.random.default_rng(1)
    for num_devices in (1, 2, 3, 5):
        sizes = rng.integers(1, 12, 60)  # many ties: the tie rules matter
        loads, expected = np.zeros(num_devices, np.int64), [[] for _ in range(num_devices)]
        for s in np.argsort(-sizes, kind="stable"):  # the documented rule, step by step
            d = int(np.argmin(loads))
            expected[d].append(int(s))
            loads[d] += sizes[s]
        for got, want in zip(balance_by_atoms(sizes, num_devices), expected):
            assert got.tolist() == sorted(want)


def test_plan_shards_keeps_structures_in_index_order_and_atoms_in_caller_order():
    from mlff_jax.parallel import plan_shards

    rng = np.random.default_rng(2)
    batch = rng.permutation(np.repeat(np.arange(9), rng.integers(1, 7, 9)))  # unsorted batch
    plan = plan_shards(batch, 9, 4)
    for d, group in enumerate(plan.groups):
        real = plan.atom_index[d] >= 0
        expected = np.concatenate([np.flatnonzero(batch == s) for s in group]) if len(group) else np.zeros(0, np.int64)
        np.testing.assert_array_equal(plan.atom_index[d, real], expected)
        assert real.sum() == len(expected) and not real[len(expected):].any()  # padding only at the end
    # where each atom and structure went, as recorded for the reassembly
    np.testing.assert_array_equal(plan.atom_index[plan.atom_device, plan.atom_column], np.arange(len(batch)))
    for s in range(9):
        assert s == plan.groups[plan.structure_device[s]][plan.structure_slot[s]]


def test_one_device_keeps_the_single_device_path(load_model):
    model = load_model(MODEL)
    rng = np.random.default_rng(3)
    positions, numbers, batch = rng.normal(size=(12, 3)) * 1.4, rng.choice([1, 6, 7, 8], 12), np.repeat([0, 1, 2], 4)
    e0, f0 = model.energy_and_forces(positions, numbers, batch=batch)
    e1, f1 = model.energy_and_forces(positions, numbers, batch=batch, devices=1)
    np.testing.assert_array_equal(e0, e1)
    np.testing.assert_array_equal(f0, f1)


def test_slabs_thinner_than_the_receptive_field_are_refused(load_model):
    from mlff_jax.parallel import domain

    model = load_model(MODEL)
    positions = np.random.default_rng(0).uniform(0, 9, (30, 3))
    with pytest.raises(ValueError, match="slabs too thin"):
        domain.plan(model, positions, np.eye(3) * 30.0, None, 4)  # 7.5 Å slabs, 10 Å halo


def test_bad_device_selection_is_refused():
    import jax

    from mlff_jax.parallel import resolve_devices

    with pytest.raises(ValueError, match="visible"):
        resolve_devices(jax.device_count() + 1)
    with pytest.raises(ValueError, match="at least one"):
        resolve_devices([])
