"""Several GPUs (mlff_jax.parallel): strong and weak scaling of batched molecules and of a large
periodic water box, on 1 .. n of the visible devices.

    python3 benchmarks/bench_multi_gpu.py --out benchmarks/results/multi_gpu_<machine>.json
    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \\
        python3 benchmarks/bench_multi_gpu.py --quick --out /tmp/multi_cpu.json             # CPU smoke run

Measurements (float32, ``highest`` matmuls, analytic forces; every time is a median over
``--repeats`` calls after ``--warmup`` calls, each blocked with ``block_until_ready``):

- ``batch``: energies and forces of a batch of water clusters of random size (``--cluster-waters``),
  spread over n devices balanced by atom count (``prepare_batch``: the compiled device work on
  device-resident inputs, ``device_s``), and the whole host call ``model.energy_and_forces(...,
  devices=n)`` including host planning and transfers (``end_to_end_s``). Strong scaling: a fixed
  batch (``--batch-molecules``); weak: ``--molecules-per-device`` per device.
- ``box``: energy and forces of one periodic water box from scratch (neighbour search included).
  n = 1: the single-device periodic path; n >= 2: slab decomposition (migration, halo, local
  neighbour list, forces, reduce-scatter). Strong: a cubic box of ``--box-atoms``; weak:
  ``--box-atoms-per-device`` per device, the box elongated along the slab axis.
- ``md``: microseconds per NVE step of a water box of ``--md-atoms`` (``--md-steps`` steps per
  compiled call, skin 0.5 Å, 300 K): ``mlff_jax.md`` on one device, ``parallel.domain_nve`` on n >= 2.

Strong-scaling box rows for n >= 2 also record the largest force difference from the one-device
result (float32) and ``local_over_owned``, the atoms each device evaluates (owned + halo) per owned
atom: the halo recomputation bounds the efficiency by about 1 / local_over_owned.

Efficiency: strong t(1) / (n t(n)); weak t(1) / t(n). The JSON (rewritten after every measurement,
so a run cut short keeps what it measured) records devices, versions, git commit (or
$MLFF_JAX_COMMIT) and the command; a failed measurement records its error and the run goes on.
``--budget-s`` skips what would start after that many seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import environment, jax_sync, time_fn, write_json  # noqa: E402
from systems import water_box, water_cluster  # noqa: E402


def default_checkpoint(name: str = "tiny-77k") -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for base in (os.path.join(root, "tests", "data", "upstream"),):  # the vendored upstream checkpoints
        path = os.path.join(base, "checkpoints", f"{name}.model.pt")
        if os.path.exists(path):
            return path
    return "default"  # the bundled 77K-parameter model


def device_counts(spec: str, available: int) -> list[int]:
    if spec == "auto":  # powers of two up to the visible devices, and all of them
        counts = {n for n in (1, 2, 4, 8, 16, 32) if n <= available} | {available}
    else:
        counts = {int(x) for x in spec.split(",")}
    bad = [n for n in counts if not 1 <= n <= available]
    if bad:
        raise SystemExit(f"device counts {bad} outside 1..{available}")
    return sorted(counts)


# ------------------------------------------------------------------------------------ systems
def cluster_batch(num_molecules: int, waters: tuple[int, int], seed: int = 0):
    """A batch of water clusters of random size: (positions [N, 3], Z [N], batch [N], B)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(waters[0], waters[1] + 1, num_molecules)
    templates = {m: water_cluster(int(m), seed=int(m)) for m in np.unique(sizes)}
    positions = np.concatenate([templates[m][0] + rng.normal(scale=0.02, size=templates[m][0].shape) for m in sizes])
    numbers = np.concatenate([templates[m][1] for m in sizes])
    batch = np.repeat(np.arange(num_molecules), 3 * sizes)
    return positions, numbers, batch, num_molecules


def elongated_box(atoms_per_block: int, blocks: int, seed: int = 0):
    """``blocks`` cubic water boxes of ~atoms_per_block atoms side by side along x: (positions, Z, cell)."""
    positions, numbers, cell = [], [], None
    for b in range(blocks):
        pos, z, cell = water_box(max(1, atoms_per_block // 3), seed=seed + b)
        positions.append(pos + b * cell[0])
        numbers.append(z)
    cell = cell.copy()
    cell[0] *= blocks
    return np.concatenate(positions), np.concatenate(numbers), cell


# ------------------------------------------------------------------------------------ measurements
def measure_batch(model, devices, system, repeats, warmup):
    from mlff_jax.parallel import prepare_batch

    positions, numbers, batch, num = system
    pos, z, b, num = model._validate(positions, numbers, batch)
    t0 = time.perf_counter()
    prepared = prepare_batch(model, pos, z, b, num, devices=devices)
    jax_sync(prepared.run())
    compile_s = time.perf_counter() - t0
    device = time_fn(prepared.run, jax_sync, repeats=repeats, warmup=warmup)
    end_to_end = time_fn(lambda: model.energy_and_forces(positions, numbers, batch=batch, devices=devices), lambda x: x,
                         repeats=max(3, repeats // 2), warmup=1)
    loads = [int(np.sum(prepared.plan.atom_index[d] >= 0)) for d in range(len(devices))]
    return {"device_s": device["median_us"] * 1e-6, "device_timing": device, "end_to_end_s": end_to_end["median_us"] * 1e-6,
            "end_to_end_timing": end_to_end, "compile_s": compile_s, "atoms": int(len(positions)), "structures": int(num),
            "atoms_per_device": loads, "padded_atoms_per_device": int(prepared.plan.n_pad)}


def measure_box(model, devices, system, repeats, warmup, reference=None):
    """reference: a dict; n = 1 stores its forces there, n >= 2 compares with them (float32 agreement)."""
    import jax
    import jax.numpy as jnp

    from mlff_jax import periodic
    from mlff_jax.evaluation import DTYPES, PRECISIONS
    from mlff_jax.neighbors import neighbor_list as nl
    from mlff_jax.parallel import domain_nve

    positions, numbers, cell = system
    n = len(positions)
    dtype = DTYPES[model.dtype]
    t0 = time.perf_counter()
    info = {"atoms": int(n), "cell_diagonal": np.diag(cell).round(3).tolist(), "layout": periodic.periodic_layout(), "implementation": "xla"}
    if len(devices) == 1:  # the single-device periodic path (what model.energy_and_forces(cell=) runs)
        pbc = (True, True, True)
        fns = nl.neighbor_list_fn(model.config.cutoff, skin=periodic.LIST_MARGIN, pbc=pbc)
        spec = fns.measure(positions, cell=cell[None], num_structures=1)
        with jax.default_device(devices[0]):
            args = (jnp.asarray(positions, dtype), jnp.asarray(numbers, jnp.int32), jnp.ones(n, bool), jnp.zeros(n, jnp.int32),
                    jnp.asarray(cell[None], dtype))

        def call():
            # The decomposition runs the XLA analytic sweep in the platform's layout: the baseline too.
            return periodic._evaluate(model.params, *args, config=model.config, precision=PRECISIONS[model.precision], spec=spec,
                                      compute_stress=False, method="analytic", layout=periodic.periodic_layout(), implementation="xla")

        out = jax_sync(call())
        if bool(out[3]):
            raise RuntimeError("neighbour list overflow in the single-device baseline")
        info["energy"] = float(out[0][0])
        if reference is not None:
            reference["forces"], reference["energy"] = np.asarray(out[1]), info["energy"]
    else:
        sim = domain_nve(model, cell, timestep=0.0, skin=0.0, devices=devices)
        call, state = sim.prepare(positions, numbers)
        jax_sync(state)
        spec = state.spec
        halo = np.asarray(jax.device_get(state.layout.halo_mask)).sum(axis=1)
        owned = np.asarray(jax.device_get(state.ids) >= 0).sum(axis=1)
        info.update(energy=float(np.asarray(state.potential_energy)[0]), owned_atoms=owned.tolist(), halo_atoms=halo.tolist(),
                    owned_capacity=spec.owned_capacity, halo_capacity=spec.halo_capacity, slab_axis=spec.axis, halo_angstrom=spec.halo,
                    local_over_owned=float((owned + halo).sum() / owned.sum()))
        if reference is not None and "forces" in reference:
            forces = sim.gather(state)["forces"]
            info["max_abs_force_diff_vs_1_device"] = float(np.max(np.abs(forces - reference["forces"])))
            info["energy_diff_vs_1_device"] = info["energy"] - reference["energy"]
    info["compile_s"] = time.perf_counter() - t0
    timing = time_fn(call, jax_sync, repeats=repeats, warmup=warmup)
    info.update(device_s=timing["median_us"] * 1e-6, device_timing=timing)
    return info


def measure_md(model, devices, system, steps, repeats):
    import jax

    from mlff_jax import md, parallel
    from mlff_jax.neighbors import neighbor_list_fn

    positions, numbers, cell = system
    masses = parallel.domain_md.units_masses(numbers)
    velocities = np.asarray(md.maxwell_boltzmann(jax.random.key(0), masses[:, None], 300.0))
    t0 = time.perf_counter()
    if len(devices) == 1:
        with jax.default_device(devices[0]):
            fns = neighbor_list_fn(model.config.cutoff, skin=0.5, cell=cell)
            nbrs = fns.allocate(positions.astype(np.float32))
            init_fn, step_fn = md.nve(md.model_potential(model, numbers), 0.5)
            state = init_fn(positions.astype(np.float32), masses, velocities, neighbor=nbrs)
            chunk = md.trajectory_chunk(step_fn, steps, 1, neighbor_update=fns.update)
            call = lambda: chunk(state, nbrs)  # noqa: E731
            overflow = bool(jax_sync(call())[3])
    else:
        sim = parallel.domain_nve(model, cell, timestep=0.5, skin=0.5, devices=devices)
        state = sim.init(positions, numbers, masses, velocities)
        chunk = sim.chunk(steps, 1)
        call = lambda: chunk(state)  # noqa: E731
        overflow = jax_sync(call())[0].overflow
    compile_s = time.perf_counter() - t0
    timing = time_fn(call, jax_sync, repeats=repeats, warmup=1)
    return {"us_per_step": timing["median_us"] / steps, "steps_per_call": steps, "timing": timing, "compile_s": compile_s,
            "overflow_in_timed_chunk": bool(overflow), "atoms": int(len(positions))}


def efficiencies(rows, kind: str):
    """Adds parallel efficiency to rows (a dict n -> row with a time key)."""
    key = {"batch": "device_s", "box": "device_s", "md": "us_per_step"}
    for mode in ("strong", "weak"):
        table = rows.get(mode, {})
        for tkey in ([key[kind]] + (["end_to_end_s"] if kind == "batch" else [])):
            base = table.get("1", {}).get(tkey)
            for n, row in table.items():
                if base and tkey in row:
                    factor = int(n) if mode == "strong" else 1
                    row[f"efficiency_{tkey}"] = base / (factor * row[tkey])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--checkpoint", default=None, help="model file (default: upstream tiny-77k, else the bundled model)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--device-counts", default="auto", help="'auto' (1, 2, 4, .. and all visible) or e.g. '1,2,3'")
    parser.add_argument("--batch-molecules", type=int, default=8192, help="strong scaling: clusters in the batch")
    parser.add_argument("--molecules-per-device", type=int, default=4096, help="weak scaling: clusters per device")
    parser.add_argument("--cluster-waters", default="3,12", help="range of water molecules per cluster (9..36 atoms)")
    parser.add_argument("--box-atoms", type=int, default=1_000_000, help="strong scaling: atoms of the water box")
    parser.add_argument("--box-atoms-per-device", type=int, default=500_000, help="weak scaling: atoms per device")
    parser.add_argument("--md-steps", type=int, default=10, help="NVE steps per timed call on the strong box (0: no MD)")
    parser.add_argument("--md-atoms", type=int, default=300_000, help="atoms of the MD water box")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=400.0, help="start no measurement after this many seconds")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: batch,box,md")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.batch_molecules, args.molecules_per_device, args.box_atoms, args.box_atoms_per_device = 64, 32, 12000, 3000
        args.repeats, args.warmup, args.md_steps, args.md_atoms = 3, 1, 2, 3000

    import jax

    import mlff_jax

    start = time.perf_counter()
    checkpoint = args.checkpoint or default_checkpoint()
    model = mlff_jax.load(checkpoint, dtype=args.dtype)
    visible = jax.devices()
    counts = device_counts(args.device_counts, len(visible))
    waters = tuple(int(x) for x in args.cluster_waters.split(","))
    skip = set(filter(None, args.skip.split(",")))
    result = {"environment": environment(), "checkpoint": os.path.basename(str(checkpoint)), "config": model.config.to_dict(),
              "dtype": args.dtype, "precision": model.precision, "device_counts": counts, "args": vars(args),
              "device_names": [str(d) for d in visible], "batch": {}, "box": {}, "md": {}, "skipped": [], "errors": []}

    def record(part, mode, n, fn):
        label = f"{part}/{mode}/{n}"
        if time.perf_counter() - start > args.budget_s:
            result["skipped"].append(label)
            print(f"skip {label} (budget)", flush=True)
            return
        t0 = time.perf_counter()
        try:
            row = fn()
            row["wall_s"] = time.perf_counter() - t0
            result[part].setdefault(mode, {})[str(n)] = row
            shown = {k: row[k] for k in ("device_s", "end_to_end_s", "us_per_step", "compile_s") if k in row}
            print(f"{label}: {shown}", flush=True)
        except Exception as err:  # record and go on: a failed size must not lose the others
            result["errors"].append({"label": label, "error": f"{type(err).__name__}: {err}"[:2000], "traceback": traceback.format_exc()[-4000:]})
            print(f"{label} FAILED: {type(err).__name__}: {str(err)[:300]}", flush=True)
        for kind in ("batch", "box", "md"):
            efficiencies(result[kind], kind)
        result["total_wall_s"] = time.perf_counter() - start
        write_json(args.out, result)

    # Strong scaling of both workloads first, then weak: a run cut short by the budget keeps the former.
    if "batch" not in skip:
        strong = cluster_batch(args.batch_molecules, waters, seed=0)
        for n in counts:
            record("batch", "strong", n, lambda: measure_batch(model, visible[:n], strong, args.repeats, args.warmup))
        del strong
    if "box" not in skip:
        strong_box = water_box(args.box_atoms // 3, seed=0)
        reference = {}
        for n in counts:
            record("box", "strong", n, lambda: measure_box(model, visible[:n], strong_box, args.repeats, args.warmup, reference))
        del strong_box, reference
    if "batch" not in skip:
        for n in counts:
            weak = cluster_batch(args.molecules_per_device * n, waters, seed=1)
            record("batch", "weak", n, lambda: measure_batch(model, visible[:n], weak, args.repeats, args.warmup))
    if "box" not in skip:
        for n in counts:
            weak_box = elongated_box(args.box_atoms_per_device, n, seed=10)
            record("box", "weak", n, lambda: measure_box(model, visible[:n], weak_box, args.repeats, args.warmup))
    if "md" not in skip and args.md_steps > 0:
        md_box = water_box(args.md_atoms // 3, seed=0)
        for n in counts:
            record("md", "strong", n, lambda: measure_md(model, visible[:n], md_box, args.md_steps, max(3, args.repeats // 2)))
    result["total_wall_s"] = time.perf_counter() - start
    write_json(args.out, result)


if __name__ == "__main__":
    main()
