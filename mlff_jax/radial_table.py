"""Evaluation of a tabulated radial filter (cubic Hermite); built by :mod:`mlff_jax.compress`."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def tabulated_filter(table: dict, d: jax.Array, cutoff: float) -> jax.Array:
    """Cubic Hermite interpolation of the table at distances d [E] Å -> W [E, 3H].

    Distances outside [0, rc] are clamped to the table's ends (the caller masks d > rc anyway).
    """
    values, slopes = table["values"], table["slopes"]
    intervals = values.shape[0] - 1
    h = cutoff / intervals
    x = jnp.clip(d / h, 0.0, float(intervals))
    i = jnp.clip(jnp.floor(x).astype(jnp.int32), 0, intervals - 1)
    t = (x - i)[:, None]
    t2, t3 = t * t, t * t * t
    h00, h10 = 2 * t3 - 3 * t2 + 1, t3 - 2 * t2 + t
    h01, h11 = -2 * t3 + 3 * t2, t3 - t2
    return h00 * values[i] + h10 * (h * slopes[i]) + h01 * values[i + 1] + h11 * (h * slopes[i + 1])
