"""Batched molecules and large periodic water: throughput of mlff-jax, exact and compressed filters.

    python3 benchmarks/bench_throughput.py --checkpoint-small PATH77K --checkpoint-large PATH427K \
        --out benchmarks/results/throughput_<device>.json [--quick]

Workloads (float32, precision "highest", energy + forces from one host call each):
  batched     1,024 molecules of 10-30 atoms in one call (``batch=``): µs per molecule;
  water box   periodic water of ~1k, 10k and 100k atoms (neighbour list rebuilt inside every call):
              ms per evaluation and atom-evaluations per second, with the 427K model exact and
              compressed (``model.compress()``), analytic forces. One MD step costs one such
              evaluation plus O(N) integration, so atom-evaluations/s bounds atom-steps/s.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, peak_memory_bytes, time_fn, write_json  # noqa: E402
from systems import water_box  # noqa: E402


def molecules(count: int, seed: int = 0):
    """``count`` perturbed copies of ASE's g2 molecules with 10-30 atoms (H C N O F S Cl only)."""
    from ase.collections import g2

    allowed = {1, 6, 7, 8, 9, 16, 17}
    pool = [a for a in g2 if 10 <= len(a) <= 30 and set(a.numbers) <= allowed]
    rng = np.random.default_rng(seed)
    pos, z, batch = [], [], []
    for i in range(count):
        atoms = pool[i % len(pool)]
        pos.append(atoms.positions + rng.normal(0, 0.05, atoms.positions.shape))
        z.append(atoms.numbers)
        batch.append(np.full(len(atoms), i))
    return np.concatenate(pos), np.concatenate(z), np.concatenate(batch), len(pool)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint-small", required=True)
    p.add_argument("--checkpoint-large", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="CPU smoke run: small sizes, few repeats")
    p.add_argument("--accumulations", default="platform",
                   help="comma-separated molecule layouts to compare (gather,scatter); 'platform': the library's default")
    p.add_argument("--layouts", default="platform",
                   help="comma-separated neighbour-list layouts to compare (edges,folded); 'platform': the library's default")
    p.add_argument("--sizes", default=None, help="water box sizes in molecules (default 333,3333,33333)")
    p.add_argument("--skip-batched", action="store_true")
    p.add_argument("--batched-implementations", default="auto",
                   help="batched molecules: comma list of implementations to compare (auto,xla,pallas,triton), each exact and compressed")
    p.add_argument("--skip-water", action="store_true")
    args = p.parse_args(argv)
    import mlff_jax
    from mlff_jax import analytic_graph, periodic

    repeats = 3 if args.quick else 20
    results = {"environment": environment(), "batched": [], "water": []}

    count = 32 if args.quick else 1024
    pos, z, batch, distinct = molecules(count)
    # A fresh model per layout: the override is read when a function is traced.
    for accumulation in [] if args.skip_batched else args.accumulations.split(","):
        analytic_graph.ACCUMULATION_OVERRIDE = None if accumulation == "platform" else accumulation
        small = mlff_jax.load(args.checkpoint_small)
        for method in ("analytic", "autodiff") if accumulation in ("platform", analytic_graph.default_accumulation()) else ("analytic",):
            t = time_fn(lambda: small.energy_and_forces(pos, z, batch=batch, method=method), sync=lambda r: r, repeats=repeats)
            row = {"molecules": count, "distinct": distinct, "atoms": int(len(z)), "method": method, "accumulation": analytic_graph.default_accumulation(),
                   **t, "us_per_molecule": t["median_us"] / count}
            results["batched"].append(row)
            print(row, flush=True)
    analytic_graph.ACCUMULATION_OVERRIDE = None
    # The kernels on the batch (its neighbour list's rows), exact and with compressed filters.
    extra = [i for i in args.batched_implementations.split(",") if i != "auto"]
    if extra and not args.skip_batched:
        small = mlff_jax.load(args.checkpoint_small)
        for implementation in extra:
            for name, model in (("exact", small), ("compressed", small.compress())):
                model = model.with_implementation(implementation)
                base = {"molecules": count, "atoms": int(len(z)), "method": "analytic", "implementation": implementation, "filters": name}
                try:
                    t = time_fn(lambda: model.energy_and_forces(pos, z, batch=batch), sync=lambda r: r, repeats=repeats)
                    row = {**base, **t, "us_per_molecule": t["median_us"] / count}
                except Exception as exc:  # e.g. jax-triton missing: record and go on
                    row = {**base, "error": f"{type(exc).__name__}: {exc}"[:300]}
                results["batched"].append(row)
                print(row, flush=True)
                write_json(args.out, results)

    sizes = [64, 333] if args.quick else [333, 3333, 33333]
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",")]
    for layout in [] if args.skip_water else args.layouts.split(","):
        periodic.LAYOUT_OVERRIDE = None if layout == "platform" else layout
        large = mlff_jax.load(args.checkpoint_large)
        variants = {"exact": large, "compressed": large.compress()}
        for molecules_count in sizes:
            wpos, wz, cell = water_box(molecules_count)
            for name, model in variants.items():
                base = {"atoms": int(len(wz)), "model": "427K-" + name, "layout": periodic.periodic_layout()}
                try:
                    t = time_fn(lambda: model.energy_and_forces(wpos, wz, cell=cell), sync=lambda r: r, repeats=repeats if len(wz) < 50000 else 5)
                    row = {**base, **t, "atom_evaluations_per_s": len(wz) / (t["median_us"] * 1e-6), "peak_bytes": peak_memory_bytes()}
                except Exception as exc:  # record (e.g. out of memory) and go on
                    row = {**base, "error": f"{type(exc).__name__}: {exc}"[:300]}
                results["water"].append(row)
                print(row, flush=True)
                write_json(args.out, results)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
