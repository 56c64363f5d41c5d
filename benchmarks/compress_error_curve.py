"""Error of compressed (tabulated) radial filters vs grid spacing, float64, upstream reference set.

    python3 benchmarks/compress_error_curve.py --out benchmarks/results/compress_error_curve.json

For each model and spacing: the largest force error (eV/Å) and energy error per atom (eV) of the
compressed model against the uncompressed one, over every reference structure. Runs on CPU.
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "upstream"),
                   help="folder with checkpoints/ and reference/ (default: the vendored tests/data/upstream)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    import mlff_jax

    rows = []
    for name in ("ultra-tiny-21k", "tiny-77k", "student-427k"):
        ref = np.load(os.path.join(args.upstream, "reference", f"{name}.npz"))
        model = mlff_jax.load(os.path.join(args.upstream, "checkpoints", f"{name}.model.pt"), dtype="float64")
        structures = sorted({k.split("__")[0] for k in ref.files} - {"batch"})
        exact = {s: model.energy_and_forces(ref[s + "__R"], ref[s + "__Z"]) for s in structures}
        for spacing in SPACINGS:
            compressed = model.compress(spacing)
            worst_f = worst_e = 0.0
            for s in structures:
                e, f = compressed.energy_and_forces(ref[s + "__R"], ref[s + "__Z"])
                worst_f = max(worst_f, float(np.abs(np.asarray(f) - np.asarray(exact[s][1])).max()))
                worst_e = max(worst_e, abs(float(e) - float(exact[s][0])) / len(ref[s + "__Z"]))
            row = {"model": name, "spacing_A": spacing, "max_force_error_eV_A": worst_f, "max_energy_error_eV_atom": worst_e}
            rows.append(row)
            print(row)
    write_json(args.out, {"environment": environment(), "rows": rows})


if __name__ == "__main__":
    main()
