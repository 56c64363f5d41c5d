"""Distillation of PaiNN students: data generation (``data``), training (``trainer``), evaluation.

Needs the ``train`` extra for data generation (``pip install 'mlff-jax[train]'``: tblite, rdkit)
and optax for training. Nothing heavy is imported here.
"""
