"""Compressed radial filters: each block's filter network W(d) as a C¹ cubic Hermite table.

W(d) = Linear2(SiLU(Linear1(e(d)))) depends on one scalar, the pair distance d, yet costs
K·H + 3H² multiply-adds per edge per block. On [0, rc] we tabulate, on a uniform grid of G
intervals (spacing h = rc / G), the exact values W(d_i) and exact derivatives W'(d_i) (forward-mode
autodiff of the network), and evaluate the cubic Hermite interpolant

    W(d) ≈ h00(t) W_i + h10(t) h W'_i + h01(t) W_{i+1} + h11(t) h W'_{i+1},   t = d/h − i,

a few loads and FMAs per edge. The interpolant is C¹ in d, and forces are the exact derivative of the
interpolated energy (autodiff and the analytic sweep differentiate the interpolant itself), so MD
conserves the interpolated energy as well as it conserves the exact one.

The cutoff discontinuity is kept exactly as the model has it: the table covers [0, rc] inclusive
(W(rc) is the network's value at e = 0, not zero) and edges with d > rc are masked by the caller.
A model with a filter envelope (``PaiNNConfig.filter_envelope``) tabulates the enveloped filter
env(d) W(e(d)) and its exact derivative, so the table is zero (value and slope) at rc and every
table reader, kernels included, needs no change.

Tables live in the parameter pytree as ``interactions_t/filter_table/{values,slopes}`` [G + 1, 3H];
the spacing is derived from their shape (rc / G), so nothing else needs to be stored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mlff_jax.painn import Params, dense, polynomial_envelope, radial_features
from mlff_jax.radial_table import tabulated_filter  # noqa: F401  (re-exported)

DEFAULT_SPACING = 0.004  # Å; from the measured error curve (docs/compressed-filters.md): forces ~1e-6 eV/Å


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
    """Exact W and dW/dd on the grid d_i = i·h, i = 0..G (h = cutoff / G, G = ceil(cutoff / spacing));
    W = env(d) W_net(e(d)) with an ``envelope`` (:func:`exact_filter`).

    Built in float64 when 64-bit JAX is on, at the highest matmul precision.
    """
    intervals = int(np.ceil(cutoff / spacing))
    grid = jnp.linspace(0.0, cutoff, intervals + 1, dtype=block["filter_in"]["kernel"].dtype)
    # fc and fc' both vanish at d = rc, so the one-sided derivatives agree there: no kink to special-case.
    w, slope = jax.jvp(lambda d: exact_filter(block, rbf_params, d, cutoff, envelope=envelope), (grid,), (jnp.ones_like(grid),))
    return {"values": w, "slopes": slope}


def compress_params(params: Params, config, spacing: float = DEFAULT_SPACING) -> Params:
    """A copy of ``params`` with a filter table added to every interaction block."""
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
