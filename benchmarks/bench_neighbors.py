"""Neighbour-list build time: periodic water boxes of 1k to 1M atoms at a 5 Å cutoff.

Compares our cell list (XLA gather and the Pallas kernel) with ``jax_md.partition.neighbor_list``
(Dense format, cell list), each rebuilt from scratch on every call: the timed call is a jitted
``update`` on positions that alternate between two copies 1e-4 Å apart, with a skin of 0, so
every call rebuilds (checked). Every (method, size) runs in its own subprocess, so that the peak
device memory is its own and an out-of-memory failure is recorded instead of ending the run.

GPU (the numbers to report):
    python benchmarks/bench_neighbors.py
CPU smoke run (small box, few repeats; Pallas in interpret mode):
    python benchmarks/bench_neighbors.py --quick

JAX-MD is optional (``pip install jax-md==0.2.29``); without it its rows are skipped. Results go
to ``benchmarks/results/neighbors_<device>_<date>.json`` with device, versions, git commit,
command, medians and spreads. Published H100 reference (NVIDIA Warp cell list): 0.88 ms at
32,768 atoms, 6.7 ms at 131,072 atoms.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
ATOMS_PER_A3 = 3 / 29.915  # liquid water at 0.997 g/cm^3
WATER = np.array([[0.0, 0.0, 0.0], [0.7570, 0.0, 0.5859], [-0.7570, 0.0, 0.5859]])  # O, H, H (Å)
PUBLISHED_MS = {"NVIDIA Warp cell list, H100": {"32768": 0.88, "131072": 6.7}}


def water_box(num_atoms: int, seed: int = 0):
    """A cubic box of liquid-water density: randomly oriented molecules on random lattice sites,
    truncated to exactly ``num_atoms`` atoms. Returns (positions [N, 3] Å in [0, L), L Å)."""
    rng = np.random.default_rng(seed)
    side = (num_atoms / ATOMS_PER_A3) ** (1 / 3)
    molecules = -(-num_atoms // 3)
    per_side = int(np.ceil(molecules ** (1 / 3)))
    sites = rng.choice(per_side**3, molecules, replace=False)
    grid = np.stack(np.unravel_index(sites, (per_side,) * 3), axis=1)
    centres = (grid + 0.5 + rng.normal(scale=0.05, size=grid.shape)) * side / per_side
    q, r = np.linalg.qr(rng.normal(size=(molecules, 3, 3)))
    rotations = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    positions = (centres[:, None, :] + np.einsum("ak,mjk->maj", WATER, rotations)).reshape(-1, 3)[:num_atoms]
    return np.mod(positions, side), side


def _git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _versions() -> dict:
    import jax
    import jaxlib

    versions = {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": np.__version__}
    try:
        import importlib.metadata

        import jax_md  # noqa: F401 (must import, not just be installed)

        versions["jax_md"] = importlib.metadata.version("jax-md")
    except Exception:  # noqa: BLE001 (absent or broken: the rows are skipped)
        versions["jax_md"] = None
    return versions


def _memory(compiled) -> dict:
    """XLA's buffer assignment of the timed program, plus the device's peak if it reports one."""
    import jax

    out = {}
    try:
        analysis = compiled.memory_analysis()
        for name in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes"):
            out[name] = int(getattr(analysis, name))
    except Exception as error:  # noqa: BLE001
        out["memory_analysis_error"] = str(error)[:200]
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
    return out


def _time(update, states, nbrs, warmup, repeats, rebuilt):
    import jax

    for k in range(warmup):
        nbrs = update(states[k % 2], nbrs)
    jax.block_until_ready(nbrs)
    times = []
    for k in range(repeats):
        start = time.perf_counter()
        nbrs = update(states[(warmup + k) % 2], nbrs)
        jax.block_until_ready(nbrs)
        times.append(time.perf_counter() - start)
        if not rebuilt(nbrs, states[(warmup + k) % 2]):
            raise RuntimeError("the timed call did not rebuild the list")
    return np.array(times) * 1e3, nbrs


def run_worker(method: str, num_atoms: int, cutoff: float, warmup: int, repeats: int) -> dict:
    """One (method, size) measurement in this process."""
    import jax
    import jax.numpy as jnp

    positions, side = water_box(num_atoms)
    nudged = np.mod(positions + 1e-4, side)
    states = [jnp.asarray(positions, jnp.float32), jnp.asarray(nudged, jnp.float32)]
    row = {"method": method, "atoms": num_atoms, "box_A": side}
    start = time.perf_counter()
    if method.startswith("ours"):
        sys.path.insert(0, str(ROOT))
        from mlff_jax import neighbors

        implementation = method.split("-", 1)[1]
        interpret = implementation == "pallas" and jax.default_backend() == "cpu"
        fn = neighbors.neighbor_list_fn(cutoff, skin=0.0, cell=np.eye(3) * side, method="cell_list", implementation=implementation, interpret=interpret)
        nbrs = fn.allocate(states[0])
        row.update(grid=nbrs.spec.grid, bin_capacity=nbrs.spec.bin_capacity, capacity=nbrs.capacity, interpret=interpret)
        update = jax.jit(fn.update)
        rebuilt = lambda n, r: bool(jnp.all(n.reference_positions == r))  # noqa: E731
        pairs = lambda n: int(jnp.sum(n.mask))  # noqa: E731
        overflow = lambda n: bool(n.did_buffer_overflow)  # noqa: E731
    elif method == "jax-md":
        from jax_md import partition, space

        displacement, _ = space.periodic(side)
        neighbor_fn = partition.neighbor_list(displacement, side, cutoff, dr_threshold=0.0, capacity_multiplier=1.25, format=partition.Dense)
        nbrs = neighbor_fn.allocate(states[0])
        row.update(capacity=int(nbrs.idx.shape[1]))
        update = jax.jit(neighbor_fn.update)
        rebuilt = lambda n, r: bool(jnp.all(n.reference_position == r))  # noqa: E731
        pairs = lambda n: int(jnp.sum(n.idx < num_atoms))  # noqa: E731
        overflow = lambda n: bool(n.did_buffer_overflow)  # noqa: E731
    else:
        raise ValueError(f"unknown method {method!r}")
    jax.block_until_ready(nbrs)
    row["allocate_s"] = time.perf_counter() - start
    start = time.perf_counter()
    compiled = update.lower(states[1], nbrs).compile()
    row["compile_s"] = time.perf_counter() - start
    times, nbrs = _time(update, states, nbrs, warmup, repeats, rebuilt)
    if overflow(nbrs):
        raise RuntimeError("neighbour list overflowed during timing")
    row.update(
        pairs=pairs(nbrs),
        median_ms=float(np.median(times)),
        iqr_ms=float(np.percentile(times, 75) - np.percentile(times, 25)),
        min_ms=float(times.min()),
        max_ms=float(times.max()),
        times_ms=[round(float(t), 4) for t in times],
        memory=_memory(compiled),
    )
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 32768, 131072, 1048576])
    parser.add_argument("--methods", type=lambda s: s.split(","), default=["ours-xla", "ours-pallas", "jax-md"])
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=400.0, help="seconds per (method, size) subprocess")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: 1,024 atoms, 3 repeats")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.warmup, args.repeats = [1024], 1, 3
    if args.worker:
        print("RESULT " + json.dumps(run_worker(args.methods[0], args.sizes[0], args.cutoff, args.warmup, args.repeats)))
        return

    import jax

    device = jax.devices()[0]
    versions = _versions()
    methods = [m for m in args.methods if m != "jax-md" or versions["jax_md"]]
    skipped = [m for m in args.methods if m not in methods]
    report = {
        "benchmark": "neighbor_list_build",
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "git_commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": {"platform": device.platform, "kind": device.device_kind, "count": jax.device_count()},
        "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
        "versions": versions,
        "cutoff_A": args.cutoff,
        "skin_A": 0.0,
        "dtype": "float32",
        "protocol": "jitted update on positions alternating between two copies 1e-4 Å apart (skin 0): a full rebuild per call; "
                    f"{args.warmup} warm-up calls, then {args.repeats} timed calls with block_until_ready; one subprocess per row",
        "skipped_methods": skipped,
        "published_reference_ms": PUBLISHED_MS,
        "results": [],
    }
    print(f"device: {device.device_kind} ({device.platform}); jax {versions['jax']}; jax-md {versions['jax_md']}", flush=True)
    for n in args.sizes:
        for method in methods:
            command = [sys.executable, __file__, "--worker", "--methods", method, "--sizes", str(n), "--cutoff", str(args.cutoff),
                       "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
                lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if done.returncode or not lines:
                    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                    row = {"method": method, "atoms": n, "error": " | ".join(tail)[-600:]}
                else:
                    row = json.loads(lines[-1][len("RESULT "):])
            except subprocess.TimeoutExpired:
                row = {"method": method, "atoms": n, "error": f"timeout after {args.timeout} s"}
            report["results"].append(row)
            if "error" in row:
                print(f"{method:12s} {n:>9,d} atoms  FAILED: {row['error'][:200]}", flush=True)
            else:
                mem = row["memory"].get("device_peak_bytes_in_use", row["memory"].get("temp_size_in_bytes", 0)) / 2**20
                print(f"{method:12s} {n:>9,d} atoms  {row['median_ms']:9.3f} ms (IQR {row['iqr_ms']:.3f})  pairs {row['pairs']:,}  "
                      f"mem {mem:,.0f} MiB", flush=True)
    pairs = {}
    for row in report["results"]:
        if "pairs" in row:
            pairs.setdefault(row["atoms"], set()).add(row["pairs"])
    report["pair_counts_agree"] = all(len(v) == 1 for v in pairs.values())
    out = args.out
    if out is None:
        kind = re.sub(r"[^A-Za-z0-9]+", "-", device.device_kind).strip("-").lower()
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = ROOT / "benchmarks" / "results" / f"neighbors_{kind}_{'quick_' if args.quick else ''}{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"pair counts agree across methods: {report['pair_counts_agree']}\nwrote {out}")


if __name__ == "__main__":
    main()
