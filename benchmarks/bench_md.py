"""Compiled MD (mlff_jax.md): microseconds per step, many steps per compiled call.

    python3 benchmarks/bench_md.py --checkpoint PATH --out benchmarks/results/md_<device>.json

Systems: benzene (12 atoms, bundled), a 60-atom water cluster, a 192-atom water cluster (all pairs
within the cutoff; non-periodic). For each: NVE (velocity Verlet) in float32, ``--steps`` steps per
compiled call with one frame recorded per call, and the same with a frame every 10 steps (the cost
of recording). Medians and spreads over ``--repeats`` calls after a warm-up call (which compiles).
With ``--boxes 1000,10000,100000``: periodic water boxes with the neighbour list updated inside
the loop (atom-steps per second): each box is first equilibrated with Langevin
(``--equilibrate-steps``, ``--equilibrate-friction``) with the guards on, then timed in NVE for each
of ``--box-modes`` (exact, compressed filters) and ``--box-implementations``. Targets (one H100):
benzene <= 15 µs/step, 192-atom water cluster <= 40 µs/step, 100k-atom periodic water (float32)
>= 1M atom-steps/s, for a valid simulation.

Molecules are relaxed (FIRE to 0.05 eV/Å) before velocities are drawn at 300 K. Every MD row
records the physics of its timed steps (``benchmarks/validity.py``): temperature at
the start, mean, min and max, NVE energy change and drift per atom, closest pair, neighbour-list
overflow events (an overflowed chunk is reallocated and redone, as ``md.run`` does), the first
tripped guard, and ``valid`` with its reasons. Invalid rows are printed as INVALID and must not be
quoted. A box whose equilibration trips a guard is recorded (invalid) and not timed.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, time_fn, write_json  # noqa: E402
from systems import water_box, water_cluster  # noqa: E402
from validity import TimedRun  # noqa: E402


def systems():
    from ase.data import atomic_masses

    from mlff_jax.data import example

    benzene = example("benzene")
    out = {"benzene_12": (benzene.positions, benzene.numbers)}
    for molecules in (20, 64):
        pos, z = water_cluster(molecules)
        out[f"water_cluster_{3 * molecules}"] = (pos, z)
    return {name: (pos, z, atomic_masses[z]) for name, (pos, z) in out.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="model checkpoint (any layout mlff_jax.load reads)")
    p.add_argument("--out", required=True, help="JSON output path")
    p.add_argument("--steps", type=int, default=1000, help="steps per compiled call")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per system")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--systems", default="all", help="comma-separated subset of: benzene_12, water_cluster_60, water_cluster_192")
    p.add_argument("--boxes", default="", help="comma-separated atom counts of periodic water boxes run with mlff_jax.neighbors (e.g. 1000,10000,100000); off by default")
    p.add_argument("--box-steps", type=int, default=100, help="steps per compiled call for the water boxes")
    p.add_argument("--box-modes", default="", help="comma list of exact,compressed for the boxes (default: compressed with --compress, else exact)")
    p.add_argument("--box-implementations", default="auto", help="comma list of implementations timed on each box (auto,xla,pallas,triton)")
    p.add_argument("--equilibrate-steps", type=int, default=200, help="Langevin steps (0.5 fs, 300 K) before each box is timed in NVE")
    p.add_argument("--equilibrate-friction", type=float, default=0.05, help="1/fs, Langevin friction of the equilibration")
    p.add_argument("--compress", action="store_true", help="tabulated radial filters (model.compress(), default spacing)")
    p.add_argument("--methods", default="auto", help="comma-separated force methods (e.g. autodiff,analytic) if the model has them; 'auto': the model's default")
    p.add_argument("--unroll", default="1", help="comma-separated loop unroll factors to compare on the molecules (md.trajectory_chunk(unroll=))")
    p.add_argument("--implementations", default="auto", help="comma list of message-passing implementations for the molecules (auto,xla,pallas,triton)")
    args = p.parse_args(argv)

    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import mlff_jax
    from mlff_jax import md

    model = mlff_jax.load(args.checkpoint, dtype=args.dtype)
    exact_model = model
    if args.compress:
        model = model.compress()
    has_method = "method" in inspect.signature(model.energy_and_forces).parameters
    methods = [None] if args.methods == "auto" or not has_method else args.methods.split(",")
    results = {"environment": environment(), "checkpoint": os.path.basename(args.checkpoint), "dtype": args.dtype, "steps_per_call": args.steps, "rows": []}
    dtype = np.float64 if args.dtype == "float64" else np.float32
    unrolls = [int(u) for u in args.unroll.split(",")]
    chosen = systems()
    if args.systems != "all":
        chosen = {name: chosen[name] for name in args.systems.split(",")}
    # molecules are relaxed (FIRE, 0.05 eV/Å) before velocities are drawn at 300 K: a strained start heats up
    from mlff_jax._cli_md import relax

    relaxed = {name: relax(exact_model, _atoms(pos, z), 0.05)[0].positions for name, (pos, z, _) in chosen.items()}
    for name, (pos, z, masses) in chosen.items():
        for method, unroll, implementation in [(m, u, i) for m in methods for u in unrolls for i in args.implementations.split(",")]:
            chosen_model = model.with_implementation(implementation) if implementation != "auto" else model
            base = md.model_potential(chosen_model, z)
            potential = base if method is None else (lambda r, _z=np.asarray(z), _m=method: model.energy_and_forces(r, _z, method=_m))
            init_fn, step_fn = md.nve(potential, 0.5)
            state = init_fn(relaxed[name].astype(dtype), masses.astype(dtype), key=jax.random.key(0), temperature=300.0)
            row = {"system": name, "atoms": int(len(z)), "method": method or "default", "unroll": unroll, "implementation": implementation,
                   "runs": chosen_model.message_implementation(len(z))}
            for label, interval in (("one_frame_per_call", args.steps), ("frame_every_10", 10)):
                chunk = md.trajectory_chunk(step_fn, interval, args.steps // interval, unroll=unroll)
                timed = TimedRun(md, chunk, state)
                timing = time_fn(timed.call, sync=jax.block_until_ready, repeats=args.repeats, warmup=1, on_warm=timed.reset_record)
                row[f"{label}_us_per_step"] = timing["median_us"] / args.steps
                row[f"{label}_spread_us_per_step"] = [timing["min_us"] / args.steps, timing["max_us"] / args.steps]
                row[f"{label}_steps_per_s"] = 1e6 * args.steps / timing["median_us"]
                if label == "frame_every_10":  # the physics of the timed steps, from the frames of this run
                    row.update(timed.record(0.5))
            row["atom_steps_per_s"] = row["one_frame_per_call_steps_per_s"] * len(z)
            _emit(results, row, args.out)
    modes = args.box_modes.split(",") if args.box_modes else ["compressed" if args.compress else "exact"]
    for atoms_count in [int(a) for a in args.boxes.split(",") if a]:
        for mode in modes:
            box_model = exact_model.compress() if mode == "compressed" else exact_model
            for row in _water_box_rows(box_model, mode, atoms_count, args, dtype):
                _emit(results, row, args.out)
    write_json(args.out, results)
    invalid = [r["system"] for r in results["rows"] if not r.get("valid", False)]
    print(f"{len(results['rows']) - len(invalid)} valid, {len(invalid)} INVALID rows" + (f" (do not quote: {', '.join(invalid)})" if invalid else ""))


def _atoms(positions, numbers):
    from ase import Atoms

    return Atoms(numbers=numbers, positions=positions)


def _emit(results, row, out):
    results["rows"].append(row)
    flag = "" if row.get("valid") else f"INVALID ({'; '.join(row.get('invalid_reasons', []))}) "
    print(flag + str(row), flush=True)
    write_json(out, results)  # after every row: a run cut short keeps what it measured


def _water_box_rows(model, mode, atoms_count, args, dtype):
    """Periodic water at liquid density, neighbour list (skin 0.5 Å) updated every step: Langevin
    equilibration (guards on), then NVE timed for each implementation from the equilibrated state.
    Yields one row per implementation as it is measured."""
    import jax
    from ase.data import atomic_masses

    from mlff_jax import md, neighbors

    pos, z, cell = water_box(max(1, atoms_count // 3))
    neighbor_fn = neighbors.neighbor_list_fn(model.config.cutoff, skin=0.5, cell=cell)
    nbrs = neighbor_fn.allocate(pos.astype(dtype))
    masses = atomic_masses[z].astype(dtype)
    base = {"system": f"water_box_{len(z)}_periodic", "atoms": int(len(z)), "mode": mode, "method": "default+neighbor_list", "timestep_fs": 0.5,
            "equilibration": f"{args.equilibrate_steps} Langevin steps at 300 K, friction {args.equilibrate_friction} /fs, then NVE timed"}
    init_fn, step_fn = md.langevin(md.model_potential(model, z), 0.5, temperature=300.0, friction=args.equilibrate_friction)
    state = init_fn(pos.astype(dtype), masses, key=jax.random.key(0), temperature=300.0, neighbor=nbrs)
    summaries = []
    try:
        if args.equilibrate_steps:
            per_call = min(args.equilibrate_steps, args.box_steps)
            chunk = md.trajectory_chunk(step_fn, per_call, 1, neighbor_update=neighbor_fn.update)
            state, _ = md.run(chunk, state, max(1, args.equilibrate_steps // per_call), neighbor=nbrs, neighbor_fn=neighbor_fn, on_guards=summaries.append)
    except md.SimulationError as error:
        yield dict(base, implementation="-", equilibration_guard=str(error), guard=str(error), valid=False,
                   invalid_reasons=[f"equilibration tripped a guard, not timed: {error}"])
        return
    base["equilibration_max_temperature_K"] = max((s["max_temperature"] for s in summaries), default=None)
    nbrs = neighbor_fn.allocate(state.positions)
    for implementation in args.box_implementations.split(","):
        row = dict(base, implementation=implementation)
        try:
            chosen = model.with_implementation(implementation) if implementation != "auto" else model
            row["runs"] = chosen.message_implementation(len(z))
            _, nve_step = md.nve(md.model_potential(chosen, z), 0.5)
            chunk = md.trajectory_chunk(nve_step, args.box_steps, 1, neighbor_update=neighbor_fn.update)
            timed = TimedRun(md, chunk, state, nbrs, neighbor_fn)
            timing = time_fn(timed.call, sync=jax.block_until_ready, repeats=max(3, args.repeats // 3), warmup=1, on_warm=timed.reset_record)
        except Exception as error:  # an implementation that fails here (unavailable, out of memory) is recorded, the others still run
            yield dict(row, error=f"{type(error).__name__}: {str(error)[:300]}", valid=False, invalid_reasons=["failed"])
            continue
        steps_per_s = 1e6 * args.box_steps / timing["median_us"]
        row.update({
            "one_frame_per_call_us_per_step": timing["median_us"] / args.box_steps,
            "one_frame_per_call_spread_us_per_step": [timing["min_us"] / args.box_steps, timing["max_us"] / args.box_steps],
            "one_frame_per_call_steps_per_s": steps_per_s,
            "atom_steps_per_s": steps_per_s * len(z),
            "timed_steps": timing["repeats"] * args.box_steps,
            "neighbor_capacity": int(timed.neighbor.idx.shape[1]),
        })
        row.update(timed.record(0.5))
        yield row


if __name__ == "__main__":
    main()
