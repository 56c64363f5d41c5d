"""Helpers shared by the ``mlff-jax`` subcommands (``cli`` and ``_cli_md`` import them from here,
so the dependency points one way): the one-line error type, argument types, model and structure
loading and checks."""

from __future__ import annotations

import argparse
import os

import numpy as np

EXIT_BAD_INPUT = 2


class UserError(Exception):
    """A problem with the command line or its input: reported in one line, no traceback."""


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line too (the usage is one ``--help`` away), and no
    abbreviated options: ``--step 100`` is an error, not ``--steps 100``."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


# ----------------------------------------------------------------------------- shared helpers
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def enable_dtype(dtype: str) -> None:
    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)


def load_model(spec: str, dtype: str, allow_untrained_elements: bool = False, elements=None):
    """A model from a checkpoint path or a bundled model name (``default``)."""
    import mlff_jax

    enable_dtype(dtype)
    options = dict(dtype=dtype, allow_untrained_elements=allow_untrained_elements, elements=elements)
    if os.path.exists(spec):
        return mlff_jax.load(spec, **options)
    try:
        return mlff_jax.load(spec, **options)
    except FileNotFoundError:
        raise UserError(f"unknown model {spec!r}: no such file, and not the name of a bundled model") from None


def read_structure(spec: str, index=-1):
    """``ase.Atoms`` from any file ASE reads, or a bundled example name (ethanol, benzene, water10)."""
    import ase.io

    from mlff_jax import data

    if not os.path.exists(spec):
        if spec in data.EXAMPLES:
            return [data.example(spec)] if index == ":" else data.example(spec)
        raise UserError(f"structure file not found: {spec} (bundled examples: {', '.join(data.EXAMPLES)})")
    try:
        atoms = ase.io.read(spec, index=index)
    except KeyError as error:  # ASE's symbol table
        raise UserError(f"cannot read structure file {spec}: unknown chemical symbol {error}") from None
    except Exception as error:  # ASE raises many types for unreadable files
        raise UserError(f"cannot read structure file {spec}: {error}") from None
    if (isinstance(atoms, list) and not atoms) or len(atoms) == 0:
        raise UserError(f"no atoms in {spec}")
    return atoms


def check_structure(model, atoms) -> None:
    """Validates elements and positions once on the host (MD loops run traced, without checks)."""
    if np.any(atoms.pbc):
        if not has_periodic_support(model):
            raise UserError("periodic structures are not supported by this installation: set pbc to False (molecules only)")
        if abs(np.linalg.det(atoms.cell.array)) < 1e-9:
            raise UserError("a periodic structure needs a cell with three non-zero, independent vectors")
    model._validate(atoms.positions, atoms.numbers, None)


def has_periodic_support(model) -> bool:
    import importlib.util
    import inspect

    return importlib.util.find_spec("mlff_jax.neighbors") is not None and "cell" in inspect.signature(model.energy_and_forces).parameters
