"""Error of compressed (tabulated) radial filters vs grid spacing, upstream reference set, CPU.

    python3 benchmarks/compress_error_curve.py --out benchmarks/results/compress_error_curve.json

For each model and spacing, over every reference structure (all in one batched call; structures
never interact):

- the table error alone: the largest force error (eV/Å) and energy error per atom (eV) of the
  compressed model against the uncompressed one, both in float64;
- what a float32 user gets: the largest force error of the compressed float32 model against
  upstream's float64 forces, built and run with JAX's 64-bit mode off (``float32_*`` keys), next to
  the exact float32 model's (one row per model with ``spacing_A`` None);
- the tables' size in float32 (all blocks, MB).

Runs on CPU (float32 on CPU is a proxy for the GPU: same formulas, other summation order).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, write_json  # noqa: E402

SPACINGS = [0.05, 0.02, 0.01, 0.008, 0.005, 0.004, 0.002, 0.001]
MODELS = ["ultra-tiny-21k", "tiny-77k", "student-427k"]


def reference_batch(ref):
    """(positions [N, 3], numbers [N], batch [N], energies [B], forces [N, 3]) of every structure."""
    names = sorted({k.split("__")[0] for k in ref.files} - {"batch"})
    batch = np.concatenate([np.full(len(ref[n + "__Z"]), i) for i, n in enumerate(names)])
    cat = lambda key: np.concatenate([ref[n + key] for n in names])
    return cat("__R"), cat("__Z"), batch, np.array([float(ref[n + "__E_f64"]) for n in names]), cat("__F_f64")


def float32_errors(model32, positions, numbers, batch, energies, forces):
    """(max force error eV/Å, max energy error eV/atom) of a float32 model vs upstream float64, 64-bit mode off."""
    with jax.enable_x64(False):
        e, f = model32.energy_and_forces(positions, numbers, batch=batch)
    return float(np.abs(np.asarray(f, np.float64) - forces).max()), float((np.abs(np.asarray(e, np.float64) - energies) / np.bincount(batch)).max())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "upstream"),
                   help="folder with checkpoints/ and reference/ (default: the vendored tests/data/upstream)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--spacings", default=",".join(map(str, SPACINGS)), help="Å, comma-separated")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    import mlff_jax

    rows = []
    for name in args.models.split(","):
        ref = np.load(os.path.join(args.upstream, "reference", f"{name}.npz"))
        checkpoint = os.path.join(args.upstream, "checkpoints", f"{name}.model.pt")
        positions, numbers, batch, energies, forces = reference_batch(ref)
        model = mlff_jax.load(checkpoint, dtype="float64")
        with jax.enable_x64(False):
            model32 = mlff_jax.load(checkpoint, dtype="float32")
        f32, e32 = float32_errors(model32, positions, numbers, batch, energies, forces)
        rows.append({"model": name, "spacing_A": None, "float32_max_force_error_vs_upstream_f64_eV_A": f32,
                     "float32_max_energy_error_vs_upstream_f64_eV_atom": e32})  # fmt: skip
        print(rows[-1], flush=True)
        exact_e, exact_f = model.energy_and_forces(positions, numbers, batch=batch)
        for spacing in (float(s) for s in args.spacings.split(",")):
            compressed = model.compress(spacing)
            e, f = compressed.energy_and_forces(positions, numbers, batch=batch)
            with jax.enable_x64(False):
                compressed32 = model32.compress(spacing)
            f32, e32 = float32_errors(compressed32, positions, numbers, batch, energies, forces)
            tables = [v["filter_table"]["coefficients"] for k, v in compressed32.params.items() if k.startswith("interactions_")]
            row = {"model": name, "spacing_A": spacing, "intervals": int(tables[0].shape[0]),
                   "max_force_error_eV_A": float(np.abs(np.asarray(f) - np.asarray(exact_f)).max()),
                   "max_energy_error_eV_atom": float((np.abs(np.asarray(e) - np.asarray(exact_e)) / np.bincount(batch)).max()),
                   "float32_max_force_error_vs_upstream_f64_eV_A": f32, "float32_max_energy_error_vs_upstream_f64_eV_atom": e32,
                   "float32_table_MB": sum(t.size for t in tables) * 4 / 1e6}  # fmt: skip
            rows.append(row)
            print(row, flush=True)
    write_json(args.out, {"environment": environment(), "rows": rows})


if __name__ == "__main__":
    main()
