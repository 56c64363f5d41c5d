"""Float32 force error against float64 as a function of how far the atoms sit from the origin.

    python3 benchmarks/float32_offset_error.py --checkpoint tiny-77k.model.pt --out benchmarks/results/float32_offset_error_cpu.json

A periodic water box (3,000 atoms) is shifted by a constant offset (the physics is unchanged:
float64 forces agree to ~1e-12 eV/Å at every offset) and evaluated in float32 and float64. Float32
edge vectors are differences of absolute coordinates, whose rounding (ulp 1.5e-5 Å at 200 Å, 8 Å at
1e8 Å) would grow with the coordinates; host calls therefore wrap periodic structures into their
cell (and centre molecules) in float64 before the cast, so the float32 error should stay at the level
of the box at the origin for every offset. Runs on the CPU in a few minutes.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, write_json  # noqa: E402
from systems import water_box  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--offsets", default="0,50,100,200,1e5,1e8", help="Å, comma-separated")
    args = p.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    import mlff_jax

    pos, z, cell = water_box(1000)
    m64 = mlff_jax.load(args.checkpoint, dtype="float64")
    m32 = mlff_jax.load(args.checkpoint, dtype="float32")
    _, f_origin = m64.energy_and_forces(pos, z, cell=cell)
    rows = []
    for offset in [float(x) for x in args.offsets.split(",")]:
        shifted = pos + offset
        _, f32 = m32.energy_and_forces(shifted, z, cell=cell)
        _, f64 = m64.energy_and_forces(shifted, z, cell=cell)
        row = {"offset_angstrom": offset, "atoms": int(len(z)), "max_abs_f32_minus_f64": float(np.abs(np.asarray(f32) - np.asarray(f64)).max()),
               "float64_shift_invariance": float(np.abs(np.asarray(f64) - np.asarray(f_origin)).max())}
        rows.append(row)
        print(row, flush=True)
    write_json(args.out, {"environment": environment(), "checkpoint": os.path.basename(args.checkpoint), "rows": rows})


if __name__ == "__main__":
    main()
