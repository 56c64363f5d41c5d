"""Pallas kernels (Triton lowering) for a COMPRESSED message block: the filter from its table.

A compressed model (``model.compress()``, :mod:`mlff_jax.compress`) stores each block's filter
W(d) = (Ws, Wv1, Wv2) as a C¹ piecewise cubic: four coefficients per interval of a uniform grid
d_i = i·h, h = rc / G (:mod:`mlff_jax.radial_table`). These kernels are the kernels of :mod:`.pallas`
(same grid, loop over slots, gathers, slot splits, gather-only backward; read its docstring) with the
filter network replaced by four row gathers of the table per slot and part:

    x = clip(d / h, 0, G), i = min(floor(x), G - 1), t = x - i
    W(d)  = c0 + t (c1 + t (c2 + t c3))                     (rows 4i .. 4i + 3 of the packed table)
    W'(d) = (c1 + t (2 c2 + 3 t c3)) / h

exactly the interpolant of :func:`mlff_jax.radial_table.tabulated_filter` (the XLA compressed path)
and its derivative. No matmul is left: the backward's distance cotangent is
g_d = Σ_h (g_Ws ⊙ Ws' + g_Wv1 ⊙ Wv1' + g_Wv2 ⊙ Wv2'), with g_W built from the receiver's cotangents.

Where the table lives: it is one whole-array input read by gathers, i.e. in global memory and
served by the L2 cache. For the 427K model (H = 128) at the default spacing 0.004 Å (G = 1250) a
block's table is 1250 x 4 x 384 float32 = 7.7 MB: 34x the 227 KiB of shared memory an H100 block
may use, so it cannot be staged there, but 1/6.5 of the H100's 50 MB L2, which keeps it resident
across all programs of a launch (only one block's table is live per launch). The four rows an edge
reads are adjacent (one 2 KB span per part for H = 128).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from .pallas_common import (
    KernelConfig,
    Packed,
    backward_outputs,
    backward_slot,
    block_specs,
    feature_outputs,
    launch,
    pad_to,
    read_slot,
    sum_over_slots,
    sum_splits,
    whole,
)


def pack_table(table, h_pad: int):
    """{coefficients} [G, 4, 3H] -> [3, 4G, Hp]: part p (Ws, Wv1, Wv2), row 4i + k = c_k of interval i."""
    coefficients = table["coefficients"]
    intervals, four, three_h = coefficients.shape
    hidden = three_h // 3
    parts = jnp.transpose(coefficients.reshape(intervals, four, 3, hidden), (2, 0, 1, 3)).reshape(3, four * intervals, hidden)
    return pad_to(parts, (3, four * intervals, h_pad))


def table_filter(d, within, coef_ref, cfg: KernelConfig, derivative: bool):
    """W(d) as three masked [B, Hp] tiles, and with ``derivative`` also dW/dd (masked).

    d: [B] Å (one slot of every receiver of the block); within: [B, 1] bool.
    """
    intervals = cfg.table_intervals
    spacing = cfg.cutoff / intervals
    x = jnp.clip(d / spacing, 0.0, float(intervals))
    i = jnp.clip(jnp.floor(x).astype(jnp.int32), 0, intervals - 1)
    t = (x - i)[:, None]
    row = 4 * i
    w, dw = [], []
    for p in range(3):
        c0, c1, c2, c3 = (coef_ref[p, row + k, :] for k in range(4))
        w.append(jnp.where(within, c0 + t * (c1 + t * (c2 + t * c3)), 0.0))
        if derivative:
            dw.append(jnp.where(within, (c1 + t * (2 * c2 + t * (3 * c3))) / spacing, 0.0))
    return (w, dw) if derivative else w


def _forward_kernel(nbr_ref, d_ref, u_ref, s_ref, v_ref, coef_ref, ds_ref, dv_ref, *, cfg, capacity):
    def body(k, carry):
        idx, _, within, any_within = read_slot(nbr_ref, d_ref, k, cfg.num_atoms, cfg.cutoff)

        def accumulate(carry):
            ds, dv0, dv1, dv2 = carry
            ws, wv1, wv2 = table_filter(d_ref[k, :], within, coef_ref, cfg, derivative=False)
            ds = ds + s_ref[idx, :] * ws
            dv = [acc + v_ref[i, idx, :] * wv1 + u_ref[i, k, :][:, None] * wv2 for i, acc in enumerate((dv0, dv1, dv2))]
            return (ds, *dv)

        return jax.lax.cond(any_within, accumulate, lambda c: c, carry)

    sum_over_slots(body, capacity, ds_ref, dv_ref)


def _backward_kernel(
    nbr_ref, d_ref, u_ref, s_ref, v_ref, gs_ref, gv_ref, gs_own_ref, gv_own_ref, coef_ref,
    gs_out_ref, gv_out_ref, gd_ref, gu_ref, *, cfg, capacity,
):  # fmt: skip
    def body(k, carry):
        idx, _, within, any_within = read_slot(nbr_ref, d_ref, k, cfg.num_atoms, cfg.cutoff)

        def slot_gradients(carry):
            acc_s, acc_v0, acc_v1, acc_v2 = carry
            (ws, wv1, wv2), (dws, dwv1, dwv2) = table_filter(d_ref[k, :], within, coef_ref, cfg, derivative=True)
            # (ii) reverse edge: sender cotangents gathered from the neighbours' rows.
            acc_s = acc_s + gs_ref[idx, :] * ws
            acc_v = [acc + gv_ref[i, idx, :] * wv1 for i, acc in enumerate((acc_v0, acc_v1, acc_v2))]
            # (i) this slot's edge a -> b: direction and distance cotangents (W' is masked already).
            gv_own = [gv_own_ref[i] for i in range(3)]
            u = [u_ref[i, k, :][:, None] for i in range(3)]
            g_dir = [jnp.sum(gv_own[i] * wv2, axis=1) for i in range(3)]
            g_w = gs_own_ref[...] * s_ref[idx, :] * dws
            for i in range(3):
                g_w = g_w + gv_own[i] * (v_ref[i, idx, :] * dwv1 + u[i] * dwv2)
            return (acc_s, *acc_v), (jnp.sum(g_w, axis=1), *g_dir)

        return backward_slot(k, any_within, slot_gradients, carry, gd_ref, gu_ref, gs_out_ref.dtype)

    sum_over_slots(body, capacity, gs_out_ref, gv_out_ref)


def forward_table(packed: Packed, s_pad, v_pad, cfg: KernelConfig):
    """(ds [Np, Hp], dv [3, Np, Hp]) of a compressed block (as ``pallas.forward``)."""
    n_pad, h_pad = s_pad.shape
    sp = block_specs(packed, h_pad, cfg)
    table_spec = whole(packed.table_coefficients.shape)
    in_specs = [sp["slots"], sp["slots"], sp["slot_vectors"], whole((n_pad, h_pad)), whole((3, n_pad, h_pad)), table_spec]
    out_specs, out_shape = feature_outputs(sp, n_pad, h_pad, cfg, s_pad.dtype)
    kernel = functools.partial(_forward_kernel, cfg=cfg, capacity=sp["capacity"])
    p = packed
    ds, dv = launch(kernel, "painn_message_table_fwd", out_shape, in_specs, out_specs, n_pad, cfg,
                     p.neighbors, p.distances, p.directions, s_pad, v_pad, p.table_coefficients)  # fmt: skip
    return sum_splits(ds), sum_splits(dv)


def backward_table(packed: Packed, s_pad, v_pad, gs_pad, gv_pad, cfg: KernelConfig):
    """Cotangents (g_s, g_v, g_d, g_dir) of a compressed block in kernel layout (as ``pallas.backward``)."""
    n_pad, h_pad = s_pad.shape
    c_pad = packed.neighbors.shape[0]
    sp = block_specs(packed, h_pad, cfg)
    table_spec = whole(packed.table_coefficients.shape)
    in_specs = [sp["slots"], sp["slots"], sp["slot_vectors"], whole((n_pad, h_pad)), whole((3, n_pad, h_pad)),
                whole((n_pad, h_pad)), whole((3, n_pad, h_pad)), sp["rows"], sp["vector_rows"], table_spec]  # fmt: skip
    out_specs, out_shape = backward_outputs(sp, n_pad, h_pad, c_pad, cfg, s_pad.dtype)
    kernel = functools.partial(_backward_kernel, cfg=cfg, capacity=sp["capacity"])
    p = packed
    g_s, g_v, g_d, g_u = launch(kernel, "painn_message_table_bwd", out_shape, in_specs, out_specs, n_pad, cfg,
                                 p.neighbors, p.distances, p.directions, s_pad, v_pad, gs_pad, gv_pad, gs_pad, gv_pad,
                                 p.table_coefficients)  # fmt: skip
    return sum_splits(g_s), sum_splits(g_v), g_d, g_u
