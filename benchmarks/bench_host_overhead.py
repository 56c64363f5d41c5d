"""Host overhead of one small-molecule call: what ``model.energy_and_forces(R, Z)`` costs on top of
the compiled program, and what ``MLFFCalculator`` costs on top of that.

    PYTHONPATH=$PWD python3 benchmarks/bench_host_overhead.py --out benchmarks/results/host_overhead_<machine>.json

Per system (ethanol, 9 atoms; a 20-water cluster, 60 atoms), float32, student-427k by default:

- ``host_call``: ``model.energy_and_forces(R, Z)`` with NumPy float64 positions in, NumPy out;
- ``device_resident_call``: the same compiled program (an ahead-of-time ``Compiled`` of the
  model's packed all-pairs function) called on an already padded, already transferred input, with
  ``block_until_ready()`` on its output: the floor a host call can reach;
- ``overhead`` = host_call - device_resident_call (the issue's target: <= 30 µs);
- ``calculator_call``: ``atoms.get_forces()`` after moving the atoms (so ASE recomputes), and
  ``calculator_extra`` = calculator_call - host_call (target: <= 50 µs);
- ``stages``: the host call's Python stages timed one by one with ``perf_counter`` (validation,
  float64 centring, packing, dispatch + wait, device -> host), to see where the time goes.

Medians of ``--repeats`` after ``--warmup``, wall time (``perf_counter``) and CPU time of this
process (``process_time``; the machine may be shared, and CPU time is less sensitive to other load).
The load average is recorded. Times are of the machine it runs on: CPU figures are not GPU figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_CHECKPOINT = "tests/data/upstream/checkpoints/student-427k.model.pt"


def timed(fn, repeats: int, warmup: int, setup=None) -> dict:
    """Median wall and CPU µs of fn() (``setup()`` runs untimed before each call)."""
    wall, cpu = [], []
    for i in range(warmup + repeats):
        if setup is not None:
            setup()
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        w1, c1 = time.perf_counter(), time.process_time()
        if i >= warmup:
            wall.append(w1 - w0)
            cpu.append(c1 - c0)
    return {"wall_us": float(np.median(wall)) * 1e6, "cpu_us": float(np.median(cpu)) * 1e6,
            "wall_us_p10": float(np.percentile(wall, 10)) * 1e6}  # fmt: skip


def systems():
    from ase.build import molecule

    from systems import water_cluster

    ethanol = molecule("CH3CH2OH")
    cluster_r, cluster_z = water_cluster(20, seed=0)
    return {"ethanol_9": (ethanol.positions.copy(), ethanol.numbers.copy()), "water_cluster_60": (np.asarray(cluster_r, np.float64), np.asarray(cluster_z))}


def device_resident(model, positions, numbers):
    """(fn, description): a call of the host path's compiled program on device-resident padded input."""
    import jax

    from mlff_jax import evaluation

    n = len(numbers)
    n_pad = evaluation.bucket_size(n)
    centred = evaluation.prepare_positions(positions, np.zeros(n, np.int64), 1)
    if hasattr(evaluation, "pack_molecules"):
        packed = evaluation.pack_molecules(centred, numbers, np.zeros(n, np.int64), n_pad, np.dtype(model.dtype), model.config.cutoff)
    else:  # the layout before the fast path: [N_pad, 5] x, y, z, Z, structure (-1: padding)
        packed = np.zeros((n_pad, 5), np.dtype(model.dtype))
        packed[:n, :3] = centred
        packed[n:, 0] = 1e3 + 10.0 * model.config.cutoff * np.arange(n_pad - n)
        packed[:, 3] = 1
        packed[:n, 3] = numbers
        packed[:, 4] = -1
        packed[:n, 4] = 0
    params = jax.device_put(model.params)
    packed = jax.device_put(packed)
    compiled = jax.jit(model._packed_energy_and_forces, static_argnames=("num_structures", "method")).lower(
        params, packed, num_structures=1, method="analytic").compile()  # fmt: skip
    return lambda: compiled(params, packed).block_until_ready()


def stage_times(model, positions, numbers, repeats, warmup) -> dict:
    """The host call's stages one at a time (µs, wall medians), as the current code does them."""
    from mlff_jax import evaluation

    n = len(numbers)
    out = {}
    out["validate"] = timed(lambda: model._validate(positions, numbers, None), repeats, warmup)["wall_us"]
    zeros = np.zeros(n, np.int64)
    out["prepare_positions"] = timed(lambda: evaluation.prepare_positions(positions, zeros, 1), repeats, warmup)["wall_us"]
    centred = evaluation.prepare_positions(positions, zeros, 1)
    if hasattr(evaluation, "pack_molecules"):  # the fast path
        n_pad = evaluation.bucket_size(n)
        args = (centred, numbers, zeros, n_pad, np.dtype(model.dtype), model.config.cutoff)
        out["pack"] = timed(lambda: evaluation.pack_molecules(*args), repeats, warmup)["wall_us"]
        packed = evaluation.pack_molecules(*args)
        executable = model._executable(n_pad, 1, "analytic")

        def call():
            return executable(model.params, packed)
    else:
        n_pad = evaluation.bucket_size(n)

        def pack():
            packed = np.zeros((n_pad, 5), np.dtype(model.dtype))
            packed[:n, :3] = centred
            packed[n:, 0] = 1e3 + 10.0 * model.config.cutoff * np.arange(n_pad - n)
            packed[:, 3] = 1
            packed[:n, 3] = numbers
            packed[:, 4] = -1
            packed[:n, 4] = 0
            return packed

        out["pack"] = timed(pack, repeats, warmup)["wall_us"]
        packed = pack()

        def call():
            return model._jitted(model.params, packed, num_structures=1, method="analytic")
    # np.asarray of a fresh output: dispatch, wait and the device -> host copy together
    out["dispatch_wait_and_copy"] = timed(lambda: np.asarray(call()), repeats, warmup)["wall_us"]
    out["dispatch_and_wait"] = timed(lambda: call().block_until_ready(), repeats, warmup)["wall_us"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--label", default="", help="recorded as is (e.g. 'before', 'after')")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import jax
    from ase import Atoms

    import mlff_jax
    from common import environment, write_json

    model = mlff_jax.load(args.checkpoint, dtype=args.dtype)
    calc = mlff_jax.MLFFCalculator(model)
    results = {}
    for name, (positions, numbers) in systems().items():
        model.energy_and_forces(positions, numbers)  # compile
        host = timed(lambda: model.energy_and_forces(positions, numbers), args.repeats, args.warmup)
        resident = timed(device_resident(model, positions, numbers), args.repeats, args.warmup)
        atoms = Atoms(numbers=numbers, positions=positions)
        atoms.calc = calc
        rng = np.random.default_rng(0)
        moves = rng.normal(scale=1e-3, size=(args.repeats + args.warmup + 1, len(numbers), 3))
        step = iter(range(len(moves)))

        def move():  # a new geometry each call, as in MD or an optimisation, so ASE recomputes
            atoms.positions = positions + moves[next(step)]

        calculator = timed(atoms.get_forces, args.repeats, args.warmup, setup=move)
        results[name] = {
            "num_atoms": len(numbers),
            "host_call": host,
            "device_resident_call": resident,
            "overhead_wall_us": host["wall_us"] - resident["wall_us"],
            "overhead_cpu_us": host["cpu_us"] - resident["cpu_us"],
            "calculator_call": calculator,
            "calculator_extra_wall_us": calculator["wall_us"] - host["wall_us"],
            "calculator_extra_cpu_us": calculator["cpu_us"] - host["cpu_us"],
            "stages_wall_us": stage_times(model, positions, numbers, args.repeats, args.warmup),
        }
        r = results[name]
        print(f"{name}: host {host['wall_us']:.0f} µs (cpu {host['cpu_us']:.0f}), device-resident {resident['wall_us']:.0f} µs "
              f"(cpu {resident['cpu_us']:.0f}), overhead {r['overhead_wall_us']:.0f} µs (cpu {r['overhead_cpu_us']:.0f}); "
              f"calculator {calculator['wall_us']:.0f} µs, extra {r['calculator_extra_wall_us']:.0f} µs (cpu {r['calculator_extra_cpu_us']:.0f})")
        print("   stages (µs):", {k: round(v, 1) for k, v in r["stages_wall_us"].items()})
    payload = {"benchmark": "host_overhead", "label": args.label, "checkpoint": args.checkpoint, "dtype": args.dtype, "repeats": args.repeats,
               "warmup": args.warmup, "load_average": os.getloadavg(), "environment": environment(), "backend": jax.default_backend(),
               "results": results}  # fmt: skip
    if args.out:
        write_json(args.out, payload)


if __name__ == "__main__":
    main()
