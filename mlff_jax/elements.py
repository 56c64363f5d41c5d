"""The elements a model was trained on, and the host-side check that refuses any other.

A PaiNN student has an embedding row for every atomic number up to ``max_z``, but only the rows of
elements present in its training data were ever trained: the others hold their random initial
values, and an energy computed with them is meaningless. ``PaiNNConfig.elements`` records the
trained set; host calls (``energy_and_forces``, the ASE calculator, the CLI) refuse other elements
unless the user opts in with ``allow_untrained_elements=True``. Calls traced under ``jax.jit`` are
not checked (the atomic numbers are not known there): call :func:`check_trained_elements` (or
``model.check_elements``) once on the host before.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase.data import chemical_symbols

# H, C, N, O, F, S, Cl: what MLFF-Distiller's students were trained on (upstream documents it), and
# the set assumed for any checkpoint that does not record its own.
UPSTREAM_ELEMENTS: tuple[int, ...] = (1, 6, 7, 8, 9, 16, 17)


def symbol(z: int) -> str:
    """Chemical symbol of atomic number z ("Z=200" outside the periodic table)."""
    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"


def describe(elements: Sequence[int]) -> str:
    """``"H, C, N, O"``: the symbols of a set of atomic numbers, in order."""
    return ", ".join(symbol(int(z)) for z in elements)


def parse_elements(text: str) -> tuple[int, ...]:
    """Elements from a comma-separated list of symbols or atomic numbers: ``"H,C,N,O"`` or ``"1,6,7,8"``."""
    items = [part.strip() for part in text.split(",")]
    return tuple(sorted({int(item) if item.isdigit() else chemical_number(item) for item in items}))


def check_trained_elements(atomic_numbers, elements: Sequence[int] | None, model_name: str) -> None:
    """Raises ValueError naming every element of ``atomic_numbers`` [N] int (each in 1..max_z) that
    is not in ``elements``; ``None`` (not recorded) accepts all. Vectorised: one table lookup per atom.
    """
    if elements is None:
        return
    z = np.asarray(atomic_numbers, np.int64)
    trained = np.zeros(max(int(z.max(initial=0)), max(elements)) + 1, bool)
    trained[list(elements)] = True
    untrained = ~trained[z]
    if np.any(untrained):
        found = sorted(set(z[untrained].tolist()))
        names = ", ".join(f"{symbol(v)} (Z={v})" for v in found)
        raise ValueError(
            f"untrained element: {names} is not among the elements model {model_name} was trained on "
            f"({describe(elements)}; atoms {np.nonzero(untrained)[0][:10].tolist()}). Its results would be meaningless; "
            "pass allow_untrained_elements=True (CLI: --allow-untrained-elements) to evaluate anyway."
        )


def chemical_number(element: int | str) -> int:
    """Atomic number of a symbol (``"Cl"``) or of an atomic number given as such."""
    if isinstance(element, str) and element in chemical_symbols[1:]:
        return chemical_symbols.index(element)
    if isinstance(element, (int, np.integer)) and not isinstance(element, bool):
        return int(element)
    raise ValueError(f"unknown element {element!r}: expected a chemical symbol or an atomic number")
