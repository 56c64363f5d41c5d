"""Source-checkout shim: ``mlff_jax.kernels`` lives in the top-level ``kernels/`` folder.

An installed package maps ``mlff_jax.kernels`` to ``kernels/`` (package-dir in pyproject.toml)
and never contains this file. Running from a checkout (``PYTHONPATH=$PWD``), this package's
search path is redirected there, so ``import mlff_jax.kernels.neighbors`` finds the same code.
"""

import pathlib

__path__ = [str(pathlib.Path(__file__).resolve().parents[2] / "kernels")]
