"""Bundled example molecules (extended XYZ, Å), for quick starts, benchmarks and tests.

    from mlff_jax.data import example
    atoms = example("ethanol")          # ase.Atoms

Geometries are ASE's g2 molecules (and a 10-water cluster) displaced by seeded Gaussian noise of
0.05 Å (``tools/make_examples.py``). Largest interatomic distance: ethanol 4.1 Å (every pair stays
inside the 5 Å cutoff), benzene 4.97 Å (the para H-H pair sits at the cutoff: in MD it crosses it
and the model's energy jumps), water10 8.0 Å.
"""

from __future__ import annotations

import pathlib

EXAMPLES = ("ethanol", "benzene", "water10")
_HERE = pathlib.Path(__file__).resolve().parent


def example_path(name: str) -> pathlib.Path:
    """Path of the bundled ``name``.xyz; ``ValueError`` listing the choices for an unknown name."""
    if name not in EXAMPLES:
        raise ValueError(f"unknown example molecule {name!r}; bundled: {', '.join(EXAMPLES)}")
    return _HERE / f"{name}.xyz"


def example(name: str):
    """The bundled molecule ``name`` as an ``ase.Atoms`` (non-periodic, positions in Å)."""
    import ase.io

    return ase.io.read(example_path(name))
