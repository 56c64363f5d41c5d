"""The message-block kernels written directly in Triton, called through jax-triton (GPU only).

Same algorithm, layout and launch settings as :mod:`.pallas` (read its docstring): one program per
block of receivers, a loop over the neighbour slots, filter network on tensor tiles, gathers of
sender rows, no atomics; the backward gathers the sender cotangents over the same full list.
Compressed blocks read the filter from its table (``_forward_table_kernel``, ``_backward_table_kernel``;
the math of :mod:`.pallas_table`).

Needs ``triton`` and ``jax-triton`` (``pip install 'mlff-jax[triton]'``; jax-triton 0.3.1 works with
Triton 3.6). Neither installs on a CPU-only machine, so this module is imported only when
``implementation="triton"`` is asked for. There is no interpret mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax_triton as jt
import triton
import triton.language as tl

from .pallas import KernelConfig, Packed, sum_splits


@triton.jit
def _mm(a, b, PRECISION: tl.constexpr):
    """a @ b: 'ieee' | 'tf32' | 'tf32x3' (float32 inputs and accumulation), 'bf16', 'f64'."""
    if PRECISION == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), out_dtype=tl.float32)
    elif PRECISION == "f64":
        return tl.dot(a, b, out_dtype=tl.float64)
    else:
        return tl.dot(a, b, input_precision=PRECISION, out_dtype=tl.float32)


@triton.jit
def _radial(d, mu, width, CUTOFF: tl.constexpr):
    """e(d) and de/dd for d [B, 1] (formulas of ``painn.radial_features``)."""
    diff = d - mu
    phi = tl.exp(-(diff * diff) / (width * width))
    inside = d < CUTOFF
    angle = 3.141592653589793 * d / CUTOFF
    fc = tl.where(inside, 0.5 * (tl.cos(angle) + 1.0), 0.0)
    dfc = tl.where(inside, -0.5 * (3.141592653589793 / CUTOFF) * tl.sin(angle), 0.0)
    dphi = phi * (-2.0 * diff / (width * width))
    return phi * fc, dphi * fc + phi * dfc


@triton.jit
def _envelope(d, CUTOFF: tl.constexpr):
    """env(d) and env'(d) for d [B, 1] (``painn.polynomial_envelope``, same factored form)."""
    x = d / CUTOFF
    inside = x < 1.0
    one_minus = 1.0 - x
    env = one_minus * one_minus * one_minus * (1.0 + x * (3.0 + x * (6.0 + x * (10.0 + x * (15.0 + 21.0 * x)))))
    x2 = x * x
    denv = (-168.0 / CUTOFF) * (x2 * x2 * x) * (one_minus * one_minus)
    return tl.where(inside, env, 0.0), tl.where(inside, denv, 0.0)


@triton.jit
def _filter(e, m, w1_ptr, b1_ptr, w2_ptr, b2_ptr, H: tl.constexpr, K: tl.constexpr, KC: tl.constexpr, PRECISION: tl.constexpr):
    """(Ws, Wv1, Wv2) [B, H], masked by m: the hidden layer in chunks of KC units, so that no
    matmul contracts over more than KC (see ``pallas.KernelConfig.k_chunk``)."""
    hc = tl.arange(0, H)
    kc = tl.arange(0, K)
    cc = tl.arange(0, KC)
    ws = tl.zeros((e.shape[0], H), e.dtype)
    wv1 = tl.zeros((e.shape[0], H), e.dtype)
    wv2 = tl.zeros((e.shape[0], H), e.dtype)
    for c in tl.static_range(H // KC):
        cols = c * KC + cc
        pre = _mm(e, tl.load(w1_ptr + kc[:, None] * H + cols[None, :]), PRECISION) + tl.load(b1_ptr + cols)[None, :]
        h = pre * tl.sigmoid(pre)
        rows = cols[:, None] * H + hc[None, :]
        ws += _mm(h, tl.load(w2_ptr + rows), PRECISION)
        wv1 += _mm(h, tl.load(w2_ptr + H * H + rows), PRECISION)
        wv2 += _mm(h, tl.load(w2_ptr + 2 * H * H + rows), PRECISION)
    ws = tl.where(m, ws + tl.load(b2_ptr + hc)[None, :], 0.0)
    wv1 = tl.where(m, wv1 + tl.load(b2_ptr + H + hc)[None, :], 0.0)
    wv2 = tl.where(m, wv2 + tl.load(b2_ptr + 2 * H + hc)[None, :], 0.0)
    return ws, wv1, wv2


@triton.jit
def _forward_kernel(
    nbr_ptr, d_ptr, u_ptr, s_ptr, v_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, mu_ptr, width_ptr,
    ds_ptr, dv_ptr,
    N_PAD: tl.constexpr, CAPACITY: tl.constexpr, SLOTS: tl.constexpr, NUM_ATOMS: tl.constexpr, CUTOFF: tl.constexpr,
    BLOCK: tl.constexpr, H: tl.constexpr, K: tl.constexpr, KC: tl.constexpr, PRECISION: tl.constexpr, ENVELOPE: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    split = tl.program_id(1)  # this program reads slots [split * SLOTS, (split + 1) * SLOTS)
    ds_ptr += split * N_PAD * H
    dv_ptr += split * 3 * N_PAD * H
    hc = tl.arange(0, H)
    kc = tl.arange(0, K)
    mu = tl.load(mu_ptr + kc)[None, :]
    width = tl.load(width_ptr + kc)[None, :]
    dtype = s_ptr.dtype.element_ty
    ds = tl.zeros((BLOCK, H), dtype)
    dv0 = tl.zeros((BLOCK, H), dtype)
    dv1 = tl.zeros((BLOCK, H), dtype)
    dv2 = tl.zeros((BLOCK, H), dtype)
    for jj in range(SLOTS):
        j = split * SLOTS + jj
        nbr = tl.load(nbr_ptr + j * N_PAD + rows)
        d = tl.load(d_ptr + j * N_PAD + rows)
        valid = (nbr >= 0) & (nbr < NUM_ATOMS)
        within = valid & (d <= CUTOFF)
        if tl.max(within.to(tl.int32), axis=0) > 0:
            gather = tl.where(valid, nbr, 0)[:, None] * H + hc[None, :]
            e, _ = _radial(d[:, None], mu, width, CUTOFF)
            ws, wv1, wv2 = _filter(e, within[:, None], w1_ptr, b1_ptr, w2_ptr, b2_ptr, H, K, KC, PRECISION)
            if ENVELOPE:
                env, _ = _envelope(d[:, None], CUTOFF)
                ws = ws * env
                wv1 = wv1 * env
                wv2 = wv2 * env
            ds += tl.load(s_ptr + gather) * ws
            u0 = tl.load(u_ptr + j * N_PAD + rows)[:, None]
            u1 = tl.load(u_ptr + (CAPACITY + j) * N_PAD + rows)[:, None]
            u2 = tl.load(u_ptr + (2 * CAPACITY + j) * N_PAD + rows)[:, None]
            dv0 += tl.load(v_ptr + gather) * wv1 + u0 * wv2
            dv1 += tl.load(v_ptr + N_PAD * H + gather) * wv1 + u1 * wv2
            dv2 += tl.load(v_ptr + 2 * N_PAD * H + gather) * wv1 + u2 * wv2
    out = rows[:, None] * H + hc[None, :]
    tl.store(ds_ptr + out, ds)
    tl.store(dv_ptr + out, dv0)
    tl.store(dv_ptr + N_PAD * H + out, dv1)
    tl.store(dv_ptr + 2 * N_PAD * H + out, dv2)


@triton.jit
def _backward_kernel(
    nbr_ptr, d_ptr, u_ptr, s_ptr, v_ptr, gs_ptr, gv_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w2t_ptr,
    mu_ptr, width_ptr,
    gs_out_ptr, gv_out_ptr, gd_ptr, gu_ptr,
    N_PAD: tl.constexpr, CAPACITY: tl.constexpr, SLOTS: tl.constexpr, NUM_ATOMS: tl.constexpr, CUTOFF: tl.constexpr,
    BLOCK: tl.constexpr, H: tl.constexpr, K: tl.constexpr, KC: tl.constexpr, PRECISION: tl.constexpr, ENVELOPE: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    split = tl.program_id(1)  # this program reads slots [split * SLOTS, (split + 1) * SLOTS)
    gs_out_ptr += split * N_PAD * H
    gv_out_ptr += split * 3 * N_PAD * H
    hc = tl.arange(0, H)
    kc = tl.arange(0, K)
    cc = tl.arange(0, KC)
    mu = tl.load(mu_ptr + kc)[None, :]
    width = tl.load(width_ptr + kc)[None, :]
    b1 = tl.load(b1_ptr + hc)[None, :]
    own = rows[:, None] * H + hc[None, :]
    dtype = s_ptr.dtype.element_ty
    acc_s = tl.zeros((BLOCK, H), dtype)
    acc_v0 = tl.zeros((BLOCK, H), dtype)
    acc_v1 = tl.zeros((BLOCK, H), dtype)
    acc_v2 = tl.zeros((BLOCK, H), dtype)
    for jj in range(SLOTS):
        j = split * SLOTS + jj
        nbr = tl.load(nbr_ptr + j * N_PAD + rows)
        d = tl.load(d_ptr + j * N_PAD + rows)
        valid = (nbr >= 0) & (nbr < NUM_ATOMS)
        within = valid & (d <= CUTOFF)
        g_d = tl.zeros((BLOCK,), dtype)
        g_u0 = tl.zeros((BLOCK,), dtype)
        g_u1 = tl.zeros((BLOCK,), dtype)
        g_u2 = tl.zeros((BLOCK,), dtype)
        if tl.max(within.to(tl.int32), axis=0) > 0:
            m = within[:, None]
            idx = tl.where(valid, nbr, 0)
            gather = idx[:, None] * H + hc[None, :]
            e, de = _radial(d[:, None], mu, width, CUTOFF)
            ws, wv1, wv2 = _filter(e, m, w1_ptr, b1_ptr, w2_ptr, b2_ptr, H, K, KC, PRECISION)
            u0 = tl.load(u_ptr + j * N_PAD + rows)[:, None]
            u1 = tl.load(u_ptr + (CAPACITY + j) * N_PAD + rows)[:, None]
            u2 = tl.load(u_ptr + (2 * CAPACITY + j) * N_PAD + rows)[:, None]
            env = tl.full((BLOCK, 1), 1.0, dtype)
            denv = tl.zeros((BLOCK, 1), dtype)
            g_dot_w = tl.zeros((BLOCK, H), dtype)
            if ENVELOPE:  # W = env(d) W_net: dL/dd gains env' (dL/dW . W_net), taken while W_net is at hand
                env, denv = _envelope(d[:, None], CUTOFF)
                g_dot_w = tl.load(gs_ptr + own) * tl.load(s_ptr + gather) * ws
                g_dot_w += tl.load(gv_ptr + own) * (tl.load(v_ptr + gather) * wv1 + u0 * wv2)
                g_dot_w += tl.load(gv_ptr + N_PAD * H + own) * (tl.load(v_ptr + N_PAD * H + gather) * wv1 + u1 * wv2)
                g_dot_w += tl.load(gv_ptr + 2 * N_PAD * H + own) * (tl.load(v_ptr + 2 * N_PAD * H + gather) * wv1 + u2 * wv2)
                ws = ws * env
                wv1 = wv1 * env
                wv2 = wv2 * env
            # (ii) the reverse edge: sender cotangents gathered from the neighbours' rows
            acc_s += tl.load(gs_ptr + gather) * ws
            acc_v0 += tl.load(gv_ptr + gather) * wv1
            acc_v1 += tl.load(gv_ptr + N_PAD * H + gather) * wv1
            acc_v2 += tl.load(gv_ptr + 2 * N_PAD * H + gather) * wv1
            # (i) this slot's edge: cotangent of the direction ...
            g_u0 = tl.sum(tl.load(gv_ptr + own) * wv2, axis=1)
            g_u1 = tl.sum(tl.load(gv_ptr + N_PAD * H + own) * wv2, axis=1)
            g_u2 = tl.sum(tl.load(gv_ptr + 2 * N_PAD * H + own) * wv2, axis=1)
            # ... and of the hidden layer, g_h = g_W @ W2^T contracted in chunks of KC (built from memory)
            g_h = tl.zeros((BLOCK, H), dtype)
            for c in tl.static_range(H // KC):
                cols = c * KC + cc
                own_c = rows[:, None] * H + cols[None, :]
                gather_c = idx[:, None] * H + cols[None, :]
                gv0 = tl.load(gv_ptr + own_c)
                gv1 = tl.load(gv_ptr + N_PAD * H + own_c)
                gv2 = tl.load(gv_ptr + 2 * N_PAD * H + own_c)
                g_ws = tl.where(m, tl.load(gs_ptr + own_c) * tl.load(s_ptr + gather_c), 0.0)
                g_wv1 = gv0 * tl.load(v_ptr + gather_c) + gv1 * tl.load(v_ptr + N_PAD * H + gather_c)
                g_wv1 = tl.where(m, g_wv1 + gv2 * tl.load(v_ptr + 2 * N_PAD * H + gather_c), 0.0)
                g_wv2 = tl.where(m, gv0 * u0 + gv1 * u1 + gv2 * u2, 0.0)
                rows_c = cols[:, None] * H + hc[None, :]
                g_h += _mm(g_ws, tl.load(w2t_ptr + rows_c), PRECISION)
                g_h += _mm(g_wv1, tl.load(w2t_ptr + H * H + rows_c), PRECISION)
                g_h += _mm(g_wv2, tl.load(w2t_ptr + 2 * H * H + rows_c), PRECISION)
            # d(hidden)/dd = SiLU'(pre) * (e'(d) @ W1)
            w1 = tl.load(w1_ptr + kc[:, None] * H + hc[None, :])
            pre = _mm(e, w1, PRECISION) + b1
            sig = tl.sigmoid(pre)
            g_dd = g_h * (sig * (1.0 + pre * (1.0 - sig))) * _mm(de, w1, PRECISION)
            if ENVELOPE:  # g_h is dL/d(hidden) of env W_net: scaled by env ([B, 1] columns: no indexing in Triton)
                g_dd = g_dd * env + g_dot_w * denv
            g_d = tl.sum(g_dd, axis=1)
        tl.store(gd_ptr + j * N_PAD + rows, g_d)
        tl.store(gu_ptr + j * N_PAD + rows, g_u0)
        tl.store(gu_ptr + (CAPACITY + j) * N_PAD + rows, g_u1)
        tl.store(gu_ptr + (2 * CAPACITY + j) * N_PAD + rows, g_u2)
    tl.store(gs_out_ptr + own, acc_s)
    tl.store(gv_out_ptr + own, acc_v0)
    tl.store(gv_out_ptr + N_PAD * H + own, acc_v1)
    tl.store(gv_out_ptr + 2 * N_PAD * H + own, acc_v2)


# ----------------------------------------------------------------------------- compressed blocks
# The filter from its table (see ``pallas_table``: same formulas, same packed layout [3, 4G, H], row
# 4i + k holding coefficient c_k of interval i). No matmul is left in these kernels.
@triton.jit
def _interval(d, G: tl.constexpr, SPACING: tl.constexpr):
    """Interval index i [B] and local coordinate t [B, 1] of d [B] (as ``radial_table``)."""
    x = tl.minimum(tl.maximum(d / SPACING, 0.0), G * 1.0)
    i = tl.minimum(tl.maximum(tl.floor(x).to(tl.int32), 0), G - 1)
    return i, (x - i.to(x.dtype))[:, None]


@triton.jit
def _table_value(coef_ptr, lo, t, H: tl.constexpr):
    c0, c1, c2, c3 = tl.load(coef_ptr + lo), tl.load(coef_ptr + lo + H), tl.load(coef_ptr + lo + 2 * H), tl.load(coef_ptr + lo + 3 * H)
    return c0 + t * (c1 + t * (c2 + t * c3))


@triton.jit
def _table_derivative(coef_ptr, lo, t, H: tl.constexpr, SPACING: tl.constexpr):
    c1, c2, c3 = tl.load(coef_ptr + lo + H), tl.load(coef_ptr + lo + 2 * H), tl.load(coef_ptr + lo + 3 * H)
    return (c1 + t * (2 * c2 + t * (3 * c3))) / SPACING


@triton.jit
def _table_filter(d, m, coef_ptr, G: tl.constexpr, SPACING: tl.constexpr, H: tl.constexpr):
    """(Ws, Wv1, Wv2) [B, H] at d [B], masked by m [B, 1]."""
    i, t = _interval(d, G, SPACING)
    lo = (4 * i)[:, None] * H + tl.arange(0, H)[None, :]
    part = 4 * G * H
    ws = _table_value(coef_ptr, lo, t, H)
    wv1 = _table_value(coef_ptr + part, lo, t, H)
    wv2 = _table_value(coef_ptr + 2 * part, lo, t, H)
    return tl.where(m, ws, 0.0), tl.where(m, wv1, 0.0), tl.where(m, wv2, 0.0)


@triton.jit
def _table_slope(d, m, coef_ptr, G: tl.constexpr, SPACING: tl.constexpr, H: tl.constexpr):
    """d(Ws, Wv1, Wv2)/dd [B, H] at d [B], masked by m [B, 1]."""
    i, t = _interval(d, G, SPACING)
    lo = (4 * i)[:, None] * H + tl.arange(0, H)[None, :]
    part = 4 * G * H
    dws = _table_derivative(coef_ptr, lo, t, H, SPACING)
    dwv1 = _table_derivative(coef_ptr + part, lo, t, H, SPACING)
    dwv2 = _table_derivative(coef_ptr + 2 * part, lo, t, H, SPACING)
    return tl.where(m, dws, 0.0), tl.where(m, dwv1, 0.0), tl.where(m, dwv2, 0.0)


@triton.jit
def _forward_table_kernel(
    nbr_ptr, d_ptr, u_ptr, s_ptr, v_ptr, coef_ptr,
    ds_ptr, dv_ptr,
    N_PAD: tl.constexpr, CAPACITY: tl.constexpr, SLOTS: tl.constexpr, NUM_ATOMS: tl.constexpr, CUTOFF: tl.constexpr,
    BLOCK: tl.constexpr, H: tl.constexpr, G: tl.constexpr, SPACING: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    split = tl.program_id(1)
    ds_ptr += split * N_PAD * H
    dv_ptr += split * 3 * N_PAD * H
    hc = tl.arange(0, H)
    dtype = s_ptr.dtype.element_ty
    ds = tl.zeros((BLOCK, H), dtype)
    dv0 = tl.zeros((BLOCK, H), dtype)
    dv1 = tl.zeros((BLOCK, H), dtype)
    dv2 = tl.zeros((BLOCK, H), dtype)
    for jj in range(SLOTS):
        j = split * SLOTS + jj
        nbr = tl.load(nbr_ptr + j * N_PAD + rows)
        d = tl.load(d_ptr + j * N_PAD + rows)
        valid = (nbr >= 0) & (nbr < NUM_ATOMS)
        within = valid & (d <= CUTOFF)
        if tl.max(within.to(tl.int32), axis=0) > 0:
            gather = tl.where(valid, nbr, 0)[:, None] * H + hc[None, :]
            ws, wv1, wv2 = _table_filter(d, within[:, None], coef_ptr, G, SPACING, H)
            ds += tl.load(s_ptr + gather) * ws
            u0 = tl.load(u_ptr + j * N_PAD + rows)[:, None]
            u1 = tl.load(u_ptr + (CAPACITY + j) * N_PAD + rows)[:, None]
            u2 = tl.load(u_ptr + (2 * CAPACITY + j) * N_PAD + rows)[:, None]
            dv0 += tl.load(v_ptr + gather) * wv1 + u0 * wv2
            dv1 += tl.load(v_ptr + N_PAD * H + gather) * wv1 + u1 * wv2
            dv2 += tl.load(v_ptr + 2 * N_PAD * H + gather) * wv1 + u2 * wv2
    out = rows[:, None] * H + hc[None, :]
    tl.store(ds_ptr + out, ds)
    tl.store(dv_ptr + out, dv0)
    tl.store(dv_ptr + N_PAD * H + out, dv1)
    tl.store(dv_ptr + 2 * N_PAD * H + out, dv2)


@triton.jit
def _backward_table_kernel(
    nbr_ptr, d_ptr, u_ptr, s_ptr, v_ptr, gs_ptr, gv_ptr, coef_ptr,
    gs_out_ptr, gv_out_ptr, gd_ptr, gu_ptr,
    N_PAD: tl.constexpr, CAPACITY: tl.constexpr, SLOTS: tl.constexpr, NUM_ATOMS: tl.constexpr, CUTOFF: tl.constexpr,
    BLOCK: tl.constexpr, H: tl.constexpr, G: tl.constexpr, SPACING: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    split = tl.program_id(1)
    gs_out_ptr += split * N_PAD * H
    gv_out_ptr += split * 3 * N_PAD * H
    hc = tl.arange(0, H)
    own = rows[:, None] * H + hc[None, :]
    dtype = s_ptr.dtype.element_ty
    acc_s = tl.zeros((BLOCK, H), dtype)
    acc_v0 = tl.zeros((BLOCK, H), dtype)
    acc_v1 = tl.zeros((BLOCK, H), dtype)
    acc_v2 = tl.zeros((BLOCK, H), dtype)
    for jj in range(SLOTS):
        j = split * SLOTS + jj
        nbr = tl.load(nbr_ptr + j * N_PAD + rows)
        d = tl.load(d_ptr + j * N_PAD + rows)
        valid = (nbr >= 0) & (nbr < NUM_ATOMS)
        within = valid & (d <= CUTOFF)
        g_d = tl.zeros((BLOCK,), dtype)
        g_u0 = tl.zeros((BLOCK,), dtype)
        g_u1 = tl.zeros((BLOCK,), dtype)
        g_u2 = tl.zeros((BLOCK,), dtype)
        if tl.max(within.to(tl.int32), axis=0) > 0:
            m = within[:, None]
            gather = tl.where(valid, nbr, 0)[:, None] * H + hc[None, :]
            ws, wv1, wv2 = _table_filter(d, m, coef_ptr, G, SPACING, H)
            # (ii) the reverse edge: sender cotangents gathered from the neighbours' rows
            acc_s += tl.load(gs_ptr + gather) * ws
            acc_v0 += tl.load(gv_ptr + gather) * wv1
            acc_v1 += tl.load(gv_ptr + N_PAD * H + gather) * wv1
            acc_v2 += tl.load(gv_ptr + 2 * N_PAD * H + gather) * wv1
            # (i) this slot's edge: direction and distance cotangents (W' masked already)
            gv0 = tl.load(gv_ptr + own)
            gv1 = tl.load(gv_ptr + N_PAD * H + own)
            gv2 = tl.load(gv_ptr + 2 * N_PAD * H + own)
            g_u0 = tl.sum(gv0 * wv2, axis=1)
            g_u1 = tl.sum(gv1 * wv2, axis=1)
            g_u2 = tl.sum(gv2 * wv2, axis=1)
            u0 = tl.load(u_ptr + j * N_PAD + rows)[:, None]
            u1 = tl.load(u_ptr + (CAPACITY + j) * N_PAD + rows)[:, None]
            u2 = tl.load(u_ptr + (2 * CAPACITY + j) * N_PAD + rows)[:, None]
            dws, dwv1, dwv2 = _table_slope(d, m, coef_ptr, G, SPACING, H)
            g_w = tl.load(gs_ptr + own) * tl.load(s_ptr + gather) * dws
            g_w += gv0 * (tl.load(v_ptr + gather) * dwv1 + u0 * dwv2)
            g_w += gv1 * (tl.load(v_ptr + N_PAD * H + gather) * dwv1 + u1 * dwv2)
            g_w += gv2 * (tl.load(v_ptr + 2 * N_PAD * H + gather) * dwv1 + u2 * dwv2)
            g_d = tl.sum(g_w, axis=1)
        tl.store(gd_ptr + j * N_PAD + rows, g_d)
        tl.store(gu_ptr + j * N_PAD + rows, g_u0)
        tl.store(gu_ptr + (CAPACITY + j) * N_PAD + rows, g_u1)
        tl.store(gu_ptr + (2 * CAPACITY + j) * N_PAD + rows, g_u2)
    tl.store(gs_out_ptr + own, acc_s)
    tl.store(gv_out_ptr + own, acc_v0)
    tl.store(gv_out_ptr + N_PAD * H + own, acc_v1)
    tl.store(gv_out_ptr + 2 * N_PAD * H + own, acc_v2)


def _constants(packed: Packed, s_pad, cfg: KernelConfig):
    capacity, n_pad = packed.neighbors.shape
    common = dict(N_PAD=n_pad, CAPACITY=capacity, SLOTS=capacity // cfg.slot_splits, NUM_ATOMS=cfg.num_atoms, CUTOFF=float(cfg.cutoff),
                  BLOCK=cfg.block_atoms, H=s_pad.shape[1])  # fmt: skip
    if cfg.table_intervals:
        return dict(common, G=cfg.table_intervals, SPACING=float(cfg.cutoff) / cfg.table_intervals)
    if s_pad.dtype == jnp.float64:
        precision = "f64"
    else:
        precision = {"highest": "ieee", "tf32x3": "tf32x3", "tf32": "tf32", "bf16": "bf16"}[cfg.precision]
    return dict(common, K=packed.w1.shape[0], KC=cfg.k_chunk, PRECISION=precision, ENVELOPE=int(cfg.envelope is not None))


def _launch(kernel, name, args, out_shape, packed, s_pad, cfg):
    n_pad = packed.neighbors.shape[1]
    return jt.triton_call(
        *args,
        kernel=kernel,
        out_shape=out_shape,
        grid=(n_pad // cfg.block_atoms, cfg.slot_splits),
        name=name,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **_constants(packed, s_pad, cfg),
    )


def forward(packed: Packed, s_pad, v_pad, cfg: KernelConfig):
    """(ds [Np, Hp], dv [3, Np, Hp]) from kernel-layout inputs (as ``pallas.forward``)."""
    p = packed
    splits = cfg.slot_splits
    out_shape = [jax.ShapeDtypeStruct((splits, *s_pad.shape), s_pad.dtype), jax.ShapeDtypeStruct((splits, *v_pad.shape), s_pad.dtype)]
    if cfg.table_intervals:
        args = (p.neighbors, p.distances, p.directions, s_pad, v_pad, p.table_coefficients)
        ds, dv = _launch(_forward_table_kernel, "painn_message_table_fwd_triton", args, out_shape, p, s_pad, cfg)
        return sum_splits(ds), sum_splits(dv)
    args = (p.neighbors, p.distances, p.directions, s_pad, v_pad, p.w1, p.b1, p.w2, p.b2, p.centers, p.widths)
    ds, dv = _launch(_forward_kernel, "painn_message_fwd_triton", args, out_shape, p, s_pad, cfg)
    return sum_splits(ds), sum_splits(dv)


def backward(packed: Packed, s_pad, v_pad, gs_pad, gv_pad, cfg: KernelConfig):
    """(g_s [Np, Hp], g_v [3, Np, Hp], g_d [C, Np], g_dir [3, C, Np]) (as ``pallas.backward``)."""
    p = packed
    dtype = s_pad.dtype
    splits = cfg.slot_splits
    out_shape = [
        jax.ShapeDtypeStruct((splits, *s_pad.shape), dtype),
        jax.ShapeDtypeStruct((splits, *v_pad.shape), dtype),
        jax.ShapeDtypeStruct(p.distances.shape, dtype),
        jax.ShapeDtypeStruct(p.directions.shape, dtype),
    ]
    if cfg.table_intervals:
        args = (p.neighbors, p.distances, p.directions, s_pad, v_pad, gs_pad, gv_pad, p.table_coefficients)
        g_s, g_v, g_d, g_u = _launch(_backward_table_kernel, "painn_message_table_bwd_triton", args, out_shape, p, s_pad, cfg)
        return sum_splits(g_s), sum_splits(g_v), g_d, g_u
    w2t = jnp.transpose(p.w2, (0, 2, 1))
    args = (p.neighbors, p.distances, p.directions, s_pad, v_pad, gs_pad, gv_pad, p.w1, p.b1, p.w2, p.b2, w2t, p.centers, p.widths)
    g_s, g_v, g_d, g_u = _launch(_backward_kernel, "painn_message_bwd_triton", args, out_shape, p, s_pad, cfg)
    return sum_splits(g_s), sum_splits(g_v), g_d, g_u

