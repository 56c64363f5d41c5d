"""Evaluation of a tabulated radial filter: a C¹ piecewise cubic stored as per-interval coefficients.

The table (built by :mod:`mlff_jax.compress`) is ``{"coefficients": [G, 4, 3H]}``: on interval i of
a uniform grid over [0, rc] (spacing h = rc / G, read from the shape), with t = d/h − i ∈ [0, 1],

    W(d)   = c0 + t (c1 + t (c2 + t c3))          (Horner)
    dW/dd  = (c1 + t (2 c2 + 3 t c3)) / h

where, from the exact values W_i and slopes W'_i of the cubic Hermite interpolant,
c0 = W_i, c1 = h W'_i, c2 = 3Δ_i − 2 h W'_i − h W'_{i+1}, c3 = −2Δ_i + h W'_i + h W'_{i+1} and
Δ_i = W_{i+1} − W_i, all computed in float64 (:func:`hermite_coefficients`).

Why coefficients rather than values and slopes at the nodes: the derivative of a Hermite
interpolant is dominated by (W_{i+1} − W_i)/h. With nodes stored in float32 that difference of two
rounded numbers carries an error of ~ulp(W)/h (h = 0.004 Å: 250 ulps of W per Å), which was the
largest error of compressed float32 forces (CPU, 427K model: 5e-5 eV/Å from storage rounding alone,
against a table error of 3e-6). Here Δ_i is formed in float64 and only the small, already-cancelled
c1..c3 are rounded, so the derivative has the relative round-off of h W' itself. The pieces meet
at the nodes to within the rounding of the stored coefficients (about 1 ulp of W in float32, 1e-16
relative in float64).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _interval(d: jax.Array, intervals: int, spacing: float):
    """(i [E] int32, t [E, 1], inside [E] bool): interval, local coordinate, and whether d lies
    strictly inside (0, rc). d outside [0, rc] is clamped to the table's ends (t = 0 or 1)."""
    x_raw = d / spacing
    x = jnp.clip(x_raw, 0.0, float(intervals))
    i = jnp.clip(jnp.floor(x).astype(jnp.int32), 0, intervals - 1)
    return i, (x - i)[:, None], (x_raw > 0.0) & (x_raw < intervals)


def table_intervals(table: dict) -> int:
    """Number of grid intervals G of a table."""
    return table["coefficients"].shape[0]


def tabulated_filter(table: dict, d: jax.Array, cutoff: float) -> jax.Array:
    """The piecewise cubic at distances d [E] Å -> W [E, 3H].

    Distances outside [0, rc] are clamped to the table's ends (the caller masks d > rc anyway).
    """
    coefficients = table["coefficients"]
    intervals = coefficients.shape[0]
    i, t, _ = _interval(d, intervals, cutoff / intervals)
    c = coefficients[i]  # one gather of the interval's four rows: [E, 4, 3H]
    return c[:, 0] + t * (c[:, 1] + t * (c[:, 2] + t * c[:, 3]))


def tabulated_filter_slope(table: dict, d: jax.Array, cutoff: float) -> jax.Array:
    """dW/dd [E, 3H] of :func:`tabulated_filter` (what autodiff of it gives, written out for the
    analytic backward): 0 where d is clamped (outside (0, rc))."""
    coefficients = table["coefficients"]
    intervals = coefficients.shape[0]
    spacing = cutoff / intervals
    i, t, inside = _interval(d, intervals, spacing)
    c = coefficients[i]
    dw_dt = c[:, 1] + t * (2 * c[:, 2] + t * (3 * c[:, 3]))
    return jnp.where(inside[:, None], dw_dt / spacing, 0.0)


def hermite_coefficients(values, slopes, cutoff: float) -> np.ndarray:
    """Per-interval coefficients [G, 4, 3H] (float64) of the cubic Hermite interpolant of node
    values W_i and slopes dW/dd_i, both [G + 1, 3H] on the uniform grid over [0, rc]."""
    values, slopes = np.asarray(values, np.float64), np.asarray(slopes, np.float64)
    if values.ndim != 2 or values.shape[0] < 2 or slopes.shape != values.shape:
        raise ValueError(f"values and slopes must both be [G + 1, 3H] with G >= 1, got {values.shape} and {slopes.shape}")
    spacing = cutoff / (values.shape[0] - 1)
    delta = values[1:] - values[:-1]
    left, right = spacing * slopes[:-1], spacing * slopes[1:]
    return np.stack([values[:-1], left, 3 * delta - 2 * left - right, -2 * delta + left + right], axis=1)
