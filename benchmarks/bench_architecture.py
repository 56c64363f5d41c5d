"""Cost of the MD-ready architecture options: microseconds per MD step, upstream vs smooth.

    python3 benchmarks/bench_architecture.py --out benchmarks/results/architecture_h100.json

Two models of the same shape (427K: H = 128, 3 blocks, 20 radial functions; random weights, the
same seed, filter outputs scaled by 0.1 so that random forces stay gentle):

* ``upstream``: ``filter_envelope=None, vector_mixing="cartesian"`` (the upstream architecture);
* ``smooth``: ``filter_envelope="polynomial", vector_mixing="channels"``.

Systems: benzene (12 atoms, all pairs, ``--steps`` steps per compiled call) and a periodic water box
(``--box-atoms``, neighbour list with a 0.5 Å skin updated inside the loop, ``--box-steps`` steps
per call). NVE (velocity Verlet, 0.5 fs), float32 by default. The two models run side by side:
after a warm-up call of each (which compiles), the timed calls alternate upstream, smooth,
upstream, ... so that both see the same machine state. Reported: medians and spreads per step, and
the ratio smooth / upstream (the target: <= 1.10). Physics of these short runs is recorded, not
checked (the total-energy change per atom over the timed calls, the neighbour list's overflow).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, write_json  # noqa: E402
from systems import water_box  # noqa: E402

ARCHITECTURES = {
    "upstream": dict(filter_envelope=None, vector_mixing="cartesian"),
    "smooth": dict(filter_envelope="polynomial", vector_mixing="channels"),
}


def random_model(options: dict, args, dtype: str):
    """A PaiNNStudent of the requested shape with seeded random weights (gentle filters)."""
    import jax
    import jax.numpy as jnp

    from mlff_jax import painn
    from mlff_jax.config import PaiNNConfig
    from mlff_jax.graph import all_pairs_edges
    from mlff_jax.model import PaiNNStudent

    config = PaiNNConfig(hidden_dim=args.hidden_dim, num_interactions=args.num_interactions, num_rbf=args.num_rbf, **options)
    mask, batch = jnp.ones(2, bool), jnp.zeros(2, jnp.int32)
    variables = painn.PaiNN(config).init(jax.random.PRNGKey(args.seed), jnp.zeros((2, 3)), jnp.ones(2, jnp.int32), all_pairs_edges(mask, batch), mask, batch, 1)
    flat = {k: (v * 0.1 if "filter_out" in k else v) for k, v in dict(variables["params"]).items()}
    model = PaiNNStudent(config, painn.unflatten(flat), dtype=dtype, implementation=args.implementation)
    return model.compress() if args.compress else model


def _molecule_runner(model, positions, numbers, masses, args, np_dtype):
    import jax

    from mlff_jax import md

    init_fn, step_fn = md.nve(md.model_potential(model, numbers), 0.5)
    state = init_fn(positions.astype(np_dtype), masses.astype(np_dtype), key=jax.random.key(0), temperature=300.0)
    chunk = md.trajectory_chunk(step_fn, args.steps, 1)
    holder = {"state": state, "overflow": False}

    def call():
        holder["state"] = chunk(holder["state"])[0]
        return holder["state"]

    return call, holder, args.steps


def _box_runner(model, positions, numbers, masses, cell, args, np_dtype):
    import jax

    from mlff_jax import md, neighbors

    neighbor_fn = neighbors.neighbor_list_fn(model.config.cutoff, skin=0.5, cell=cell)
    nbrs = neighbor_fn.allocate(positions.astype(np_dtype))
    init_fn, step_fn = md.nve(md.model_potential(model, numbers), 0.5)
    state = init_fn(positions.astype(np_dtype), masses.astype(np_dtype), key=jax.random.key(0), temperature=300.0, neighbor=nbrs)
    chunk = md.trajectory_chunk(step_fn, args.box_steps, 1, neighbor_update=neighbor_fn.update)
    holder = {"state": state, "nbrs": nbrs, "overflow": False, "capacity": int(nbrs.idx.shape[1])}

    def call():
        new_state, new_nbrs, _, overflow = chunk(holder["state"], holder["nbrs"])
        if bool(overflow):  # grow the list and redo the call (as md.run does); recorded
            holder["overflow"] = True
            holder["nbrs"] = neighbor_fn.allocate(holder["state"].positions)
            holder["capacity"] = int(holder["nbrs"].idx.shape[1])
            new_state, new_nbrs, _, _ = chunk(holder["state"], holder["nbrs"])
        holder["state"], holder["nbrs"] = new_state, new_nbrs
        return holder["state"]

    return call, holder, args.box_steps


def _total_energy(state) -> float:
    from mlff_jax import md

    return float(state.potential_energy) + float(md.kinetic_energy(state.velocities, state.masses))


def side_by_side(runners: dict, repeats: int) -> dict:
    """Warm-up call of each, then ``repeats`` rounds of one timed call of each, alternating."""
    import jax

    for call, _, _ in runners.values():
        jax.block_until_ready(call())
    start_energy = {name: _total_energy(holder["state"]) for name, (_, holder, _) in runners.items()}
    samples = {name: [] for name in runners}
    for _ in range(repeats):
        for name, (call, _, _) in runners.items():
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            samples[name].append((time.perf_counter() - t0) * 1e6)
    out = {}
    for name, (_, holder, steps) in runners.items():
        a = np.asarray(samples[name]) / steps
        atoms = holder["state"].positions.shape[0]
        out[name] = {
            "us_per_step_median": float(np.median(a)),
            "us_per_step_min": float(a.min()),
            "us_per_step_max": float(a.max()),
            "us_per_step_iqr": float(np.percentile(a, 75) - np.percentile(a, 25)),
            "timed_calls": len(a),
            "steps_per_call": steps,
            "physics_total_energy_change_per_atom_eV": abs(_total_energy(holder["state"]) - start_energy[name]) / atoms,
            "physics_neighbor_overflow": holder["overflow"],
        }
        if "capacity" in holder:
            out[name]["neighbor_capacity"] = holder["capacity"]
    out["ratio_smooth_over_upstream"] = out["smooth"]["us_per_step_median"] / out["upstream"]["us_per_step_median"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON output path")
    p.add_argument("--steps", type=int, default=1000, help="benzene: steps per compiled call")
    p.add_argument("--box-atoms", type=int, default=10000, help="atoms of the periodic water box (0: skip it)")
    p.add_argument("--box-steps", type=int, default=100, help="water box: steps per compiled call")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per model and system")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--implementation", default="auto", help="message passing: auto | xla | pallas | triton")
    p.add_argument("--compress", action="store_true", help="compressed (tabulated) filters for both models")
    p.add_argument("--hidden-dim", type=int, default=128)
    p.add_argument("--num-interactions", type=int, default=3)
    p.add_argument("--num-rbf", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    from ase.data import atomic_masses

    from mlff_jax.data import example

    np_dtype = np.float64 if args.dtype == "float64" else np.float32
    models = {name: random_model(options, args, args.dtype) for name, options in ARCHITECTURES.items()}
    results = {"environment": environment(), "architectures": {k: dict(v) for k, v in ARCHITECTURES.items()}, "dtype": args.dtype,
               "shape": {"hidden_dim": args.hidden_dim, "num_interactions": args.num_interactions, "num_rbf": args.num_rbf},
               "compressed": args.compress, "implementation_requested": args.implementation, "rows": []}  # fmt: skip
    benzene = example("benzene")
    systems = [("benzene_12", benzene.positions, benzene.numbers, None)]
    if args.box_atoms:
        pos, z, cell = water_box(max(1, args.box_atoms // 3))
        systems.append((f"water_box_{len(z)}_periodic", pos, z, cell))
    for name, positions, numbers, cell in systems:
        masses = atomic_masses[numbers]
        runners = {}
        for arch, model in models.items():
            if cell is None:
                runners[arch] = _molecule_runner(model, positions, numbers, masses, args, np_dtype)
            else:
                runners[arch] = _box_runner(model, positions, numbers, masses, cell, args, np_dtype)
        row = {"system": name, "atoms": int(len(numbers)), "runs": {arch: m.message_implementation(len(numbers)) for arch, m in models.items()}}
        row.update(side_by_side(runners, args.repeats))
        results["rows"].append(row)
        print(row, flush=True)
        write_json(args.out, results)  # after every system: a run cut short keeps what it measured


if __name__ == "__main__":
    main()
