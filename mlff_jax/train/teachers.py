"""Teachers of the data generator: named ones (GFN2-xTB and GFN1-xTB through tblite, ASE's EMT for
demonstrations), an import path "package.module:factory" given on the command line, or any ASE
calculator object or factory given from Python. Energies in eV, forces in eV/Å.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def teacher_calculator(method: str = "GFN2-xTB"):
    """GFN2-xTB (or ``method``, e.g. "GFN1-xTB") through tblite's ASE calculator (eV, eV/Å)."""
    from tblite.ase import TBLite

    return TBLite(method=method, verbosity=0)


def _emt():
    from ase.calculators.emt import EMT

    return EMT()


# Named teachers of the command line: name -> (factory, description stored in the dataset's metadata).
TEACHERS: dict[str, tuple[Callable, str]] = {
    "gfn2": (teacher_calculator, "GFN2-xTB (tblite ASE calculator, default accuracy and electronic temperature)"),
    "gfn1": (lambda: teacher_calculator("GFN1-xTB"), "GFN1-xTB (tblite ASE calculator, default settings)"),
    "emt": (_emt, "EMT (ASE's effective-medium toy potential; for demonstrations only)"),
}


def teacher_factory(teacher) -> Callable[[], Any]:
    """A zero-argument function returning a fresh ASE calculator, from a teacher given as

    - a name of :data:`TEACHERS` ("gfn2", "gfn1", "emt"),
    - an import path "package.module:factory" (the factory is imported and must be callable),
    - an ASE calculator object (returned as it is: one calculator labels every system), or
    - a callable returning a calculator.

    Raises ValueError for an unknown name or an import path that does not resolve to a callable.
    """
    if not isinstance(teacher, str):
        if is_calculator_object(teacher):
            return lambda: teacher
        if callable(teacher):
            return teacher
        raise ValueError(f"teacher must be an ASE calculator, a factory of one, or a name; got {type(teacher).__name__}")
    if teacher in TEACHERS:
        return TEACHERS[teacher][0]
    module_name, sep, attribute = teacher.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"unknown teacher {teacher!r}: use one of {sorted(TEACHERS)} or an import path 'package.module:factory'")
    try:
        target = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"teacher {teacher!r}: cannot import {module_name!r} ({exc})") from None
    for part in attribute.split("."):
        target = getattr(target, part, None)
    if not callable(target):
        raise ValueError(f"teacher {teacher!r}: {attribute!r} is not a callable of {module_name!r}")
    return target


def is_calculator_object(teacher) -> bool:
    return not isinstance(teacher, type) and hasattr(teacher, "get_potential_energy")


def teacher_needs(teacher) -> tuple[str, ...]:
    """Packages a teacher needs besides RDKit (checked once, before any system is generated)."""
    return ("tblite",) if teacher in ("gfn2", "gfn1") else ()


def resolve_teacher(configured: str, calculator, workers: int) -> tuple[str, Callable | None, str]:
    """(teacher name for the settings, factory to send with each task or None, description for the metadata).

    configured: the settings' teacher (a name or import path), used when ``calculator`` is None;
    calculator: a name or import path (replaces ``configured``), or an ASE calculator object or factory.
    A named or import-path teacher is resolved inside each worker process; a Python object travels
    with the tasks, so a calculator object (not picklable in general) needs ``workers == 1``.
    Raises ValueError for an unknown teacher or a calculator object with several workers.
    """
    if isinstance(calculator, str):
        configured, calculator = calculator, None
    factory = teacher_factory(calculator if calculator is not None else configured)  # fails early on a bad teacher
    if calculator is None:
        text = TEACHERS[configured][1] if configured in TEACHERS else f"{configured} (import path of a calculator factory)"
        return configured, None, text
    if workers > 1 and is_calculator_object(calculator):
        raise ValueError("a calculator object cannot be shared by worker processes: use workers=1, or pass a "
                         "picklable factory (a module-level function or class) or an import path")
    named = type(calculator) if is_calculator_object(calculator) else calculator
    qualified = f"{getattr(named, '__module__', '?')}.{getattr(named, '__qualname__', '?')}"
    return f"python:{qualified}", factory, f"{qualified} (ASE calculator given in Python)"
