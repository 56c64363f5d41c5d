"""Regenerates the bundled example molecules in mlff_jax/data/ (seeded: the output is reproducible).

Each molecule is an ASE g2 geometry (or a grid of waters) displaced by Gaussian noise of 0.05 Å,
so that no geometry sits on a symmetric point where PaiNN's ``|v|`` has its cusp (see the spec).
Run: ``python3 tools/make_examples.py``.
"""

import pathlib

import ase.io
import numpy as np
from ase import Atoms
from ase.build import molecule

NOISE = 0.05  # Å
OUT = pathlib.Path(__file__).resolve().parents[1] / "mlff_jax" / "data"


def water_cluster(count: int, rng: np.random.Generator, spacing: float = 2.9) -> Atoms:
    """``count`` water molecules on a compact grid (spacing in Å), each randomly rotated."""
    grid = [(i, j, k) for k in range(3) for j in range(2) for i in range(2)][:count]
    cluster = Atoms()
    for point in grid:
        water = molecule("H2O")
        water.rotate(rng.normal(size=3), rng.uniform(0, 360), center="COM")
        water.translate(np.asarray(point, float) * spacing - water.get_center_of_mass())
        cluster += water
    return cluster


def main():
    rng = np.random.default_rng(20240607)
    molecules = {
        "ethanol": molecule("CH3CH2OH"),
        "benzene": molecule("C6H6"),
        "water10": water_cluster(10, rng),
    }
    for name, atoms in molecules.items():
        atoms.positions += rng.normal(scale=NOISE, size=atoms.positions.shape)
        atoms.center()
        atoms.cell = np.zeros((3, 3))
        atoms.pbc = False
        atoms.info = {"name": name}
        ase.io.write(OUT / f"{name}.xyz", atoms, format="extxyz")
        d = atoms.get_all_distances()
        print(f"{name}: {len(atoms)} atoms, largest distance {d.max():.2f} Å, smallest {d[d > 0].min():.2f} Å")


if __name__ == "__main__":
    main()
