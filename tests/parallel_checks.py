"""Multi-device checks run in a subprocess with faked CPU devices (see tests/test_parallel.py).

    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu python3 tests/parallel_checks.py fast|md MODEL_PATH  (or: smooth)

Prints one JSON object of measured differences (float64); the tests assert on them. Faked devices
must be configured before JAX initialises, which the pytest process already did with one device.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import mlff_jax  # noqa: E402
from mlff_jax import md, parallel  # noqa: E402
from periodic_systems import WATER, random_rotation  # noqa: E402

MODEL = "ultra-tiny-21k"  # 2 blocks x 5 Å: a 10 Å halo


def water_slab_box(cell, per_axis, seed=0):
    """Water molecules on a per_axis grid of fractional positions of ``cell``, randomly oriented."""
    rng = np.random.default_rng(seed)
    k = np.asarray(per_axis)
    grid = (np.stack(np.meshgrid(*[np.arange(x) for x in k], indexing="ij"), -1).reshape(-1, 3) + 0.5) / k
    positions = np.concatenate([c + WATER @ random_rotation(rng).T + rng.normal(scale=0.1, size=3) for c in grid @ cell])
    return positions, np.tile([8, 1, 1], len(grid))


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def fast_checks(model):
    out = {"devices": jax.device_count()}
    rng = np.random.default_rng(0)
    # 1. batches: 9 molecules of 2..20 atoms over 4 devices, dense path and neighbour-list path
    sizes = rng.integers(2, 21, 9)
    positions = np.concatenate([rng.normal(size=(n, 3)) * 1.3 for n in sizes])
    numbers = np.concatenate([rng.integers(1, 9, n) for n in sizes])
    batch = np.repeat(np.arange(len(sizes)), sizes)
    e1, f1 = model.energy_and_forces(positions, numbers, batch=batch, devices=1)
    e4, f4 = model.energy_and_forces(positions, numbers, batch=batch)  # default: all visible devices
    out["batch_dense"] = [max_diff(e1, e4), max_diff(f1, f4)]
    cells = np.stack([np.eye(3) * rng.uniform(6.0, 8.0) for _ in sizes])  # periodic batch: the neighbour-list path
    e1, f1 = model.energy_and_forces(positions, numbers, batch=batch, cell=cells, devices=1)
    e4, f4 = model.energy_and_forces(positions, numbers, batch=batch, cell=cells, devices=4)
    out["batch_periodic"] = [max_diff(e1, e4), max_diff(f1, f4)]
    # 2. one periodic system in 4 slabs, triclinic, some atoms outside the cell
    cell = np.array([[44.0, 0.0, 0.0], [1.5, 9.3, 0.0], [-1.0, 0.8, 9.3]])
    positions, numbers = water_slab_box(cell, (14, 3, 3))
    positions[::7] += cell[0] * rng.integers(-2, 3, (len(positions[::7]), 1))
    e1, f1 = model.energy_and_forces(positions, numbers, cell=cell)
    e4, f4 = parallel.decomposed_energy_and_forces(model, positions, numbers, cell, devices=4)
    out["domain_4"] = [max_diff(e1, e4), max_diff(f1, f4)]
    e2, f2 = model.energy_and_forces(positions, numbers, cell=cell, devices=2)  # through the model
    out["domain_2_model"] = [max_diff(e1, e2), max_diff(f1, f2)]
    from mlff_jax import periodic

    periodic.LAYOUT_OVERRIDE = "edges"  # the GPU's layout: the directed list, no pair folding
    try:
        e3, f3 = parallel.decomposed_energy_and_forces(model, positions, numbers, cell, devices=3)
    finally:
        periodic.LAYOUT_OVERRIDE = None
    out["domain_3_edges"] = [max_diff(e1, e3), max_diff(f1, f3)]
    out["num_atoms_domain"] = len(positions)
    # 3. migration alone: atoms displaced anywhere (even many cells away) end on the device of their slab, once
    out.update(migration_checks(cell))
    return out


def float32_translation_checks(model32):
    """Float32 over 4 devices: molecules 1e8 Å away (sharded batch) and a box 10^4 cells away (slabs)
    give what they give at the origin (host paths centre / wrap in float64 before the cast)."""
    out = {}
    rng = np.random.default_rng(1)
    sizes = rng.integers(3, 12, 6)
    positions = np.concatenate([rng.normal(size=(n, 3)) * 1.3 for n in sizes])
    numbers = np.concatenate([rng.integers(1, 9, n) for n in sizes])
    batch = np.repeat(np.arange(len(sizes)), sizes)
    offsets = 1e8 * rng.normal(size=(len(sizes), 3))
    e0, f0 = model32.energy_and_forces(positions, numbers, batch=batch, devices=4)
    e1, f1 = parallel.sharded_energy_and_forces(model32, positions + offsets[batch], numbers, batch, len(sizes), devices=4)
    out["f32_batch_translation"] = [float(np.max(np.abs(e0 - e1) / sizes)), max_diff(f0, f1)]
    cell = np.array([[44.0, 0.0, 0.0], [1.5, 9.3, 0.0], [-1.0, 0.8, 9.3]])
    positions, numbers = water_slab_box(cell, (14, 3, 3))
    e0, f0 = parallel.decomposed_energy_and_forces(model32, positions, numbers, cell, devices=4)
    e1, f1 = parallel.decomposed_energy_and_forces(model32, positions + np.array([10_000, -20_000, 30_000]) @ cell, numbers, cell, devices=4)
    out["f32_domain_translation"] = [abs(e0 - e1) / len(numbers), max_diff(f0, f1)]
    return out


def migration_checks(cell):
    from jax.sharding import PartitionSpec

    from mlff_jax.neighbors.plan import SearchSpec
    from mlff_jax.parallel import domain
    from mlff_jax.parallel.mesh import AXIS, device_mesh, shard_map

    rng = np.random.default_rng(1)
    num, n, capacity = 4, 150, 64
    positions = rng.uniform(-3.0, 4.0, (n, 3)) @ cell  # up to three cells away from the home cell
    ids = np.full((num, capacity), -1, np.int32)
    blocks = np.zeros((num, capacity, 3))
    for d, chunk in enumerate(np.array_split(rng.permutation(n), num)):  # deliberately wrong owners
        ids[d, : len(chunk)] = chunk
        blocks[d, : len(chunk)] = positions[chunk]
    results = {}
    for cap in (capacity, 24):  # 24: too small for ~38 atoms per slab -> overflow, never a silent loss
        spec = domain.DomainSpec(num, 0, (True,) * 3, 5.0, 0.0, 10.0, cap, 8, SearchSpec(5.0, 0.0, (False, True, True), (1, 1, 1), (0, 0, 0), 8, 8))

        def one_device(cell, pos, ids):
            atoms, overflow = domain.migrate(spec, cell, {"positions": pos[0], "ids": ids[0]})
            return atoms["positions"][None], atoms["ids"][None], overflow[None]

        program = jax.jit(shard_map(one_device, device_mesh(jax.devices()[:num]), (PartitionSpec(),) + (PartitionSpec(AXIS),) * 2,
                                    (PartitionSpec(AXIS),) * 3))
        pos_out, ids_out, overflow = program(cell, blocks[:, :cap] if cap < capacity else blocks, ids[:, :cap] if cap < capacity else ids)
        if cap < capacity:  # inputs cut to fit the capacity: count what was given
            given = ids[:, :cap]
            results["migration_overflow_flag"] = bool(np.any(overflow))
            results["migration_overflow_given"] = int(np.sum(given >= 0))
            continue
        ids_out, pos_out = np.asarray(ids_out), np.asarray(pos_out)
        try:
            g = parallel.assemble(ids_out, positions=pos_out)
            s = (g["positions"] @ np.linalg.inv(cell))[:, 0]
            results["migration_owner_ok"] = bool(np.all(np.floor((s - np.floor(s)) * num) == g["owner"]))
            results["migration_positions"] = max_diff(g["positions"], positions)
            results["migration_complete"] = True
        except RuntimeError:
            results["migration_complete"] = False
        results["migration_overflow_ok_capacity"] = bool(np.any(overflow))
    return results


def md_checks(model):
    """NVE with a fast drift along the slab axis: atoms cross slab boundaries many times."""
    from ase import units

    from mlff_jax.neighbors import neighbor_list_fn

    cell = np.diag([44.0, 9.3, 9.3])
    positions, numbers = water_slab_box(cell, (14, 3, 3), seed=2)
    masses = parallel.domain_md.units_masses(numbers)
    velocities = np.array(md.maxwell_boltzmann(jax.random.key(1), masses[:, None], 300.0))
    # A drift of 0.25 Å/fs against the slab axis (and along the others): every atom moves 5 Å, half a
    # slab, in 20 fs, so about half of them change device, on top of thermal motion.
    velocities += np.array([-0.25, 0.1, 0.05]) / units.fs
    dt, skin, frame_interval, frames_per_chunk, chunks = 0.5, 0.5, 5, 4, 2
    # The reference's list is updated at the previous step's positions (JAX-MD's convention): a wide
    # skin keeps it exact at this speed. The decomposition tests its skin after every drift.
    fns = neighbor_list_fn(model.config.cutoff, skin=2.0, cell=cell)
    nbrs = fns.allocate(positions)
    init_fn, step_fn = md.nve(md.model_potential(model, numbers), dt)
    state = init_fn(positions, masses, velocities, neighbor=nbrs)
    # the imposed drift (0.25 Å/fs) counts as ~10⁵ K of kinetic energy: a deliberately unphysical run, no guards
    chunk = md.trajectory_chunk(step_fn, frame_interval, frames_per_chunk, neighbor_update=fns.update, guards=None)
    state, frames = md.run(chunk, state, chunks, neighbor=nbrs, neighbor_fn=fns)
    sim = parallel.domain_nve(model, cell, timestep=dt, skin=skin, devices=4)
    dstate = sim.init(positions, numbers, masses, velocities)
    dstate, dframes = sim.run(dstate, chunks, frame_interval, frames_per_chunk)
    g = sim.gather(dstate)  # raises if an atom is lost or duplicated
    s = (g["positions"] @ np.linalg.inv(cell))[:, 0]
    slab = np.floor((s - np.floor(s)) * 4)
    crossed = np.abs(np.floor(((positions @ np.linalg.inv(cell))[:, 0]) * 4) - np.floor(s * 4)) > 0
    return {
        "md_positions": max_diff(g["positions"], state.positions),
        "md_velocities": max_diff(g["velocities"], state.velocities),
        "md_forces": max_diff(g["forces"], state.forces),
        "md_energy": max_diff(dframes["potential_energy"], frames.potential_energy),
        "md_rebuilds": int(np.sum(dframes["rebuilds"])),
        "md_atoms_crossed": int(np.sum(crossed)),
        "md_owner_mismatch": int(np.sum(slab != g["owner"])),  # allowed only within skin / 2 of a face
        "md_num_atoms": len(positions),
    }


def smooth_model():
    """A random-weight model with the MD-ready options (docs/model.md): envelope + channel mixing."""
    from test_md_architecture import SMALL, SMOOTH, make_params, student

    from mlff_jax.config import PaiNNConfig

    config = PaiNNConfig(**SMALL, **SMOOTH)
    return student(config, make_params(config, seed=30))


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "fast"
    if what == "smooth":  # the fast checks on a model with the architecture options (no checkpoint needed)
        print("RESULT " + json.dumps(fast_checks(smooth_model())))
        return
    # random structures draw elements from the whole embedding table: these checks compare one device
    # with several, not chemistry, so untrained elements are allowed here
    model = mlff_jax.load(sys.argv[2], dtype="float64", allow_untrained_elements=True)
    if what == "float32":
        result = float32_translation_checks(mlff_jax.load(sys.argv[2], dtype="float32", allow_untrained_elements=True))
    else:
        result = fast_checks(model) if what == "fast" else md_checks(model)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
