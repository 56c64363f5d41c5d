"""Timing of the fused message-passing kernels against the XLA path (float32).

Workloads, per implementation (xla, pallas, triton when jax-triton imports) and precision mode:
  block     one interaction block's message step: forward (ds, dv), and forward + backward
            (VJP w.r.t. s, v and the slot geometry: what forces need);
  model     the whole model's energy + forces (``energy_and_forces_kernel``, one jitted call).
Systems: single molecules (benzene 12, C60 60 atoms, a 64-water cluster 192 atoms) and periodic
water boxes of ~1k, 10k and 100k atoms (neighbour list built on the host with ase, not timed).

    python benchmarks/bench_message_passing.py                 # GPU, the full set (~5-8 min)
    python benchmarks/bench_message_passing.py --quick         # CPU smoke test (interpret mode)
    python benchmarks/bench_message_passing.py --precisions highest,tf32x3,tf32,bf16 --sizes 10000
    python benchmarks/bench_message_passing.py --sweep --sizes 10000   # launch settings of the kernels
    python benchmarks/bench_message_passing.py --api --out $OUT/api.json   # the user-facing model (below)

``--api``: what ``implementation=`` chooses between, through the public API: energy + forces of the
427K model (``jax.value_and_grad(model.energy_fn)`` with a prebuilt ``mlff_jax.neighbors`` list) on
periodic water boxes of 1k/10k/100k atoms, for XLA exact, XLA compressed, kernel exact and kernel
compressed (pallas, and triton when jax-triton imports). Per case: compile time, median after
warm-up, compiled memory (``memory_analysis``), the device's peak-memory high-water mark, and the
largest force difference to XLA of the same (exact / compressed) model; ``--api-molecules C6H6,C60``
adds molecules (all-pairs path, size class "small"). ``--budget-s`` (default 270)
skips what is left once the budget is spent; every case is guarded (an error or OOM is a row).
``benchmarks/make_kernels_choice.py`` turns these rows into ``mlff_jax/kernels_choice.json``.

Medians after warm-up (``block_until_ready``), with min/max/IQR; results (with device, versions
and commit) go to benchmarks/results/bench_message_passing_<device>_<time>.json. A case that fails
(e.g. XLA out of memory at 100k atoms) is recorded with its error and the run goes on.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
import time
import traceback

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the working tree's mlff_jax
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import kernel_systems as ks  # noqa: E402
from mlff_jax.kernels.message_passing import layout, message_block  # noqa: E402
from mlff_jax.kernels.message_passing.model import energy_and_forces_kernel, mask_neighbors  # noqa: E402


def systems(sizes, quick, molecules=True):
    """(name, positions, Z, neighbors, shifts) with neighbour lists built on the host."""
    out = []
    mols = [("benzene", *ks.molecule("C6H6"))] if quick else [
        ("benzene", *ks.molecule("C6H6")), ("C60", *ks.molecule("C60")), ("water-cluster-192", *ks.water_cluster(64))]  # fmt: skip
    mols = mols if molecules else []
    for name, pos, z in mols:
        nbr, shifts = layout.all_pairs_dense(pos, 5.0)
        out.append((name, pos, z, nbr, shifts))
    for size in sizes:
        pos, z, cell = ks.water_box_of(size)
        start = time.perf_counter()
        nbr, shifts = layout.periodic_dense(pos, cell, 5.0)
        print(f"# neighbour list of {len(pos)} atoms: {time.perf_counter() - start:.1f} s, capacity {nbr.shape[1]}", flush=True)
        out.append((f"water-box-{len(pos)}", pos, z, nbr, shifts))
    return out


def block_case(params, config, pos, nbr, shifts, implementation, precision, interpret, launch):
    """Jitted forward and forward+backward of the first block's message step on this geometry."""
    rng = np.random.default_rng(0)
    n, h = len(pos), config.hidden_dim
    s = jnp.asarray(rng.normal(size=(n, h)), jnp.float32)
    v = jnp.asarray(0.1 * rng.normal(size=(n, 3, h)), jnp.float32)
    nbr = jnp.asarray(nbr)
    d, u, _ = layout.slot_geometry(jnp.asarray(pos, jnp.float32), nbr, jnp.asarray(shifts, jnp.float32))
    block = params["interactions_0"]
    centers, widths = params["rbf"]["centers"], params["rbf"]["widths"]
    f = functools.partial(message_block, neighbors=nbr, block=block, rbf_centers=centers, rbf_widths=widths, cutoff=config.cutoff,
                          implementation=implementation, interpret=interpret, precision=precision, **launch)  # fmt: skip
    forward = jax.jit(lambda s, v, d, u: f(s, v, distances=d, directions=u))

    @jax.jit
    def forward_backward(s, v, d, u):
        out, pullback = jax.vjp(lambda s, v, d, u: f(s, v, distances=d, directions=u), s, v, d, u)
        return pullback(out)

    return (forward, forward_backward), (s, v, d, u)


def model_case(params, config, pos, z, nbr, shifts, implementation, precision, interpret, launch):
    n = len(pos)
    fn = jax.jit(functools.partial(energy_and_forces_kernel, config=config, num_structures=1, implementation=implementation,
                                   interpret=interpret, precision=precision, **launch))  # fmt: skip
    args = dict(
        params=params, positions=jnp.asarray(pos, jnp.float32), atomic_numbers=jnp.asarray(z), neighbors_idx=jnp.asarray(nbr),
        shifts=jnp.asarray(shifts, jnp.float32), atom_mask=jnp.ones(n, bool), batch=jnp.zeros(n, jnp.int32),
    )  # fmt: skip
    return lambda: fn(**args)


API_WORKLOAD = "model api energy+forces"


def api_benchmark(args, env, model_name):
    """The ``--api`` rows (see the module docstring); returns them, written to ``args.out`` after each case."""
    from mlff_jax import neighbors as nb
    from mlff_jax.implementation import triton_available, workload_key
    from mlff_jax.model import PaiNNStudent

    start_all = time.perf_counter()
    sizes = [int(x) for x in args.sizes.split(",") if x]
    # Molecules (opt-in): energy_fn without a list, the all-pairs path of energy_and_forces (<= 128 atoms).
    sizes += [name for name in args.api_molecules.split(",") if name]
    implementations = (args.implementations or "xla,pallas" + (",triton" if triton_available() else "")).split(",")
    interpret = args.quick
    config, params, source = ks.load_params(model_name, "float32")
    exact = PaiNNStudent(config, params, dtype="float32", implementation="xla")
    models = {False: exact, True: exact.compress()}  # compress(): default spacing 0.004 Å
    out = pathlib.Path(args.out) if args.out else ks.RESULTS / f"bench_api_{env['device'].replace(' ', '_')}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []

    def save():
        out.write_text(json.dumps({"environment": env, "model": model_name, "weights": source, "workload": API_WORKLOAD, "rows": rows}, indent=1))

    def peak():
        stats = jax.devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use")

    print(f"# --api: model {model_name} ({source}); implementations {implementations}; sizes {sizes}; budget {args.budget_s} s", flush=True)
    boxes, reference_forces = {}, {}  # per size: (positions, Z, neighbour list); XLA forces per (size, compressed)
    # Pass 1: XLA and Pallas at every size; pass 2: jax-triton (the same algorithm), first to go if time runs short.
    passes = [[i for i in implementations if i != "triton"], [i for i in implementations if i == "triton"]]
    cases = [(size, impl, compressed) for group in passes for size in sizes for impl in group for compressed in (False, True)]
    for size, impl, compressed in cases:
        if size not in boxes and isinstance(size, str):
            pos, z = ks.molecule(size)
            boxes[size] = (pos, z, "all pairs")
        if size not in boxes:
            pos, z, cell = ks.water_box_of(size)
            try:
                boxes[size] = (pos, z, nb.neighbor_list_fn(config.cutoff, skin=0.0, cell=cell).allocate(pos))
            except Exception as err:  # noqa: BLE001
                boxes[size] = (pos, z, None)
                rows.append(dict(workload=API_WORKLOAD, system=f"water-box-{len(pos)}", atoms=len(pos), error=f"neighbour list: {err!r}"[:2000]))
                save()
        pos, z, nbrs = boxes[size]
        if nbrs is None:
            continue
        positions, numbers = jnp.asarray(pos, jnp.float32), jnp.asarray(z, jnp.int32)
        all_pairs = isinstance(nbrs, str)
        if all_pairs:
            nbrs = jnp.zeros(())  # unused argument of the jitted function
        row = dict(workload=API_WORKLOAD, system=size if all_pairs else f"water-box-{len(pos)}", atoms=len(pos),
                   capacity=len(pos) if all_pairs else int(nbrs.capacity), model=model_name,
                   weights=source, dtype="float32", precision="highest", implementation=impl, compressed=compressed,
                   key=workload_key("float32", "highest", compressed, config.hidden_dim, len(pos)))  # fmt: skip
        if time.perf_counter() - start_all > args.budget_s:
            row["error"] = f"skipped: time budget of {args.budget_s} s spent"
            rows.append(row)
            save()
            continue
        try:
            model = models[compressed].with_implementation(impl, interpret=interpret and impl == "pallas")
            if all_pairs:
                fn = jax.jit(jax.value_and_grad(lambda r, unused, m=model: m.energy_fn(r, numbers)))
            else:
                fn = jax.jit(jax.value_and_grad(lambda r, nbrs, m=model: m.energy_fn(r, numbers, neighbors=nbrs)))
            t0 = time.perf_counter()
            compiled = fn.lower(positions, nbrs).compile()
            row["compile_s"] = round(time.perf_counter() - t0, 2)
            try:
                mem = compiled.memory_analysis()
                row["memory"] = {"temp_bytes": int(mem.temp_size_in_bytes), "argument_bytes": int(mem.argument_size_in_bytes),
                                 "output_bytes": int(mem.output_size_in_bytes)}  # fmt: skip
            except Exception as err:  # noqa: BLE001 - not every backend reports it
                row["memory"] = {"error": repr(err)[:200]}
            peak_before = peak()
            energy, grad = jax.block_until_ready(compiled(positions, nbrs))
            row.update(ks.timed(compiled, positions, nbrs, repeats=args.repeats, warmup=1))
            row["peak_bytes_in_use_before"], row["peak_bytes_in_use_after"] = peak_before, peak()
            row["atom_steps_per_s"] = row["atoms"] / row["median_s"]
            row["energy_eV"] = float(energy)
            forces = -np.asarray(grad, np.float64)
            row["finite"] = bool(np.all(np.isfinite(forces)))
            if impl == "xla":
                reference_forces[size, compressed] = forces
            elif (size, compressed) in reference_forces:
                row["max_force_diff_vs_xla_eV_A"] = float(np.abs(forces - reference_forces[size, compressed]).max())
            print(f"api {row['system']:18s} {impl:7s} {'compressed' if compressed else 'exact':10s} {1e3 * row['median_s']:10.3f} ms  "
                  f"compile {row['compile_s']:6.1f} s  temp {row['memory'].get('temp_bytes', 0) / 2**20:9.1f} MiB"
                  f"{'  dF=%.1e' % row['max_force_diff_vs_xla_eV_A'] if 'max_force_diff_vs_xla_eV_A' in row else ''}", flush=True)  # fmt: skip
        except Exception as err:  # noqa: BLE001 - record (OOM, compile failure, missing backend) and go on
            row["error"] = "".join(traceback.format_exception_only(err))[-2000:]
            print(f"api {row['system']:18s} {impl:7s} {'compressed' if compressed else 'exact':10s} FAILED: {row['error'][:300]}", flush=True)
        rows.append(row)
        save()
    save()
    print(f"# wrote {out} ({time.perf_counter() - start_all:.0f} s)")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: tiny systems, Pallas in interpret mode")
    parser.add_argument("--sizes", default="1000,10000,100000", help="water box sizes (atoms)")
    parser.add_argument("--implementations", default=None, help="default: xla,pallas (+triton if jax-triton imports)")
    parser.add_argument("--precisions", default=None, help="float32 matmul modes (default: highest,tf32x3,tf32; --quick: highest)")
    parser.add_argument("--model", default="student-427k")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--block-atoms", type=int, default=None)
    parser.add_argument("--num-warps", type=int, default=None)
    parser.add_argument("--k-chunk", type=int, default=None)
    parser.add_argument("--sweep", action="store_true", help="launch settings sweep: block forward+backward of the kernels on one box (--sizes, first entry)")
    parser.add_argument("--skip-molecules", action="store_true", help="water boxes only")
    parser.add_argument("--skip-block", action="store_true")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--api", action="store_true", help="the public API's implementations, exact and compressed (module docstring)")
    parser.add_argument("--budget-s", type=float, default=270.0, help="--api: skip the remaining cases after this many seconds")
    parser.add_argument("--api-molecules", default="", help="--api: also these molecules (ase names or C60, e.g. C6H6,C60), all-pairs path")
    parser.add_argument("--out", default=None, help="--api: JSON path (default benchmarks/results/bench_api_<device>_<time>.json)")
    args = parser.parse_args()
    if args.api:
        env = ks.environment()
        print(json.dumps(env), flush=True)
        if args.quick and args.sizes == "1000,10000,100000":
            args.sizes, args.repeats = "81", 2
        api_benchmark(args, env, "ultra-tiny-21k" if args.quick and args.model == "student-427k" else args.model)
        return

    interpret = args.quick
    if args.quick:
        sizes, repeats, model_name = [81], 2, "ultra-tiny-21k"
        implementations = ["xla", "pallas"]
    else:
        if jax.default_backend() != "gpu":
            print("# warning: no GPU; timings are of the CPU (use --quick for a smoke test)")
        sizes, repeats, model_name = [int(x) for x in args.sizes.split(",") if x], args.repeats, args.model
        implementations = ["xla", "pallas"]
        try:
            import jax_triton  # noqa: F401

            implementations.append("triton")
        except ImportError:
            pass
    if args.implementations:
        implementations = args.implementations.split(",")
    precisions = (args.precisions or ("highest" if args.quick else "highest,tf32x3,tf32")).split(",")
    launch = {k: v for k, v in (("block_atoms", args.block_atoms), ("num_warps", args.num_warps), ("k_chunk", args.k_chunk)) if v is not None}

    env = ks.environment()
    config, params, source = ks.load_params(model_name, "float32")
    print(json.dumps(env), flush=True)
    print(f"# model {model_name} ({source}); implementations {implementations}; precisions {precisions}", flush=True)
    rows = []
    ks.RESULTS.mkdir(parents=True, exist_ok=True)
    tag = ("quick_" if args.quick else "") + ("sweep_" if args.sweep else "") + env["device"].replace(" ", "_")
    out = ks.RESULTS / f"bench_message_passing_{tag}_{time.strftime('%Y%m%d-%H%M%S')}.json"

    def save():  # after every case: a run cut off by a time limit keeps what it measured
        out.write_text(json.dumps({"environment": env, "model": model_name, "weights": source, "rows": rows}, indent=1))

    def record(row, fn, *fn_args):
        try:
            start = time.perf_counter()
            jax.block_until_ready(fn(*fn_args))
            row["first_call_s"] = round(time.perf_counter() - start, 3)
            row.update(ks.timed(fn, *fn_args, repeats=repeats, warmup=1))
            if row["workload"] == "model energy+forces":
                row["atom_steps_per_s"] = row["atoms"] / row["median_s"]
            print(f"{row['workload']:22s} {row['system']:20s} {row['implementation']:7s} {row['precision']:8s} "
                  f"{1e3 * row['median_s']:10.3f} ms  (min {1e3 * row['min_s']:.3f}, max {1e3 * row['max_s']:.3f})"
                  f"{'  ' + str(row['launch']) if isinstance(row['launch'], dict) else ''}", flush=True)  # fmt: skip
        except Exception as err:  # noqa: BLE001 - record and go on (out of memory, missing backend, ...)
            row["error"] = "".join(traceback.format_exception_only(err))[-2000:]
            print(f"{row['workload']:22s} {row['system']:20s} {row['implementation']:7s} {row['precision']:8s} FAILED: {row['error'][:300]}", flush=True)
        rows.append(row)
        save()

    if args.sweep:
        name, pos, z, nbr, shifts = systems(sizes[:1], True)[-1]
        for impl in [i for i in implementations if i != "xla"]:
            for precision in precisions:
                for block_atoms, num_warps, num_stages, k_chunk in ((16, 8, 1, 16), (16, 4, 1, 16), (32, 8, 1, 16), (32, 4, 1, 16),
                                                                   (64, 8, 1, 16), (16, 8, 2, 16), (16, 8, 1, 32), (32, 8, 1, 32)):
                    sweep_launch = dict(block_atoms=block_atoms, num_warps=num_warps, num_stages=num_stages, k_chunk=k_chunk)
                    case = dict(system=name, atoms=len(pos), capacity=int(nbr.shape[1]), model=model_name, weights=source, dtype="float32",
                                implementation=impl, precision=precision, launch=sweep_launch)  # fmt: skip
                    try:
                        (fwd, fwd_bwd), inputs = block_case(params, config, pos, nbr, shifts, impl, precision, interpret and impl == "pallas", sweep_launch)
                        record(dict(case, workload="block forward"), fwd, *inputs)
                        record(dict(case, workload="block forward+backward"), fwd_bwd, *inputs)
                    except Exception as err:  # noqa: BLE001
                        rows.append(dict(case, workload="block", error="".join(traceback.format_exception_only(err))[-2000:]))
                        print(f"sweep {impl} {precision} {sweep_launch} FAILED: {rows[-1]['error'][:300]}", flush=True)
    for name, pos, z, nbr, shifts in [] if args.sweep else systems(sizes, args.quick, not args.skip_molecules):
        valid = np.asarray(mask_neighbors(jnp.asarray(nbr), None, None)) < len(pos)
        d = np.linalg.norm(pos[np.where(valid, nbr, 0)] - pos[:, None, :] + shifts, axis=-1)
        base = dict(system=name, atoms=len(pos), capacity=int(nbr.shape[1]), edges_within_cutoff=int((valid & (d <= config.cutoff)).sum()),
                    model=model_name, weights=source, dtype="float32", launch=launch or "default")  # fmt: skip
        for impl in implementations:
            for precision in precisions if impl != "xla" else ["highest"] + [p for p in precisions if p != "highest"]:
                case = dict(base, implementation=impl, precision=precision)
                if not args.skip_block:
                    try:
                        (fwd, fwd_bwd), inputs = block_case(params, config, pos, nbr, shifts, impl, precision, interpret and impl == "pallas", launch)
                        record(dict(case, workload="block forward"), fwd, *inputs)
                        record(dict(case, workload="block forward+backward"), fwd_bwd, *inputs)
                    except Exception as err:  # noqa: BLE001
                        rows.append(dict(case, workload="block", error="".join(traceback.format_exception_only(err))[-2000:]))
                if not args.skip_model:
                    record(dict(case, workload="model energy+forces"), model_case(params, config, pos, z, nbr, shifts, impl, precision, interpret and impl == "pallas", launch))

    save()
    print(f"# wrote {out}")


if __name__ == "__main__":
    main()
