"""How far the upstream students are from rotation invariance: float64, CPU, seconds.

    python3 benchmarks/rotation_invariance.py --out benchmarks/results/rotation_invariance_cpu.json

The upstream PaiNN student mixes the x, y, z components of its vector features with a learned 3x3
``mixing_matrix``; trained values are far from a multiple of the identity, so the energy changes
when the molecule is rotated (a faithful port reproduces this; tests/test_physics.py checks that
with the matrix set to the identity the energy is invariant to round-off). For each model and
molecule this records, over ``--rotations`` random rotations (seeded) about the centre of mass,
the largest |E(R x) - E(x)| (eV) and the largest |F(R x) - R F(x)| (eV/Å).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

VENDORED = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "upstream"
MODELS = ("ultra-tiny-21k", "tiny-77k", "student-427k", "default")  # "default": the bundled model (same architecture)
MOLECULES = ("CH3CH2OH", "C6H6")  # ethanol, benzene (ase's g2 geometries)


def random_rotation(rng):
    """A uniformly random proper rotation [3, 3] (QR of a Gaussian matrix, signs fixed)."""
    import numpy as np

    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", default=str(VENDORED), help="folder with checkpoints/ (default: the vendored tests/data/upstream)")
    p.add_argument("--rotations", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import jax
    import numpy as np
    from ase.build import molecule

    import mlff_jax
    from common import environment, write_json

    jax.config.update("jax_enable_x64", True)
    rows = []
    for name in MODELS:
        source = "default" if name == "default" else pathlib.Path(args.upstream) / "checkpoints" / f"{name}.model.pt"
        model = mlff_jax.load(source, dtype="float64")
        for formula in MOLECULES:
            atoms = molecule(formula)
            x = atoms.positions - atoms.get_center_of_mass()
            e0, f0 = model.energy_and_forces(x, atoms.numbers)
            rng = np.random.default_rng(args.seed)
            de, df = [], []
            for _ in range(args.rotations):
                rot = random_rotation(rng)
                e, f = model.energy_and_forces(x @ rot.T, atoms.numbers)
                de.append(abs(float(e) - float(e0)))
                df.append(float(np.abs(np.asarray(f) - np.asarray(f0) @ rot.T).max()))
            row = {"model": name, "molecule": formula, "atoms": len(atoms), "energy_eV": float(e0),
                   "max_abs_energy_change_eV": max(de), "median_abs_energy_change_eV": float(np.median(de)),
                   "max_force_change_eV_per_A": max(df)}
            rows.append(row)
            print(row)
    payload = {"benchmark": "rotation (non-)invariance of the upstream students, float64, CPU", "rotations": args.rotations,
               "seed": args.seed, "environment": environment(), "rows": rows}
    if args.out:
        write_json(args.out, payload)


if __name__ == "__main__":
    main()
