"""Fused GPU kernels of mlff-jax, one folder per operation (installed as ``mlff_jax.kernels``).

Each folder holds ``reference.py`` (plain JAX, the definition), the kernel(s) (``pallas.py``,
optionally ``triton.py``) and ``api.py``, whose functions take ``implementation="xla"|"pallas"|
"triton"`` and ``interpret=False``. See ``docs/kernels.md``. From a source checkout the shim
``mlff_jax/kernels/__init__.py`` points ``mlff_jax.kernels`` at this folder.
"""
