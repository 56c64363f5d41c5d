"""Compressed radial filters: each block's filter network W(d) as a tabulated C¹ piecewise cubic.

W(d) = Linear2(SiLU(Linear1(e(d)))) depends on one scalar, the pair distance d, yet costs
K·H + 3H² multiply-adds per edge per block. On [0, rc] we take, on a uniform grid of G intervals
(spacing h = rc / G), the exact values W(d_i) and exact derivatives W'(d_i) (forward-mode autodiff
of the network), and store the cubic Hermite interpolant through them as four coefficients per
interval (:mod:`mlff_jax.radial_table`):

    W(d) ≈ c0 + t (c1 + t (c2 + t c3)),   t = d/h − i,

one gather and a few FMAs per edge. The interpolant is C¹ in d, and forces are the exact derivative
of the interpolated energy (autodiff and the analytic sweep differentiate the interpolant itself),
so MD conserves the interpolated energy as well as it conserves the exact one.

The table is always built in float64 (JAX's 64-bit mode is switched on for the build alone) and
only then cast to the model's dtype: the coefficients c2, c3 hold differences W_{i+1} − W_i of
nearly equal numbers, which float32 would round to ~ulp(W), an error that dW/dd divides by h.

The cutoff discontinuity is kept exactly as the model has it: the table covers [0, rc] inclusive
(W(rc) is the network's value at e = 0, not zero) and edges with d > rc are masked by the caller.
A model with a filter envelope (``PaiNNConfig.filter_envelope``) tabulates the enveloped filter
env(d) W(e(d)) and its exact derivative, so the table is zero (value and slope) at rc and every
table reader, kernels included, needs no change.

Tables live in the parameter pytree as ``interactions_t/filter_table/coefficients`` [G, 4, 3H]; the
spacing is derived from their shape (rc / G), so nothing else needs to be stored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mlff_jax.painn import Params, dense, polynomial_envelope, radial_features
from mlff_jax.radial_table import hermite_coefficients, tabulated_filter  # noqa: F401  (re-exported)

DEFAULT_SPACING = 0.004  # Å; from the measured error curve (docs/compressed-filters.md): forces ~3e-6 eV/Å


def exact_filter(block: Params, rbf_params: Params, d: jax.Array, cutoff: float, precision=jax.lax.Precision.HIGHEST,
                 envelope: str | None = None) -> jax.Array:
    """The filter as a function of distance: d [E] Å -> W [E, 3H] (no cutoff mask), multiplied by
    the envelope env(d) when ``envelope`` is "polynomial" (``PaiNNConfig.filter_envelope``)."""
    e = radial_features(d, rbf_params["centers"], rbf_params["widths"], cutoff)
    w = dense(jax.nn.silu(dense(e, block["filter_in"], precision)), block["filter_out"], precision)
    if envelope is None:
        return w
    return w * polynomial_envelope(d, cutoff)[0][:, None]


def build_filter_table(block: Params, rbf_params: Params, cutoff: float, spacing: float, envelope: str | None = None) -> Params:
    """{"coefficients": [G, 4, 3H] float64 numpy} of the cubic Hermite interpolant of the exact W and
    dW/dd on the grid d_i = i·h, i = 0..G (h = cutoff / G, G = ceil(cutoff / spacing));
    W = env(d) W_net(e(d)) with an ``envelope`` (:func:`exact_filter`).

    Evaluated in float64 at the highest matmul precision whatever the caller's 64-bit setting and
    the parameters' dtype (they are widened first; float32 weights are exactly representable).
    """
    return filter_table_on_grid(block, rbf_params, cutoff, int(np.ceil(cutoff / spacing)), envelope)


def filter_table_on_grid(block: Params, rbf_params: Params, cutoff: float, intervals: int, envelope: str | None = None) -> Params:
    """:func:`build_filter_table` on a grid of ``intervals`` intervals over [0, cutoff]."""
    with jax.enable_x64(True):
        block64, rbf64 = (jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x, np.float64)), p) for p in (block, rbf_params))
        grid = jnp.linspace(0.0, cutoff, intervals + 1, dtype=jnp.float64)
        # fc and fc' both vanish at d = rc, so the one-sided derivatives agree there: no kink to special-case.
        w, slope = jax.jvp(lambda d: exact_filter(block64, rbf64, d, cutoff, envelope=envelope), (grid,), (jnp.ones_like(grid),))
        w, slope = np.asarray(w), np.asarray(slope)
    return {"coefficients": hermite_coefficients(w, slope, cutoff)}


def compress_params(params: Params, config, spacing: float = DEFAULT_SPACING) -> Params:
    """A copy of ``params`` with a filter table (float64 numpy) added to every interaction block."""
    if not spacing > 0:
        raise ValueError(f"spacing must be a positive number of Å, got {spacing!r}")
    if config.cutoff / spacing > 1e6:
        raise ValueError(f"spacing {spacing} Å gives more than a million grid intervals; use a coarser grid")
    out = dict(params)
    for t in range(config.num_interactions):
        block = dict(params[f"interactions_{t}"])
        block["filter_table"] = build_filter_table(block, params["rbf"], config.cutoff, spacing, config.filter_envelope)
        out[f"interactions_{t}"] = block
    return out


def is_compressed(params: Params) -> bool:
    return any(isinstance(v, dict) and "filter_table" in v for k, v in params.items() if k.startswith("interactions_"))
