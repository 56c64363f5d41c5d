"""GPU kernels of mlff-jax, one folder per op (``reference.py``, the kernel, ``api.py``).

Installed as ``mlff_jax.kernels`` (package-dir mapping in pyproject.toml); from a source checkout
the shim ``mlff_jax/kernels/__init__.py`` points ``mlff_jax.kernels`` at this folder.
"""
