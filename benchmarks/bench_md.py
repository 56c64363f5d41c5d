"""Compiled MD (mlff_jax.md): microseconds per step, many steps per compiled call.

    python3 benchmarks/bench_md.py --checkpoint PATH --out benchmarks/results/md_<device>.json

Systems: benzene (12 atoms, bundled), a 60-atom water cluster, a 192-atom water cluster (all pairs
within the cutoff; non-periodic). For each: NVE (velocity Verlet) in float32, ``--steps`` steps per
compiled call with one frame recorded per call, and the same with a frame every 10 steps (the cost
of recording). Medians and spreads over ``--repeats`` calls after a warm-up call (which compiles).
With ``--boxes 1000,10000,100000``: periodic water boxes with the neighbour list updated inside
the loop (atom-steps per second). Targets (issue 6, one H100): benzene <= 15 µs/step, 192-atom
water cluster <= 40 µs/step, 100k-atom periodic water (427K model, float32) >= 1M atom-steps/s.
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
    for name, (pos, z, masses) in chosen.items():
        for method, unroll, implementation in [(m, u, i) for m in methods for u in unrolls for i in args.implementations.split(",")]:
            chosen_model = model.with_implementation(implementation) if implementation != "auto" else model
            base = md.model_potential(chosen_model, z)
            potential = base if method is None else (lambda r, _z=np.asarray(z), _m=method: model.energy_and_forces(r, _z, method=_m))
            init_fn, step_fn = md.nve(potential, 0.5)
            state = init_fn(pos.astype(dtype), masses.astype(dtype), key=jax.random.key(0), temperature=300.0)
            row = {"system": name, "atoms": int(len(z)), "method": method or "default", "unroll": unroll, "implementation": implementation,
                   "runs": chosen_model.message_implementation(len(z))}
            for label, interval in (("one_frame_per_call", args.steps), ("frame_every_10", 10)):
                chunk = md.trajectory_chunk(step_fn, interval, args.steps // interval, unroll=unroll)
                holder = {"state": state}

                def call():
                    holder["state"] = chunk(holder["state"])[0]
                    return holder["state"]

                timing = time_fn(call, sync=jax.block_until_ready, repeats=args.repeats, warmup=1)
                row[f"{label}_us_per_step"] = timing["median_us"] / args.steps
                row[f"{label}_spread_us_per_step"] = [timing["min_us"] / args.steps, timing["max_us"] / args.steps]
                row[f"{label}_steps_per_s"] = 1e6 * args.steps / timing["median_us"]
            row["atom_steps_per_s"] = row["one_frame_per_call_steps_per_s"] * len(z)
            results["rows"].append(row)
            print(row, flush=True)
            write_json(args.out, results)  # after every row: a run cut short keeps what it measured
    for atoms_count in [int(a) for a in args.boxes.split(",") if a]:
        results["rows"].append(_water_box_row(model, atoms_count, args, dtype))
        print(results["rows"][-1], flush=True)
        write_json(args.out, results)
    write_json(args.out, results)


def _water_box_row(model, atoms_count, args, dtype):
    """NVE of a periodic water box at liquid density, neighbour list (skin 0.5 Å) updated every step."""
    import jax
    from ase.data import atomic_masses

    from mlff_jax import md, neighbors

    pos, z, cell = water_box(max(1, atoms_count // 3))
    neighbor_fn = neighbors.neighbor_list_fn(model.config.cutoff, skin=0.5, cell=cell)
    nbrs = neighbor_fn.allocate(pos.astype(dtype))
    init_fn, step_fn = md.nve(md.model_potential(model, z), 0.5)
    state = init_fn(pos.astype(dtype), atomic_masses[z].astype(dtype), key=jax.random.key(0), temperature=300.0, neighbor=nbrs)
    chunk = md.trajectory_chunk(step_fn, args.box_steps, 1, neighbor_update=neighbor_fn.update)
    holder = {"state": state, "nbrs": nbrs, "overflow": False}

    def call():
        holder["state"], holder["nbrs"], _, overflow = chunk(holder["state"], holder["nbrs"])
        holder["overflow"] = holder["overflow"] or bool(overflow)
        return holder["state"]

    timing = time_fn(call, sync=jax.block_until_ready, repeats=max(3, args.repeats // 3), warmup=1)
    steps_per_s = 1e6 * args.box_steps / timing["median_us"]
    return {
        "system": f"water_box_{len(z)}_periodic",
        "atoms": int(len(z)),
        "method": "default+neighbor_list",
        "one_frame_per_call_us_per_step": timing["median_us"] / args.box_steps,
        "one_frame_per_call_spread_us_per_step": [timing["min_us"] / args.box_steps, timing["max_us"] / args.box_steps],
        "one_frame_per_call_steps_per_s": steps_per_s,
        "atom_steps_per_s": steps_per_s * len(z),
        "neighbor_capacity": int(nbrs.idx.shape[1]),
        "neighbor_overflow_during_timing": holder["overflow"],
    }


if __name__ == "__main__":
    main()
