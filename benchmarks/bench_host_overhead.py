"""Host overhead of one small-molecule call: what ``model.energy_and_forces(R, Z)`` costs on top of
the compiled program, and what ``MLFFCalculator`` costs on top of that.

    PYTHONPATH=$PWD python3 benchmarks/bench_host_overhead.py --out benchmarks/results/host_overhead_<machine>.json

Per model (``--checkpoints``, default the upstream-shaped 427K and 77K students) and molecule of 3-60
atoms (water, ethanol, benzene, clusters of 7 and 20 waters), float32:

- ``host_call``: ``model.energy_and_forces(R, Z)`` with NumPy float64 positions in, NumPy out;
- ``device_resident_call``: the same compiled program (the model's own cached executable for this
  size bucket) called on an already padded, already transferred input, with
  ``block_until_ready()`` on its output: the floor a host call can reach;
- ``overhead`` = host_call - device_resident_call (the target: <= 30 µs);
- ``calculator_call``: ``atoms.get_forces()`` after moving the atoms (so ASE recomputes), and
  ``calculator_extra`` = calculator_call - host_call (the target: <= 50 µs);
- ``ratios``: host / device-resident, calculator / host and calculator / device-resident (medians);
- ``stages``: the host call's stages timed one by one with ``perf_counter`` (checks, centring and
  packing, the program on device-resident input, the program on the NumPy input (adds the host ->
  device copy), the same with the device -> host copy of its output, unpacking), with the model
  and with the null program below, to see where the time goes;
- ``null_program``: the same three calls with the model's compiled programs replaced by programs
  that do no arithmetic (same input, same output shape). On a CPU the model itself takes
  milliseconds per call, and on a shared machine its spread hides a difference of tens of µs;
  without it, host_call - device_resident_call is the host work alone (validation, centring,
  packing, dispatch, both transfers, unpacking), measured to a few µs.

The three calls are interleaved round by round (load drift hits them alike); differences are
medians of per-round differences. Medians of ``--repeats`` rounds after ``--warmup`` (fewer where
a call is slow: ``--budget-s`` per system), wall time (``perf_counter``) and CPU time of this
process (``process_time``; the machine may be shared, and CPU time is less sensitive to other load).
The JSON records the device, versions, command and load average. Times are of the machine it runs
on: CPU figures are not GPU figures.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHECKPOINTS = {
    "student-427k": "tests/data/upstream/checkpoints/student-427k.model.pt",
    "tiny-77k": "tests/data/upstream/checkpoints/tiny-77k.model.pt",
}


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
    return {"wall_us": float(np.median(wall)) * 1e6, "cpu_us": float(np.median(cpu)) * 1e6}


def interleaved(fns: dict, repeats: int, warmup: int, setups: dict) -> dict:
    """Each round calls every fn once in turn, so that the machine's load (shared, drifting) hits
    all of them alike; returns per fn the median wall and CPU µs and the per-round samples."""
    samples = {name: ([], []) for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            if name in setups:
                setups[name]()
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            w1, c1 = time.perf_counter(), time.process_time()
            if i >= warmup:
                samples[name][0].append(w1 - w0)
                samples[name][1].append(c1 - c0)
    return {name: (np.array(w) * 1e6, np.array(c) * 1e6) for name, (w, c) in samples.items()}


def paired_difference(a, b) -> float:
    """Median over rounds of a - b (µs): the difference of two interleaved measurements."""
    return float(np.median(a - b))


def systems():
    """Molecules of 3 to 60 atoms: {name: (positions [N, 3] float64 Å, atomic numbers [N])}."""
    from ase.build import molecule

    from systems import water_cluster

    out = {}
    for name, formula in (("water_3", "H2O"), ("ethanol_9", "CH3CH2OH"), ("benzene_12", "C6H6")):
        atoms = molecule(formula)
        out[name] = (atoms.positions.copy(), atoms.numbers.copy())
    for waters in (7, 20):
        r, z = water_cluster(waters, seed=0)
        out[f"water_cluster_{3 * waters}"] = (np.asarray(r, np.float64), np.asarray(z))
    return out


def pack_before_fast_path(model, centred, numbers, n_pad):
    """The input layout of the code before the fast path: [N_pad, 5] x, y, z, Z, structure (-1: padding)."""
    n = len(numbers)
    packed = np.zeros((n_pad, 5), np.dtype(model.dtype))
    packed[:n, :3] = centred
    packed[n:, 0] = 1e3 + 10.0 * model.config.cutoff * np.arange(n_pad - n)
    packed[:, 3] = 1
    packed[:n, 3] = numbers
    packed[:, 4] = -1
    packed[:n, 4] = 0
    return packed


def device_resident(model, positions, numbers):
    """A call of the host path's compiled program on device-resident padded input (block until ready)."""
    import jax

    from mlff_jax import evaluation

    n = len(numbers)
    n_pad = evaluation.bucket_size(n)
    centred = evaluation.prepare_positions(positions, np.zeros(n, np.int64), 1)
    if hasattr(evaluation, "pack_molecules"):
        packed = evaluation.pack_molecules(centred, numbers, np.zeros(n, np.int64), n_pad, np.dtype(model.dtype), model.config.cutoff)
    else:
        packed = pack_before_fast_path(model, centred, numbers, n_pad)
    params = jax.device_put(model.params)
    packed = jax.device_put(packed)
    if hasattr(model, "_executable"):  # the very program the host call runs
        compiled = model._executable(n_pad, 1, "analytic")
    else:
        compiled = jax.jit(model._packed_energy_and_forces, static_argnames=("num_structures", "method")).lower(
            params, packed, num_structures=1, method="analytic").compile()  # fmt: skip
    return lambda: compiled(params, packed).block_until_ready()


def null_program_model(model):
    """A fresh copy of ``model`` whose compiled host programs do no model arithmetic: they return
    the output's shape ([B + 3N]: zeros, then the packed coordinates) from the same packed input.
    Host call, device-resident call and calculator then differ only by the host work around the
    program, without the model's compute (milliseconds on a CPU, and noisy on a shared machine)."""
    import jax
    import jax.numpy as jnp

    fresh = model.with_untrained_elements(model.allow_untrained_elements)  # a new object: its own caches

    def null(params, packed, num_structures, method="analytic"):
        return jnp.concatenate([jnp.zeros(num_structures, packed.dtype), jnp.reshape(packed[:, :3], (-1,))])

    fresh._packed_energy_and_forces = null
    fresh._jitted = jax.jit(null, static_argnames=("num_structures", "method"))
    return fresh


def measure(model, calc, positions, numbers, repeats, warmup, budget_s) -> dict:
    """Host call, device-resident call and calculator call, interleaved; overheads as paired differences."""
    from ase import Atoms

    model.energy_and_forces(positions, numbers)  # compile
    resident = device_resident(model, positions, numbers)
    per_call = timed(lambda: model.energy_and_forces(positions, numbers), 3, 1)["wall_us"] * 1e-6
    repeats = max(10, min(repeats, int(budget_s / (3 * per_call))))  # a 60-atom call takes ~0.1 s on a CPU
    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = calc
    moves = np.random.default_rng(0).normal(scale=1e-3, size=(repeats + warmup + 1, len(numbers), 3))
    step = iter(range(len(moves)))

    def move():  # a new geometry each call, as in MD or an optimisation, so ASE recomputes
        atoms.positions = positions + moves[next(step)]

    runs = interleaved({"host_call": lambda: model.energy_and_forces(positions, numbers), "device_resident_call": resident,
                        "calculator_call": atoms.get_forces}, repeats, warmup, {"calculator_call": move})  # fmt: skip
    r = {"num_atoms": len(numbers), "repeats": repeats}
    for key, (wall, cpu) in runs.items():
        r[key] = {"wall_us": float(np.median(wall)), "cpu_us": float(np.median(cpu))}
    host, dev, calc_run = runs["host_call"], runs["device_resident_call"], runs["calculator_call"]
    r["overhead_wall_us"] = paired_difference(host[0], dev[0])
    r["overhead_cpu_us"] = paired_difference(host[1], dev[1])
    r["calculator_extra_wall_us"] = paired_difference(calc_run[0], host[0])
    r["calculator_extra_cpu_us"] = paired_difference(calc_run[1], host[1])
    h, d, c = r["host_call"]["wall_us"], r["device_resident_call"]["wall_us"], r["calculator_call"]["wall_us"]
    r["ratios"] = {"host_over_device_resident": h / d, "calculator_over_host": c / h, "calculator_over_device_resident": c / d}
    return r


def report(name, r) -> None:
    print(f"{name} ({r['repeats']} rounds): host {r['host_call']['wall_us']:.0f} µs, device-resident {r['device_resident_call']['wall_us']:.0f} µs, "
          f"overhead {r['overhead_wall_us']:.1f} µs (cpu {r['overhead_cpu_us']:.1f}); calculator {r['calculator_call']['wall_us']:.0f} µs, "
          f"extra {r['calculator_extra_wall_us']:.1f} µs (cpu {r['calculator_extra_cpu_us']:.1f})")


def stage_times(model, positions, numbers, repeats, warmup) -> dict:
    """The host call's stages one at a time (µs, wall medians), as the code under test does them:
    the one-molecule fast path (``model._molecule_fast_path``) where it exists, else the general
    path (``_validate``, ``prepare_positions``, packing, the jitted call)."""
    from mlff_jax import evaluation

    n = len(numbers)
    n_pad = evaluation.bucket_size(n)
    out = {}
    if hasattr(model, "_molecule_fast_path"):
        model.energy_and_forces(positions, numbers)
        plan = model._molecule_plans[(n, "analytic")]
        cached_z = hasattr(plan, "z_bytes")  # the plan holds its checked atomic numbers: no per-call element check
        executable, template = (plan.executable, plan.packed) if cached_z else plan[:2]

        def checks():
            same_z = numbers.dtype == plan.z_dtype and numbers.tobytes() == plan.z_bytes if cached_z else model._allowed_z.take(numbers, mode="clip").all()
            sums = np.add.reduce(positions, axis=0)
            return math.isfinite(sum(sums.tolist())) and same_z, sums

        out["checks"] = timed(checks, repeats, warmup)["wall_us"]
        sums = checks()[1]

        def centre_and_pack():
            packed = template.copy()
            np.subtract(positions, sums / n, out=packed[:n, :3])
            if not cached_z:
                packed[:n, 3] = numbers
            return packed

        out["centre_and_pack"] = timed(centre_and_pack, repeats, warmup)["wall_us"]
        packed = centre_and_pack()

        def call():
            return executable(model.params, packed)
    else:
        out["validate"] = timed(lambda: model._validate(positions, numbers, None), repeats, warmup)["wall_us"]
        zeros = np.zeros(n, np.int64)
        out["prepare_positions"] = timed(lambda: evaluation.prepare_positions(positions, zeros, 1), repeats, warmup)["wall_us"]
        centred = evaluation.prepare_positions(positions, zeros, 1)

        def pack():
            return pack_before_fast_path(model, centred, numbers, n_pad)

        out["pack"] = timed(pack, repeats, warmup)["wall_us"]
        packed = pack()

        def call():
            return model._jitted(model.params, packed, num_structures=1, method="analytic")

    # dispatch + wait on device-resident input, then on the NumPy input (+ its host -> device
    # copy), then the same with the device -> host copy (np.asarray of a fresh output)
    import jax

    resident_params, resident_packed = jax.device_put(model.params), jax.device_put(packed)
    program = executable if hasattr(model, "_molecule_fast_path") else None
    if program is not None:
        out["device_resident_dispatch_and_wait"] = timed(lambda: program(resident_params, resident_packed).block_until_ready(), repeats, warmup)["wall_us"]
    out["dispatch_and_wait"] = timed(lambda: call().block_until_ready(), repeats, warmup)["wall_us"]
    out["dispatch_wait_and_copy"] = timed(lambda: np.asarray(call()), repeats, warmup)["wall_us"]
    result = np.asarray(call())
    out["unpack"] = timed(lambda: (result[0], result[1:].reshape(n_pad, 3)[:n]), repeats, warmup)["wall_us"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", default="student-427k,tiny-77k", help=f"comma list of {', '.join(CHECKPOINTS)} or checkpoint paths")
    parser.add_argument("--systems", default="all", help="comma list of: " + ", ".join(systems()))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--null-repeats", type=int, default=3000, help="rounds with the null program (cheap calls)")
    parser.add_argument("--budget-s", type=float, default=60.0, help="rough time per system (fewer rounds for slow calls)")
    parser.add_argument("--no-stages", action="store_true", help="skip the per-stage timings")
    parser.add_argument("--label", default="", help="recorded as is (e.g. 'before', 'after')")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import jax

    import mlff_jax
    from common import environment, write_json

    chosen = systems() if args.systems == "all" else {k: v for k, v in systems().items() if k in args.systems.split(",")}
    payload = {"benchmark": "host_overhead", "label": args.label, "checkpoints": args.checkpoints, "dtype": args.dtype, "repeats": args.repeats,
               "warmup": args.warmup, "load_average_at_start": os.getloadavg(), "environment": environment(), "backend": jax.default_backend(),
               "device": jax.devices()[0].device_kind, "results": {}}  # fmt: skip
    for checkpoint in args.checkpoints.split(","):
        model = mlff_jax.load(CHECKPOINTS.get(checkpoint, checkpoint), dtype=args.dtype)
        calc = mlff_jax.MLFFCalculator(model)
        results = payload["results"][checkpoint] = {}
        for name, (positions, numbers) in chosen.items():
            r = measure(model, calc, positions, numbers, args.repeats, args.warmup, args.budget_s)
            if not args.no_stages:
                r["stages_wall_us"] = stage_times(model, positions, numbers, min(r["repeats"], 200), args.warmup)
            null_model = null_program_model(model)
            r["null_program"] = measure(null_model, mlff_jax.MLFFCalculator(null_model), positions, numbers, args.null_repeats, args.warmup, args.budget_s)
            if not args.no_stages:  # the host call's stages around a program that costs nothing: where the overhead goes
                r["null_program"]["stages_wall_us"] = stage_times(null_model, positions, numbers, 2000, args.warmup)
            results[name] = r
            report(f"{checkpoint} {name}", r)
            if "stages_wall_us" in r:
                print("   stages (µs):", {k: round(v, 1) for k, v in r["stages_wall_us"].items()})
            report("   null program", r["null_program"])
            if "stages_wall_us" in r["null_program"]:
                print("   null program stages (µs):", {k: round(v, 1) for k, v in r["null_program"]["stages_wall_us"].items()})
            payload["load_average_at_end"] = os.getloadavg()
            if args.out:  # after every system: a run cut short keeps what it measured
                write_json(args.out, payload)


if __name__ == "__main__":
    main()
