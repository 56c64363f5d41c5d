"""Analytic forces vs jax.grad: energy + forces, single jitted call and inside a compiled loop.

    python3 benchmarks/bench_forces.py --out benchmarks/results/forces_h100.json      # GPU, student-427k
    python3 benchmarks/bench_forces.py --quick --out /tmp/forces_cpu.json             # CPU smoke check

Systems: water clusters of 3-201 atoms (all pairs, as ``PaiNNStudent`` evaluates molecules) and
periodic water boxes of ~1,000 and ~10,000 atoms (unordered pairs within rc + skin from a numpy cell
list, with periodic shifts). Variants, all on the same candidate pairs:

- ``autodiff``: ``jax.grad`` of :func:`mlff_jax.painn.structure_energies` on the directed edge list.
- ``analytic_gather``: :func:`mlff_jax.analytic.energy_forces_virial` on a ``PairGraph`` with its
  neighbour table (filter once per pair, gather-based sums: deterministic), filters kept.
- ``analytic_scatter``: the same pair folding, sums by scatter-add over the pairs' atoms.
- ``analytic_lowmem``: ``analytic_scatter`` with filters recomputed in the backward sweep
  (``store_filters=False``).
- ``analytic_chunked``: ``analytic_lowmem`` in chunks of 65,536 pairs (``chunk_size``, ``--chunk-pairs``): bounded
  per-edge temporaries, for systems whose edges do not fit at once.
- ``analytic_edges``: the analytic sweep on the directed edge list (no pair folding, scatter-adds).

Per system and variant: median and spread of the wall time of one jitted call and of one step of a
compiled ``lax.fori_loop`` (positions nudged along the forces each step, so no step can be hoisted),
compile time and XLA's compiled memory analysis (temporary buffers); with ``--isolate`` the boxes'
variants also run in fresh processes to record the device's ``peak_bytes_in_use`` (the counter
cannot be reset). The JSON, written after every system, records device, versions, git commit and
command (benchmarks/common.py). ``--systems clusters|boxes`` splits the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

if "--isolate" in sys.argv or "--worker" in sys.argv:
    # Parent and worker processes share the GPU: no process may grab 75% of it up front, or the
    # workers run out of memory before measuring anything (seen on the H100).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import environment, jax_sync, peak_memory_bytes, time_fn, write_json  # noqa: E402
from systems import water_box, water_cluster  # noqa: E402

VARIANTS = ("autodiff", "analytic_gather", "analytic_scatter", "analytic_lowmem", "analytic_chunked", "analytic_edges")
PAIR_GRAPHS = {"analytic_gather": "gather", "analytic_scatter": "scatter", "analytic_lowmem": "scatter", "analytic_chunked": "scatter"}
CHUNK_PAIRS = 1 << 16  # analytic_chunked: pairs per chunk (--chunk-pairs)
DEFAULT_VARIANTS = ("autodiff", "analytic_gather", "analytic_scatter", "analytic_chunked")  # the others: --variants
CLUSTERS = (1, 4, 10, 20, 33, 67)  # water molecules: 3 .. 201 atoms
BOXES = (334, 3334)  # ~1,000 and ~10,000 atoms
QUICK_CLUSTERS, QUICK_BOXES = (1, 4, 10), (100,)
SKIN = 0.5  # Å, Verlet skin of the boxes' pair lists
LOOP_STEP = 1e-5  # Å per eV/Å: positions move ~1e-4 Å per step, far inside the skin


def default_checkpoint(quick: bool) -> str:
    name = "ultra-tiny-21k" if quick else "student-427k"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for base in (os.path.join(root, ".device", "upstream"), os.path.join(os.path.dirname(root), "shared", "upstream")):
        path = os.path.join(base, "checkpoints", f"{name}.model.pt")
        if os.path.exists(path):
            return path
    raise SystemExit(f"no checkpoint found for {name}; pass --checkpoint")


# ------------------------------------------------------------------------------------ systems
def periodic_pairs(positions: np.ndarray, length: float, cutoff: float):
    """Unordered pairs (i < j) within ``cutoff`` under the minimum image in a cubic box of side
    ``length`` (>= 2 cutoff), by a cell list. Returns first, second, shifts (vec = R_i - R_j + shift)."""
    if length < 2 * cutoff:
        raise ValueError(f"box side {length:.2f} Å is below twice the pair cutoff {cutoff:.2f} Å")
    n = len(positions)
    cells_per_side = int(length // cutoff)
    if cells_per_side < 3:  # small box: every pair is a candidate
        candidates = [np.triu_indices(n, 1)]
    else:
        side = length / cells_per_side
        cell3 = np.floor((positions % length) / side).astype(int) % cells_per_side
        cell = np.ravel_multi_index(cell3.T, (cells_per_side,) * 3)
        order = np.argsort(cell, kind="stable")
        counts = np.bincount(cell, minlength=cells_per_side**3)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        table = np.full((cells_per_side**3, counts.max()), -1)
        slot = np.arange(n) - starts[cell[order]]
        table[cell[order], slot] = order
        all_cells = np.stack(np.unravel_index(np.arange(cells_per_side**3), (cells_per_side,) * 3), -1)
        candidates = []
        for offset in np.ndindex(3, 3, 3):
            other = np.ravel_multi_index(((all_cells + np.array(offset) - 1) % cells_per_side).T, (cells_per_side,) * 3)
            a = np.repeat(table[:, :, None], table.shape[1], axis=2).reshape(-1)
            b = np.repeat(table[other][:, None, :], table.shape[1], axis=1).reshape(-1)
            keep = (a >= 0) & (b >= 0) & (a < b)
            candidates.append((a[keep], b[keep]))
    first = np.concatenate([c[0] for c in candidates])
    second = np.concatenate([c[1] for c in candidates])
    vec = positions[first] - positions[second]
    shifts = -length * np.round(vec / length)
    within = np.linalg.norm(vec + shifts, axis=1) <= cutoff
    first, second, shifts = first[within], second[within], shifts[within]
    unique = np.unique(np.stack([first, second], 1), axis=0, return_index=True)[1]  # 3 cells/side: no double count
    return first[unique], second[unique], shifts[unique]


def make_system(name: str, cutoff: float):
    """(positions, numbers, first, second, shifts) of a named system ("cluster_M" / "box_M", M molecules)."""
    kind, molecules = name.split("_")
    if kind == "cluster":
        positions, numbers = water_cluster(int(molecules))
        first, second = np.triu_indices(len(numbers), 1)
        return positions, numbers, first, second, np.zeros((len(first), 3))
    positions, numbers, cell = water_box(int(molecules))
    first, second, shifts = periodic_pairs(positions, float(cell[0, 0]), cutoff + SKIN)
    return positions, numbers, first, second, shifts


# ----------------------------------------------------------------------------------- variants
def force_function(variant: str, model, chunk_pairs: int = CHUNK_PAIRS):
    """(params, positions, numbers, graph) -> (energies [1], forces [N, 3]), to be jitted."""
    import jax
    import jax.numpy as jnp

    from mlff_jax import analytic, painn
    from mlff_jax.evaluation import PRECISIONS

    config, precision = model.config, PRECISIONS[model.precision]

    def inputs(positions):
        n = positions.shape[0]
        return jnp.ones(n, bool), jnp.zeros(n, jnp.int32)

    if variant == "autodiff":

        def forces(params, positions, numbers, graph):
            mask, batch = inputs(positions)

            def total(pos):
                energies = painn.structure_energies(params, config, pos, numbers, graph, mask, batch, 1, precision)
                return jnp.sum(energies), energies

            grad, energies = jax.grad(total, has_aux=True)(positions)
            return energies, -grad

        return forces
    store = variant not in ("analytic_lowmem", "analytic_chunked")
    chunk = chunk_pairs if variant == "analytic_chunked" else None

    def forces(params, positions, numbers, graph):
        mask, batch = inputs(positions)
        result = analytic.energy_forces_virial(params, config, positions, numbers, graph, mask, batch, 1, precision, store_filters=store,
                                               chunk_size=chunk)
        return result.energies, result.forces

    return forces


def measure(variant: str, model, system, loop_steps: int, repeats: int, chunk_pairs: int = CHUNK_PAIRS) -> dict:
    """Times, compile time and memory of one variant on one system."""
    import jax
    import jax.numpy as jnp

    from mlff_jax.analytic_graph import edges_from_pair_graph, pair_graph_from_pairs

    positions, numbers, first, second, shifts = system
    dtype = jnp.float32 if model.dtype == "float32" else jnp.float64
    if variant in PAIR_GRAPHS:
        graph = pair_graph_from_pairs(first, second, shifts, len(numbers), dtype=dtype, accumulate=PAIR_GRAPHS[variant])
    else:
        graph = edges_from_pair_graph(pair_graph_from_pairs(first, second, shifts, len(numbers), dtype=dtype, accumulate="scatter"))
    fn = force_function(variant, model, chunk_pairs)
    args = (model.params, jnp.asarray(positions, dtype), jnp.asarray(numbers, jnp.int32), graph)

    def loop(params, pos, numbers, graph):
        def body(_, carry):
            pos, acc = carry
            energies, forces = fn(params, pos, numbers, graph)
            return pos + LOOP_STEP * forces, acc + energies[0]

        return jax.lax.fori_loop(0, loop_steps, body, (pos, jnp.zeros((), pos.dtype)))

    row: dict = {"variant": variant}
    for label, f in (("single", fn), ("loop", loop)):
        t0 = time.perf_counter()
        compiled = jax.jit(f).lower(*args).compile()
        row[f"{label}_compile_s"] = time.perf_counter() - t0
        try:
            mem = compiled.memory_analysis()
            row[f"{label}_memory"] = {
                "temp_bytes": int(mem.temp_size_in_bytes),
                "argument_bytes": int(mem.argument_size_in_bytes),
                "output_bytes": int(mem.output_size_in_bytes),
            }
        except Exception as err:  # not every backend reports it
            row[f"{label}_memory"] = {"error": repr(err)}
        timing = time_fn(lambda: compiled(*args), jax_sync, repeats=repeats, warmup=2)
        if label == "loop":
            timing = {k.replace("_us", "_us_per_step"): (v / loop_steps if k.endswith("_us") else v) for k, v in timing.items()}
            timing["steps"] = loop_steps
        row[label] = timing
        if label == "single":
            energies, forces = compiled(*args)
            row["energy"] = float(energies[0])
            row["forces"] = np.asarray(forces, np.float64)  # compared across variants, dropped before writing
    row["peak_bytes_in_use"] = peak_memory_bytes()
    return row


# --------------------------------------------------------------------------------------- main
def run_worker(args) -> None:
    import mlff_jax

    model = mlff_jax.load(args.checkpoint, dtype=args.dtype, precision=args.precision)
    system = make_system(args.worker, model.config.cutoff)
    row = measure(args.variant, model, system, args.loop_steps_large, args.repeats_large, args.chunk_pairs)
    np.save(args.worker_out + ".forces.npy", row.pop("forces"))
    with open(args.worker_out, "w") as f:
        json.dump(row, f)


def isolated(args, name: str, variant: str) -> dict:
    """One measurement in a fresh process, so that peak_bytes_in_use belongs to this variant alone."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "row.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--variant", variant, "--worker-out", out,
               "--checkpoint", args.checkpoint, "--dtype", args.dtype, "--precision", args.precision,
               "--loop-steps-large", str(args.loop_steps_large), "--repeats-large", str(args.repeats_large),
               "--chunk-pairs", str(args.chunk_pairs)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"variant": variant, "error": proc.stderr[-2000:]}
        with open(out) as f:
            row = json.load(f)
        row["forces"] = np.load(out + ".forces.npy")
        return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="upstream .pt (default: student-427k, ultra-tiny-21k with --quick)")
    p.add_argument("--out", help="JSON path (default: benchmarks/results/forces_<device>.json)")
    p.add_argument("--quick", action="store_true", help="CPU smoke check: small model, small systems, few repeats")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--precision", default="highest", choices=("highest", "high", "default"))
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma-separated, among {VARIANTS}")
    p.add_argument("--chunk-pairs", type=int, default=None, help=f"pairs per chunk of analytic_chunked ({CHUNK_PAIRS}; 4096 with --quick)")
    p.add_argument("--budget-s", type=float, default=None, help="start no new system after this many seconds (results so far are kept)")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--repeats-large", type=int, default=5)
    p.add_argument("--loop-steps", type=int, default=50)
    p.add_argument("--loop-steps-large", type=int, default=10)
    p.add_argument("--isolate", action="store_true",
                   help="GPU: measure each box variant in a fresh process to record its peak_bytes_in_use (slower)")
    p.add_argument("--systems", default="all", help="'all', 'clusters', 'boxes', or comma-separated names (cluster_4,box_334)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)
    args.checkpoint = args.checkpoint or default_checkpoint(args.quick)
    if args.chunk_pairs is None:
        args.chunk_pairs = 4096 if args.quick else CHUNK_PAIRS
    if args.worker:
        return run_worker(args)

    import jax

    import mlff_jax

    if args.quick:
        args.repeats, args.repeats_large, args.loop_steps, args.loop_steps_large = 3, 3, 3, 2
    model = mlff_jax.load(args.checkpoint, dtype=args.dtype, precision=args.precision)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown or "autodiff" not in variants:
        raise SystemExit(f"--variants must include autodiff and be among {VARIANTS}; got {variants}")
    names = [f"cluster_{m}" for m in (QUICK_CLUSTERS if args.quick else CLUSTERS)]
    names += [f"box_{m}" for m in (QUICK_BOXES if args.quick else BOXES)]
    device = jax.devices()[0]
    out = args.out or os.path.join("benchmarks", "results", f"forces_{device.platform}.json")
    payload = {
        "environment": environment(),
        "checkpoint": os.path.basename(args.checkpoint),
        "config": model.config.to_dict(),
        "dtype": args.dtype,
        "precision": args.precision,
        "skin_angstrom": SKIN,
        "chunk_pairs": args.chunk_pairs,
        "systems": [],
    }
    isolate = args.isolate and device.platform == "gpu"
    if args.systems == "clusters":
        names = [n for n in names if n.startswith("cluster")]
    elif args.systems == "boxes":
        names = [n for n in names if n.startswith("box")]
    elif args.systems != "all":
        names = args.systems.split(",")
    started = time.perf_counter()
    for name in names:
        if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
            payload.setdefault("skipped_for_budget", []).append(name)
            write_json(out, payload)
            continue
        system = make_system(name, model.config.cutoff)
        positions, numbers, first, second, _ = system
        large = name.startswith("box")
        entry = {"system": name, "atoms": len(numbers), "pairs": len(first), "directed_edges": 2 * len(first),
                 "max_neighbors": int(np.bincount(np.concatenate([first, second]), minlength=len(numbers)).max(initial=0)), "rows": []}
        for variant in variants:
            t0 = time.perf_counter()
            if large and isolate:
                row = isolated(args, name, variant)
            else:
                steps, repeats = (args.loop_steps_large, args.repeats_large) if large else (args.loop_steps, args.repeats)
                row = measure(variant, model, system, steps, repeats, args.chunk_pairs)
                if not large:
                    row["peak_bytes_in_use"] = None  # shared process: the counter is not this variant's
            row["wall_s"] = time.perf_counter() - t0
            entry["rows"].append(row)
        rows = {r["variant"]: r for r in entry["rows"]}
        base = rows["autodiff"]
        for r in entry["rows"]:
            if "error" in r or "error" in base:
                continue
            r["max_abs_force_diff_vs_autodiff"] = float(np.abs(r["forces"] - base["forces"]).max())
            r["speedup_single"] = base["single"]["median_us"] / r["single"]["median_us"]
            r["speedup_loop"] = base["loop"]["median_us_per_step"] / r["loop"]["median_us_per_step"]
            temp, temp_base = r["single_memory"].get("temp_bytes"), base["single_memory"].get("temp_bytes")
            if temp is not None and temp_base:
                r["temp_memory_ratio"] = temp / temp_base
            if r.get("peak_bytes_in_use") and base.get("peak_bytes_in_use"):
                r["peak_memory_ratio"] = r["peak_bytes_in_use"] / base["peak_bytes_in_use"]
        for r in entry["rows"]:
            r.pop("forces", None)
        payload["systems"].append(entry)
        summary = "  ".join(
            f"{r['variant']}: {r['single']['median_us']:.0f}us x{r.get('speedup_single', 1):.2f} loop x{r.get('speedup_loop', 1):.2f}"
            f" mem x{r.get('peak_memory_ratio', r.get('temp_memory_ratio', float('nan'))):.2f}"
            for r in entry["rows"] if "error" not in r
        )
        print(f"{name} ({entry['atoms']} atoms, {entry['pairs']} pairs): {summary}", flush=True)
        errors = [r for r in entry["rows"] if "error" in r]
        for r in errors:
            print(f"  {r['variant']} failed: {r['error'][-500:]}", flush=True)
        write_json(out, payload)  # after every system: a cut-off run still leaves its results


if __name__ == "__main__":
    main()
