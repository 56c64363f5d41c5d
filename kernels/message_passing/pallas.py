"""Pallas kernels (Triton lowering) for one PaiNN message block and its backward.

Both kernels run one program per block of ``block_atoms`` receivers and loop over the C neighbour
slots; each iteration handles slot j of every receiver of the block at once (rows = receivers):

    forward   e(d) -> filter net (matmuls contracting over at most 16 hidden units at a time)
              -> gather s_a, v_a -> accumulate ds, dv
    backward  the same filter net, then
              (i)  slot (b, j) as the edge a -> b: cotangents of its distance and direction, from
                   the receiver's own cotangents (g_ds_b, g_dv_b) and the gathered s_a, v_a;
              (ii) the same slot read as the reverse edge b -> a: g_s_a += g_ds_b * Ws and
                   g_v_a += g_dv_b * Wv1 accumulated in the program of a, from gathered g_ds_b,
                   g_dv_b. The filter of an edge depends only on its length, and the reverse edge
                   has the same length (exactly, see ``layout.slot_geometry``), so the row of a
                   already holds every filter value its sender cotangent needs: the transpose of
                   the message operator is a gather over the same full neighbour list.

Every output element is written by exactly one program: no atomics, deterministic results.
Outputs of the filter net are never stored (recomputed in the backward), so memory is O(N C)
for the geometry plus O(N H) for features, never O(N C H).

Internal layout (built by :func:`pack`): slots are slot-major ([C, N_pad], so one slot of a block of
receivers is a contiguous row), vector features component-major ([3, N_pad, H_pad]), H and K padded
to powers of two >= 16 (Triton block shapes and ``tl.dot``), N padded to a multiple of the block.
Padding is zeros (features, weights) so padded columns and rows contribute exactly zero.

Triton lowering is chosen explicitly (``plt.CompilerParams``): since JAX 0.10 an un-parametrised
``pallas_call`` on GPU lowers to Mosaic GPU instead.
"""


from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Shared with pallas_table (re-exported here: KernelConfig, Packed, the defaults and sizes are this module's API).
from .pallas_common import (  # noqa: F401
    MAX_HIDDEN,
    MIN_DIM,
    SMEM_LIMIT_BYTES,
    TARGET_PROGRAMS,
    KernelConfig,
    Packed,
    backward_outputs,
    backward_slot,
    block_specs,
    default_block_atoms,
    default_k_chunk,
    default_num_warps,
    default_slot_splits,
    feature_outputs,
    launch,
    next_power_of_two,
    pad_to,
    padded_sizes,
    read_slot,
    sum_over_slots,
    sum_splits,
    whole,
)
from .pallas_table import backward_table, forward_table, pack_table


def pack(neighbors, distances, directions, block, centers, widths, cfg: KernelConfig) -> Packed:
    """Geometry and filter parameters in the kernel layout (padded, slot-major)."""
    n, c = neighbors.shape
    k, h = block["filter_in"]["kernel"].shape
    n_pad, h_pad, k_pad = padded_sizes(n, h, k, cfg.block_atoms)
    c_pad = -(-c // cfg.slot_splits) * cfg.slot_splits  # empty slots make every split equally long
    valid = (neighbors >= 0) & (neighbors < n)
    nbr = pad_to(jnp.where(valid, neighbors, n).astype(jnp.int32), (n_pad, c_pad), n).T
    d = pad_to(jnp.where(valid, distances, cfg.cutoff), (n_pad, c_pad), cfg.cutoff).T
    u = jnp.transpose(pad_to(jnp.where(valid[..., None], directions, 0.0), (n_pad, c_pad, 3)), (2, 1, 0))
    if cfg.table_intervals:
        return Packed(nbr, d, u, None, None, None, None, None, None, table_coefficients=pack_table(block["filter_table"], h_pad))
    w2 = block["filter_out"]["kernel"].reshape(h, 3, h).transpose(1, 0, 2)
    return Packed(
        neighbors=nbr,
        distances=d,
        directions=u,
        w1=pad_to(block["filter_in"]["kernel"], (k_pad, h_pad)),
        b1=pad_to(block["filter_in"]["bias"][None, :], (1, h_pad)),
        w2=pad_to(w2, (3, h_pad, h_pad)),
        b2=pad_to(block["filter_out"]["bias"].reshape(3, 1, h), (3, 1, h_pad)),
        centers=pad_to(centers[None, :], (1, k_pad)),
        widths=pad_to(widths[None, :], (1, k_pad), 1.0),  # padded Gaussians stay finite; W1 rows are 0
    )


def pack_features(s, v, n_pad: int, h_pad: int):
    """s [N, H] -> [Np, Hp]; v [N, 3, H] -> [3, Np, Hp]."""
    return pad_to(s, (n_pad, h_pad)), pad_to(jnp.transpose(v, (1, 0, 2)), (3, n_pad, h_pad))


# ----------------------------------------------------------------------------- kernel bodies
def _radial(d, mu, width, cutoff):
    """e(d) [B, Kp] and de/dd [B, Kp] for d [B, 1]; the formulas of ``painn.radial_features``."""
    diff = d - mu
    phi = jnp.exp(-(diff**2) / width**2)
    inside = d < cutoff
    fc = jnp.where(inside, 0.5 * (jnp.cos(jnp.pi * d / cutoff) + 1.0), 0.0)
    dfc = jnp.where(inside, -0.5 * (jnp.pi / cutoff) * jnp.sin(jnp.pi * d / cutoff), 0.0)
    dphi = phi * (-2.0 * diff / width**2)
    return phi * fc, dphi * fc + phi * dfc


def _envelope(d, cutoff):
    """env(d) and env'(d) [B, 1] of ``painn.polynomial_envelope`` (same factored form, plain multiplies)."""
    x = d / cutoff
    inside = x < 1.0
    one_minus = 1.0 - x
    cube = one_minus * one_minus * one_minus
    env = cube * (1.0 + x * (3.0 + x * (6.0 + x * (10.0 + x * (15.0 + 21.0 * x)))))
    x2 = x * x
    denv = -168.0 / cutoff * (x2 * x2 * x) * (one_minus * one_minus)
    return jnp.where(inside, env, 0.0), jnp.where(inside, denv, 0.0)



def _chunks(cfg, hidden):
    """Static column slices of the hidden dimension, ``cfg.k_chunk`` wide."""
    return [slice(c, c + cfg.k_chunk) for c in range(0, hidden, cfg.k_chunk)]


def _filter(e, within, w1_ref, b1_ref, w2_ref, b2_ref, cfg):
    """(Ws, Wv1, Wv2) [B, H], masked: Linear2(SiLU(Linear1(e))).

    Every matmul that contracts over H does so in chunks of ``cfg.k_chunk`` hidden units (the hidden
    layer is computed chunk by chunk): Triton's float32 FMA matmul holds a K-deep slice of both
    operands in registers, and K = 128 would spill (see ``KernelConfig.k_chunk``).
    """
    outs = [None, None, None]
    for cols in _chunks(cfg, w1_ref.shape[1]):
        h = jax.nn.silu(cfg.dot(e, w1_ref[:, cols]) + b1_ref[:, cols])
        for p in range(3):
            term = cfg.dot(h, w2_ref[p, cols, :])
            outs[p] = term if outs[p] is None else outs[p] + term
    return [jnp.where(within, out + b2_ref[p], 0.0) for p, out in enumerate(outs)]


def _forward_kernel(nbr_ref, d_ref, u_ref, s_ref, v_ref, w1_ref, b1_ref, w2_ref, b2_ref, mu_ref, width_ref, ds_ref, dv_ref, *, cfg, capacity):
    mu, width = mu_ref[...], width_ref[...]

    def body(k, carry):
        idx, d, within, any_within = read_slot(nbr_ref, d_ref, k, cfg.num_atoms, cfg.cutoff)

        def accumulate(carry):
            ds, dv0, dv1, dv2 = carry
            e, _ = _radial(d, mu, width, cfg.cutoff)
            ws, wv1, wv2 = _filter(e, within, w1_ref, b1_ref, w2_ref, b2_ref, cfg)
            if cfg.envelope is not None:
                env, _ = _envelope(d, cfg.cutoff)
                ws, wv1, wv2 = ws * env, wv1 * env, wv2 * env
            ds = ds + s_ref[idx, :] * ws
            dv = [acc + v_ref[i, idx, :] * wv1 + u_ref[i, k, :][:, None] * wv2 for i, acc in enumerate((dv0, dv1, dv2))]
            return (ds, *dv)

        return jax.lax.cond(any_within, accumulate, lambda c: c, carry)

    sum_over_slots(body, capacity, ds_ref, dv_ref)


def _backward_kernel(
    nbr_ref, d_ref, u_ref, s_ref, v_ref, gs_ref, gv_ref, gs_own_ref, gv_own_ref,
    w1_ref, b1_ref, w2_ref, b2_ref, w2t_ref, mu_ref, width_ref,
    gs_out_ref, gv_out_ref, gd_ref, gu_ref, *, cfg, capacity,
):  # fmt: skip
    hidden = gs_out_ref.shape[1]
    mu, width = mu_ref[...], width_ref[...]

    def body(k, carry):
        idx, d, within, any_within = read_slot(nbr_ref, d_ref, k, cfg.num_atoms, cfg.cutoff)

        def slot_gradients(carry):
            acc_s, acc_v0, acc_v1, acc_v2 = carry
            e, de = _radial(d, mu, width, cfg.cutoff)
            ws, wv1, wv2 = _filter(e, within, w1_ref, b1_ref, w2_ref, b2_ref, cfg)
            u = [u_ref[i, k, :][:, None] for i in range(3)]
            if cfg.envelope is not None:
                # W = env(d) W_net: dL/dd gains env' (dL/dW . W_net), taken here while W_net is at hand
                # (full-width elementwise products; W_net is zero outside the cutoff already).
                env, denv = _envelope(d, cfg.cutoff)
                g_dot_w = gs_own_ref[...] * s_ref[idx, :] * ws
                for i in range(3):
                    g_dot_w = g_dot_w + gv_own_ref[i] * (v_ref[i, idx, :] * wv1 + u[i] * wv2)
                ws, wv1, wv2 = ws * env, wv1 * env, wv2 * env
            # (ii) reverse edge: sender cotangents gathered from the neighbours' rows.
            acc_s = acc_s + gs_ref[idx, :] * ws
            acc_v = [acc + gv_ref[i, idx, :] * wv1 for i, acc in enumerate((acc_v0, acc_v1, acc_v2))]
            # (i) this slot's edge a -> b: the direction's cotangent ...
            g_dir = [jnp.sum(gv_own_ref[i] * wv2, axis=1) for i in range(3)]
            # ... and g_h = dL/d(hidden layer) = g_W @ W2^T, contracting over H in chunks of the
            # cotangent of W = (Ws, Wv1, Wv2), which is built chunk by chunk from memory.
            g_h = None
            for cols in _chunks(cfg, hidden):
                g_ws = jnp.where(within, gs_own_ref[:, cols] * s_ref[idx, cols], 0.0)
                g_wv1 = sum(gv_own_ref[i, :, cols] * v_ref[i, idx, cols] for i in range(3))
                g_wv2 = sum(gv_own_ref[i, :, cols] * u[i] for i in range(3))
                term = (
                    cfg.dot(g_ws, w2t_ref[0, cols, :])
                    + cfg.dot(jnp.where(within, g_wv1, 0.0), w2t_ref[1, cols, :])
                    + cfg.dot(jnp.where(within, g_wv2, 0.0), w2t_ref[2, cols, :])
                )
                g_h = term if g_h is None else g_h + term
            # d(hidden)/dd = SiLU'(pre) * (e'(d) @ W1): no matmul over H needed for the distance.
            pre = cfg.dot(e, w1_ref[...]) + b1_ref[...]
            sig = jax.nn.sigmoid(pre)
            dh_dd = sig * (1.0 + pre * (1.0 - sig)) * cfg.dot(de, w1_ref[...])
            g_dd = g_h * dh_dd
            if cfg.envelope is not None:  # g_h above is dL/d(hidden) of env W_net: scale by env ([B, 1] columns, no indexing)
                g_dd = env * g_dd + denv * g_dot_w
            g_d = jnp.sum(g_dd, axis=1)
            return (acc_s, *acc_v), (g_d, *g_dir)

        return backward_slot(k, any_within, slot_gradients, carry, gd_ref, gu_ref, gs_out_ref.dtype)

    sum_over_slots(body, capacity, gs_out_ref, gv_out_ref)


# ----------------------------------------------------------------------------- launches
# Grid (receiver blocks i, slot splits j). Program (i, j) reads slots [j C_pad / S, (j + 1) C_pad / S)
# of receivers [i B, (i + 1) B) and writes its partial feature sums into split j of the outputs.
def _weights_specs(packed: Packed, h_pad: int):
    k_pad = packed.w1.shape[0]
    return [whole((k_pad, h_pad)), whole((1, h_pad)), whole((3, h_pad, h_pad)), whole((3, 1, h_pad))]


def forward(packed: Packed, s_pad, v_pad, cfg: KernelConfig):
    """(ds [Np, Hp], dv [3, Np, Hp]) from kernel-layout inputs."""
    if cfg.table_intervals:
        return forward_table(packed, s_pad, v_pad, cfg)
    n_pad, h_pad = s_pad.shape
    sp = block_specs(packed, h_pad, cfg)
    k_pad = packed.w1.shape[0]
    in_specs = [sp["slots"], sp["slots"], sp["slot_vectors"], whole((n_pad, h_pad)), whole((3, n_pad, h_pad))]
    in_specs += _weights_specs(packed, h_pad) + [whole((1, k_pad)), whole((1, k_pad))]
    out_specs, out_shape = feature_outputs(sp, n_pad, h_pad, cfg, s_pad.dtype)
    kernel = functools.partial(_forward_kernel, cfg=cfg, capacity=sp["capacity"])
    p = packed
    ds, dv = launch(kernel, "painn_message_fwd", out_shape, in_specs, out_specs, n_pad, cfg,
                     p.neighbors, p.distances, p.directions, s_pad, v_pad, p.w1, p.b1, p.w2, p.b2, p.centers, p.widths)  # fmt: skip
    return sum_splits(ds), sum_splits(dv)


def backward(packed: Packed, s_pad, v_pad, gs_pad, gv_pad, cfg: KernelConfig):
    """Cotangents (g_s [Np, Hp], g_v [3, Np, Hp], g_d [C_pad, Np], g_dir [3, C_pad, Np]) in kernel layout."""
    if cfg.table_intervals:
        return backward_table(packed, s_pad, v_pad, gs_pad, gv_pad, cfg)
    n_pad, h_pad = s_pad.shape
    c_pad = packed.neighbors.shape[0]
    sp = block_specs(packed, h_pad, cfg)
    k_pad = packed.w1.shape[0]
    in_specs = [sp["slots"], sp["slots"], sp["slot_vectors"], whole((n_pad, h_pad)), whole((3, n_pad, h_pad)),
                whole((n_pad, h_pad)), whole((3, n_pad, h_pad)), sp["rows"], sp["vector_rows"]]  # fmt: skip
    in_specs += _weights_specs(packed, h_pad) + [whole((3, h_pad, h_pad)), whole((1, k_pad)), whole((1, k_pad))]
    out_specs, out_shape = backward_outputs(sp, n_pad, h_pad, c_pad, cfg, s_pad.dtype)
    kernel = functools.partial(_backward_kernel, cfg=cfg, capacity=sp["capacity"])
    p = packed
    w2t = jnp.transpose(p.w2, (0, 2, 1))
    g_s, g_v, g_d, g_u = launch(kernel, "painn_message_bwd", out_shape, in_specs, out_specs, n_pad, cfg,
                                 p.neighbors, p.distances, p.directions, s_pad, v_pad, gs_pad, gv_pad, gs_pad, gv_pad,
                                 p.w1, p.b1, p.w2, p.b2, w2t, p.centers, p.widths)  # fmt: skip
    return sum_splits(g_s), sum_splits(g_v), g_d, g_u
