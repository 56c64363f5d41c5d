"""Kernel launches per MD step and per energy+forces call, counted from a ``jax.profiler`` trace.

    PYTHONPATH=$PWD python3 benchmarks/count_launches.py --out benchmarks/results/launches_<device>.json

For each model (default: the upstream-shaped 427K and 77K students, float32) and each message-passing
implementation (``--implementations``, default ``auto``):

- ``md_step``: the package's compiled MD loop (``md.nve`` + ``md.trajectory_chunk``, one frame per
  chunk) on benzene, with the default guards and without them. Two chunks of S1 and S2 steps are
  traced (``--steps``); per step = (count(S2) - count(S1)) / (S2 - S1), so the chunk's fixed work
  (frame record, guard summary, the call itself) is reported apart as ``per_chunk_fixed``;
- ``energy_and_forces_call``: the host call's compiled program (what ``model.energy_and_forces(R, Z)``
  runs) on device-resident padded input, ``--calls`` calls traced; per call = count / calls.

What is counted, per device plane of the trace:

- on a GPU: every event on the stream lines of ``/device:GPU:N`` (the lines the profiler derives
  from them, such as "XLA Ops", are skipped), split into ``kernels`` (events with kernel details, or
  any other event not a copy or a memset), ``memcpy`` and ``memset``; plus, from the host planes,
  the CUDA launch API calls (``cuLaunchKernel``, ``cuGraphLaunch``, ...) as ``host_launch_calls``:
  with command buffers (CUDA graphs) one graph launch runs many kernels;
- on a CPU (no device plane): the XLA CPU runtime's thunks on the host plane (one event per
  executed operation, the events that carry an ``hlo_op``; a loop's own thunk counts once per
  loop), reported as ``kernels``. CPU counts show the method works and how many operations a step runs; the launch
  target is a GPU figure.

The issue's target is ``2 * num_interactions + 4`` kernel launches per MD step; each row records it.
The JSON holds the device, versions, command, the counts per step or call, and the kernel names with
their counts per step or call.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, write_json  # noqa: E402

CHECKPOINTS = {
    "student-427k": "tests/data/upstream/checkpoints/student-427k.model.pt",
    "tiny-77k": "tests/data/upstream/checkpoints/tiny-77k.model.pt",
}
# Lines of a GPU device plane that the profiler derives from the stream lines (counting them too
# would count every kernel twice).
DERIVED_LINES = {"XLA Modules", "XLA Ops", "Async XLA Ops", "Steps", "TensorFlow Ops", "TensorFlow Name Scope", "Launch Stats", "Source code",
                 "SparseCore Ops", "SparseCore Modules"}  # fmt: skip
HOST_LAUNCH_API = re.compile(r"^cu(da)?(LaunchKernel|LaunchKernelEx|LaunchCooperativeKernel|GraphLaunch|LaunchHostFunc)(_v\d+)?(_ptsz)?$")


# ----------------------------------------------------------------------------- trace parsing
def _stats(event) -> dict:
    try:
        return dict(event.stats)
    except Exception:  # a stat the binding cannot convert: only its presence matters here
        return {}


def classify_gpu_event(name: str, stats: dict) -> str:
    """"kernel" | "memcpy" | "memset" for one event of a GPU stream line."""
    if "memcpy_details" in stats or name.lower().startswith("memcpy"):
        return "memcpy"
    if "memset_details" in stats or name.lower().startswith("memset"):
        return "memset"
    return "kernel"


def count_trace(path: str) -> dict:
    """Counts of one .xplane.pb: {"kernels": n, "memcpy": n, "memset": n, "host_launch_calls": n,
    "names": Counter of kernel names, "source": "gpu-streams" | "cpu-thunks"}."""
    import jax

    data = jax.profiler.ProfileData.from_file(path)
    counts = {"kernels": 0, "memcpy": 0, "memset": 0, "host_launch_calls": 0}
    names: collections.Counter = collections.Counter()
    device_planes = [p for p in data.planes if p.name.startswith("/device:GPU:") or p.name.startswith("/device:ROCM:")]
    for plane in device_planes:
        for line in plane.lines:
            if line.name in DERIVED_LINES:
                continue
            for event in line.events:
                kind = classify_gpu_event(event.name, _stats(event))
                counts[kind if kind != "kernel" else "kernels"] += 1
                if kind == "kernel":
                    names[event.name] += 1
    for plane in data.planes:
        if plane.name.startswith("/host:"):
            for line in plane.lines:
                counts["host_launch_calls"] += sum(1 for e in line.events if HOST_LAUNCH_API.match(e.name))
    source = "gpu-streams"
    if not device_planes and jax.default_backend() != "cpu":
        raise RuntimeError(f"{path} has no GPU device plane (planes: {[p.name for p in data.planes]}): "
                           "the profiler could not trace the device (is CUPTI, libcupti.so, loadable?)")  # fmt: skip
    if not device_planes:  # CPU: the runtime's thunks, whichever thread ran them (they carry their HLO op)
        source = "cpu-thunks"
        for plane in data.planes:
            if plane.name != "/host:CPU":
                continue
            for line in plane.lines:
                for event in line.events:
                    op = _stats(event).get("hlo_op")
                    if op is not None:
                        counts["kernels"] += 1
                        names[str(op)] += 1
    return dict(counts, names=names, source=source)


def traced(fn, repeats: int) -> dict:
    """Counts of ``repeats`` calls of ``fn`` (compiled and warmed up before the trace starts)."""
    import jax

    jax.block_until_ready(fn())
    jax.block_until_ready(fn())
    log_dir = tempfile.mkdtemp(prefix="mlff_jax_trace_")
    jax.profiler.start_trace(log_dir)
    try:
        for _ in range(repeats):
            jax.block_until_ready(fn())
    finally:
        jax.profiler.stop_trace()
    files = sorted(glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True))
    if not files:
        raise RuntimeError(f"the profiler wrote no .xplane.pb under {log_dir}")
    return count_trace(files[-1])


def _per(counts: dict, divisor: float) -> dict:
    out = {k: counts[k] / divisor for k in ("kernels", "memcpy", "memset", "host_launch_calls")}
    out["names"] = {name: n / divisor for name, n in counts["names"].most_common()}
    return out


def _difference(long: dict, short: dict, steps: int) -> dict:
    """Per-step counts from two traces of chunks that differ by ``steps`` steps."""
    out = {k: (long[k] - short[k]) / steps for k in ("kernels", "memcpy", "memset", "host_launch_calls")}
    names = collections.Counter(long["names"])
    names.subtract(short["names"])
    out["names"] = {name: n / steps for name, n in names.most_common() if n}
    return out


# ----------------------------------------------------------------------------- workloads
def benzene():
    from ase.data import atomic_masses

    from mlff_jax.data import example

    atoms = example("benzene")
    return np.asarray(atoms.positions, np.float64), np.asarray(atoms.numbers), atomic_masses[atoms.numbers]


def md_counts(model, positions, numbers, masses, steps: tuple[int, int], guards: bool, chunks: int) -> dict:
    """Per-step and per-chunk counts of the compiled MD loop (NVE, one frame per chunk)."""
    import jax

    from mlff_jax import md

    init_fn, step_fn = md.nve(md.model_potential(model, numbers), 0.5)
    dtype = np.dtype(model.dtype)
    state = init_fn(positions.astype(dtype), masses.astype(dtype), key=jax.random.key(0), temperature=300.0)
    traces = {}
    for s in steps:
        chunk = md.trajectory_chunk(step_fn, s, 1, guards=md.Guards() if guards else None)
        traces[s] = traced(lambda chunk=chunk: chunk(state), chunks)
    short, long = steps
    per_step = _difference(traces[long], traces[short], (long - short) * chunks)
    fixed = {k: traces[short][k] / chunks - short * per_step[k] for k in ("kernels", "memcpy", "memset", "host_launch_calls")}
    return {"per_step": per_step, "per_chunk_fixed": fixed, "steps_traced": list(steps), "chunks_per_trace": chunks,
            "source": traces[long]["source"], "totals": {str(s): {k: v for k, v in t.items() if k != "names"} for s, t in traces.items()}}  # fmt: skip


def call_counts(model, positions, numbers, calls: int) -> dict:
    """Per-call counts of the host call's compiled program on device-resident padded input."""
    import jax

    from mlff_jax import evaluation

    n = len(numbers)
    n_pad = evaluation.bucket_size(n)
    centred = evaluation.prepare_positions(positions, np.zeros(n, np.int64), 1)
    packed = jax.device_put(evaluation.pack_molecules(centred, numbers, np.zeros(n, np.int64), n_pad, np.dtype(model.dtype), model.config.cutoff))
    params = jax.device_put(model.params)
    executable = model._executable(n_pad, 1, "analytic")
    counts = traced(lambda: executable(params, packed), calls)
    return dict(_per(counts, calls), calls_traced=calls, source=counts["source"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON output path (benchmarks/results/...)")
    parser.add_argument("--models", default="student-427k,tiny-77k", help=f"comma list of {', '.join(CHECKPOINTS)} or checkpoint paths")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--implementations", default="auto", help="comma list of auto,xla,pallas,triton")
    parser.add_argument("--steps", default="10,60", help="the two chunk lengths S1,S2 (steps per chunk) traced for the MD loop")
    parser.add_argument("--chunks", type=int, default=3, help="chunks traced per length")
    parser.add_argument("--calls", type=int, default=20, help="energy+forces calls traced")
    args = parser.parse_args(argv)

    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import mlff_jax

    steps = tuple(int(s) for s in args.steps.split(","))
    if len(steps) != 2 or not 0 < steps[0] < steps[1]:
        raise SystemExit(f"--steps needs two lengths S1 < S2, got {args.steps!r}")
    positions, numbers, masses = benzene()
    payload = {"benchmark": "count_launches", "environment": environment(), "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
               "dtype": args.dtype, "system": "benzene_12", "rows": []}  # fmt: skip
    for name in args.models.split(","):
        base = mlff_jax.load(CHECKPOINTS.get(name, name), dtype=args.dtype)
        blocks = base.config.num_interactions
        for implementation in args.implementations.split(","):
            model = base if implementation == "auto" else base.with_implementation(implementation)
            row = {"model": name, "parameters": base.config.num_parameters, "num_interactions": blocks, "implementation": implementation,
                   "runs": model.message_implementation(len(numbers)), "target_launches_per_step": 2 * blocks + 4}  # fmt: skip
            row["energy_and_forces_call"] = call_counts(model, positions, numbers, args.calls)
            for guards in (True, False):
                row["md_step_guards" if guards else "md_step_no_guards"] = md_counts(model, positions, numbers, masses, steps, guards, args.chunks)
            payload["rows"].append(row)
            print(summary_line(row), flush=True)
            write_json(args.out, payload)  # after every row: a run cut short keeps what it counted


def summary_line(row: dict) -> str:
    md_on, md_off, call = row["md_step_guards"]["per_step"], row["md_step_no_guards"]["per_step"], row["energy_and_forces_call"]
    return (f"{row['model']} [{row['implementation']} -> {row['runs']}]: MD step {md_on['kernels']:.1f} kernels "
            f"({md_off['kernels']:.1f} without guards; target {row['target_launches_per_step']}), {md_on['memcpy']:.1f} copies, "
            f"{md_on['host_launch_calls']:.1f} host launch calls; energy+forces call {call['kernels']:.1f} kernels, "
            f"{call['host_launch_calls']:.1f} host launch calls")


if __name__ == "__main__":
    main()
