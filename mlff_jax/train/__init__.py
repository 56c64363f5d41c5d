"""Distillation of PaiNN students: data generation (``data``), training (``trainer``), evaluation.

Needs the ``train`` extra for data generation (``pip install 'mlff-jax[train]'``: tblite, rdkit)
and optax for training. Nothing heavy is imported here.
"""


def main(argv: list[str] | None = None) -> int:
    """``mlff-jax train CONFIG``: see :func:`mlff_jax.train.trainer.main`."""
    from mlff_jax.train.trainer import main as train_main

    return train_main(argv)
