"""CPU, one core: energy + forces of one ethanol molecule per call, mlff-jax vs PyTorch eager.

    python3 benchmarks/bench_cpu.py --out benchmarks/results/cpu_ethanol_427k.json
    python3 benchmarks/bench_cpu.py --torch-python /path/to/venv-with-torch/bin/python --out ...

One core: the process pins itself to CPU 0 (as ``taskset -c 0`` would) and XLA runs single-threaded
(``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``); PyTorch runs with
``torch.set_num_threads(1)`` on the same core. Each row is the median over ``--repeats`` calls of
``model.energy_and_forces(positions, atomic_numbers)`` from Python (host arrays in, forces back),
after warm-up (compilation), timed two ways: the process CPU time of a call (all threads; what the
call costs one core, and what a quiet core would see) and its wall time (which, on a shared machine,
also counts the time other processes hold the core). The whole measurement is repeated ``--rounds``
times; the JSON keeps every round and the median of the round medians, and the machine's load
average before and after.

PyTorch is optional (the package never imports it): with ``--torch-python`` the PyTorch rows are
measured in a subprocess of that interpreter, with benchmarks/torch_student.py (eager, autograd forces).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO / "tests" / "data" / "upstream" / "checkpoints" / "student-427k.model.pt"
SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def pin_to_one_core() -> None:
    """Pins this process (and the threads it starts later) to CPU 0, as ``taskset -c 0`` does."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})


def ethanol():
    """(positions [9, 3] Å, atomic_numbers [9]) of ase's g2 ethanol."""
    import numpy as np
    from ase.build import molecule

    atoms = molecule("CH3CH2OH")
    return np.asarray(atoms.positions, np.float64), np.asarray(atoms.numbers, np.int64)


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def time_call(call, repeats: int, warmup: int = 5) -> dict:
    """Medians (and minima) of the process CPU time and the wall time of ``call()``, in µs."""
    import time

    import numpy as np

    for _ in range(warmup):
        call()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        call()
        cpu.append((time.process_time() - c0) * 1e6)
        wall.append((time.perf_counter() - w0) * 1e6)
    return {"cpu_median_us": float(np.median(cpu)), "cpu_min_us": float(np.min(cpu)),
            "wall_median_us": float(np.median(wall)), "wall_min_us": float(np.min(wall)), "repeats": repeats}


def torch_worker(checkpoint: str, structure: str, repeats: int) -> dict:
    """Runs inside an interpreter with torch (ase not needed): medians of PyTorch eager energy +
    autograd forces of the structure in the ``structure`` .npz (``positions``, ``numbers``)."""
    import numpy as np
    import torch

    from torch_student import TorchPaiNN, energy_and_forces

    torch.set_num_threads(1)
    with np.load(structure) as data:
        positions, numbers = data["positions"], data["numbers"]
    rows = {}
    for dtype in (torch.float32, torch.float64):
        model = TorchPaiNN.from_checkpoint(checkpoint).to(dtype)
        z = torch.as_tensor(numbers)

        def call():
            return energy_and_forces(model, torch.as_tensor(positions, dtype=dtype), z)

        energy, forces = call()
        rows[str(dtype).removeprefix("torch.")] = {
            **time_call(call, repeats),
            "energy_eV": float(energy),
            "forces_eV_per_A": np.asarray(forces.detach()).tolist(),
        }
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}


def jax_rows(checkpoint: str, repeats: int, sync_dispatch: bool = False) -> dict:
    import jax
    import numpy as np

    import mlff_jax

    jax.config.update("jax_enable_x64", True)
    if sync_dispatch:  # run each computation in the calling thread: no hand-off between two threads on one core
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    positions, numbers = ethanol()
    rows = {}
    for dtype in ("float32", "float64"):
        model = mlff_jax.load(checkpoint, dtype=dtype)
        for method in ("analytic", "autodiff"):
            def call(m=model, method=method):
                return jax.block_until_ready(m.energy_and_forces(positions, numbers, method=method))

            energy, forces = call()
            rows[f"{dtype}-{method}"] = {
                **time_call(call, repeats),
                "energy_eV": float(energy),
                "forces_eV_per_A": np.asarray(forces).tolist(),
            }
    return {"jax": jax.__version__, "backend": jax.default_backend(), "sync_dispatch": sync_dispatch, "rows": rows}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="model file (default: the vendored upstream 427K model save)")
    p.add_argument("--out", default=None, help="JSON to write (default: print only)")
    p.add_argument("--repeats", type=int, default=200, help="calls per round")
    p.add_argument("--rounds", type=int, default=3, help="independent rounds (the JSON keeps each; the summary is their median)")
    p.add_argument("--sync-dispatch", action="store_true", help="jax_cpu_enable_async_dispatch=False (JAX computes in the calling thread)")
    p.add_argument("--torch-python", default=None, help="an interpreter with torch installed: adds the PyTorch eager rows")
    p.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)  # the structure .npz, for the subprocess
    args = p.parse_args(argv)

    pin_to_one_core()
    if args.torch_worker:
        print(json.dumps(torch_worker(args.checkpoint, args.torch_worker, args.repeats)))
        return

    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD_XLA_FLAGS).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import tempfile

    import numpy as np

    from common import environment, write_json

    structure = os.path.join(tempfile.mkdtemp(), "ethanol.npz")
    positions, numbers = ethanol()
    np.savez(structure, positions=positions, numbers=numbers)
    load_before = os.getloadavg()
    rounds = []
    for _ in range(args.rounds):
        result = {"jax": jax_rows(args.checkpoint, args.repeats, args.sync_dispatch)}
        if args.torch_python:
            out = subprocess.check_output(
                [args.torch_python, __file__, "--torch-worker", structure, "--checkpoint", args.checkpoint, "--repeats", str(args.repeats)], text=True
            )
            result["torch"] = json.loads(out.strip().splitlines()[-1])
        rounds.append(result)
        print({k: {r: (round(v["cpu_median_us"]), round(v["wall_median_us"])) for r, v in part["rows"].items()} for k, part in result.items()})

    summary = {}
    for framework in rounds[0]:
        for row in rounds[0][framework]["rows"]:
            entry = {}
            for clock in ("cpu", "wall"):
                medians = [r[framework]["rows"][row][f"{clock}_median_us"] for r in rounds]
                entry[f"{clock}_median_of_rounds_us"] = float(np.median(medians))
                entry[f"{clock}_round_medians_us"] = medians
            summary[f"{framework}-{row}"] = entry
    # the frameworks compute the same model: their forces must agree (float64 rows)
    if args.torch_python:
        f_jax = np.asarray(rounds[0]["jax"]["rows"]["float64-analytic"]["forces_eV_per_A"])
        f_torch = np.asarray(rounds[0]["torch"]["rows"]["float64"]["forces_eV_per_A"])
        summary["max_force_difference_jax_vs_torch_float64_eV_per_A"] = float(np.abs(f_jax - f_torch).max())
    payload = {
        "benchmark": "CPU, one core, ethanol (9 atoms), energy_and_forces per call from Python",
        "checkpoint": os.path.relpath(args.checkpoint, REPO) if args.checkpoint.startswith(str(REPO)) else os.path.basename(args.checkpoint),
        "environment": environment(),
        "machine": machine(),
        "single_core": {"affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None, "xla_flags": os.environ["XLA_FLAGS"]},
        "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
        "summary": summary,
        "rounds": rounds,
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        write_json(args.out, payload)


if __name__ == "__main__":
    main()
