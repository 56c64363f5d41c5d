"""Host time per call of a sharded batch (planning, packing, transfers, reassembly), device work excluded.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \\
        python3 benchmarks/bench_batch_host.py --out benchmarks/results/batch_host_cpu4.json   # 4 faked CPU devices
    python3 benchmarks/bench_batch_host.py --out benchmarks/results/batch_host_<machine>.json  # real GPUs

The workload is bench_multi_gpu's strong batch: ``--molecules`` (8,192) water clusters of 3..12
waters (9..36 atoms, ~184k atoms), no cell, tiny-77k (float32). Each phase of
``model.energy_and_forces(R, Z, batch=b)`` that runs on the host is timed on its own with
``perf_counter`` (median of ``--repeats`` after ``--warmup``); the compiled device program is never
run (on CPU it would take tens of seconds and say nothing about the host). The phases:

sharded path (``mlff_jax.parallel.batch``, D devices):
  validate (``model._validate``), plan_shards (balancing + layout), pack_inputs (one host row per
  device), put_sharded (host -> devices, blocked), neighbour_grid (``plan_neighbor_grid``: the
  search grid of the whole batch; the neighbour-list path only), to_host (devices -> host of
  output rows of the real shape, placed on the devices beforehand), unpack_outputs (energies and
  forces in the caller's order).

one-device path (``model._neighbor_evaluate`` -> ``periodic.evaluate``, ``devices=1``): pad,
  cells + plan_grid, transfers of the five inputs (blocked), output slicing and device -> host.

The device program's dispatch (well under a millisecond) and the one blocking wait are not
included. Times are of this machine's CPU; they are not GPU figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def timed(fn, repeats, warmup, setup=None):
    """(last result, median ms) of fn(); ``setup()`` (untimed) makes fn's argument afresh each call."""
    times = []
    for i in range(warmup + repeats):
        arg = () if setup is None else (setup(),)
        t0 = time.perf_counter()
        out = fn(*arg)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return out, float(np.median(times)) * 1e3


def sharded_phases(model, system, devices, repeats, warmup):
    import jax

    from mlff_jax import periodic
    from mlff_jax.evaluation import ALL_PAIRS_MAX_ATOMS, DTYPES
    from mlff_jax.neighbors import cell as cell_lib
    from mlff_jax.parallel import batch as batch_lib
    from mlff_jax.parallel.mesh import device_mesh, put_sharded, to_host

    positions, numbers, batch, _ = system
    ms = {}
    (pos, z, b, num), ms["validate"] = timed(lambda: model._validate(positions, numbers, batch), repeats, warmup)
    mesh = device_mesh(devices)
    plan, ms["plan_shards"] = timed(lambda: batch_lib.plan_shards(b, num, len(devices)), repeats, warmup)
    pbc = cell_lib.normalize_pbc(None, None)
    cells = np.repeat(cell_lib.validate_cells(None, pbc, None), num, axis=0)
    dtype = DTYPES[model.dtype]
    packed, ms["pack_inputs"] = timed(lambda: batch_lib.pack_inputs(plan, pos, z, cells, dtype, model.config.cutoff), repeats, warmup)
    _, ms["put_sharded"] = timed(lambda: jax.block_until_ready(put_sharded(mesh, packed)), repeats, warmup)
    neighbour = plan.n_pad > ALL_PAIRS_MAX_ATOMS
    if neighbour:
        from mlff_jax.neighbors import neighbor_list as nl

        fns = nl.neighbor_list_fn(model.config.cutoff, skin=periodic.LIST_MARGIN, pbc=pbc)
        radius = fns.cutoff + fns.skin
        _, ms["neighbour_grid"] = timed(lambda: batch_lib.plan_neighbor_grid(plan, pos, b, cells, pbc, dtype, radius), repeats, warmup)
    rows = np.zeros((len(devices), plan.b_pad + 3 * plan.n_pad + 1), dtype)
    # Fresh device arrays each time: a jax.Array caches its host copy after the first transfer.
    host_rows, ms["to_host"] = timed(to_host, repeats, warmup, setup=lambda: jax.block_until_ready(put_sharded(mesh, rows)))
    _, ms["unpack_outputs"] = timed(lambda: batch_lib.unpack_outputs(host_rows, plan), repeats, warmup)
    ms["total"] = sum(ms.values())
    return {"ms": ms, "n_pad": plan.n_pad, "b_pad": plan.b_pad, "neighbour_list_path": bool(neighbour)}


def one_device_phases(model, system, repeats, warmup):
    """The host steps of ``_neighbor_evaluate`` / ``periodic.evaluate`` for a batch without cell."""
    import jax
    import jax.numpy as jnp

    from mlff_jax import periodic
    from mlff_jax.model import bucket_size
    from mlff_jax.neighbors import cell as cell_lib
    from mlff_jax.neighbors import neighbor_list as nl

    positions, numbers, batch, _ = system
    ms = {}
    (pos, z, b, num), ms["validate"] = timed(lambda: model._validate(positions, numbers, batch), repeats, warmup)
    n = len(pos)
    n_pad, b_pad = bucket_size(n), 1 << max(num - 1, 0).bit_length()

    def pad():
        p = np.zeros((n_pad, 3))
        p[:n] = pos
        zz = np.ones(n_pad, np.int32)
        zz[:n] = z
        bb = np.zeros(n_pad, np.int64)
        bb[:n] = b
        return p, zz, np.arange(n_pad) < n, bb

    (p, zz, mask, bb), ms["pad"] = timed(pad, repeats, warmup)
    fns = nl.neighbor_list_fn(model.config.cutoff, skin=periodic.LIST_MARGIN, pbc=(False, False, False))

    def plan():
        pbc = cell_lib.normalize_pbc(None, None)
        cells = cell_lib.validate_cells(None, pbc, None)
        cells = np.repeat(cells, b_pad, axis=0)
        return cells, nl.plan_lib.plan_grid(p[mask], cells, bb[mask], b_pad, pbc, fns.cutoff + fns.skin)

    (cells, _), ms["cells_and_plan_grid"] = timed(plan, repeats, warmup)
    dtype = model.params["embedding"]["embedding"].dtype
    args, ms["transfers_in"] = timed(lambda: jax.block_until_ready((jnp.asarray(p, dtype), jnp.asarray(zz), jnp.asarray(mask),
                                                                    jnp.asarray(bb, jnp.int32), jnp.asarray(cells, dtype))), repeats, warmup)
    outputs = lambda: jax.block_until_ready((jnp.ones(b_pad, dtype), jnp.ones((n_pad, 3), dtype)))  # noqa: E731 (fresh arrays)
    _, ms["slice_and_to_host"] = timed(lambda out: (np.asarray(out[0][:num]), np.asarray(out[1][:n])), repeats, warmup, setup=outputs)
    ms["total"] = sum(ms.values())
    return {"ms": ms, "n_pad": n_pad, "b_pad": b_pad}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--molecules", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    import jax

    import mlff_jax
    from bench_multi_gpu import cluster_batch, default_checkpoint
    from common import environment, write_json

    checkpoint = args.checkpoint or default_checkpoint()
    model = mlff_jax.load(checkpoint, dtype="float32")
    system = cluster_batch(args.molecules, (3, 12), seed=0)
    devices = jax.devices()
    result = {"environment": environment(), "checkpoint": os.path.basename(str(checkpoint)), "molecules": args.molecules,
              "atoms": int(len(system[0])), "devices": len(devices), "note": "host time only (ms, median); device work excluded"}
    if len(devices) > 1:
        result["sharded"] = sharded_phases(model, system, devices, args.repeats, args.warmup)
        print("sharded over", len(devices), "devices:", {k: round(v, 2) for k, v in result["sharded"]["ms"].items()}, flush=True)
    result["one_device"] = one_device_phases(model, system, args.repeats, args.warmup)
    print("one device:", {k: round(v, 2) for k, v in result["one_device"]["ms"].items()}, flush=True)
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
