"""``python3 -m mlff_jax.train CONFIG``: see :mod:`mlff_jax.train.trainer`."""

import sys

from mlff_jax.train.trainer import main

sys.exit(main())
