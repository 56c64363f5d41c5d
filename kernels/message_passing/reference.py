"""One PaiNN message block on the dense neighbour layout, in plain JAX (the definition).

For each receiver b and slot j with sender a = neighbors[b, j] (layout in :mod:`.layout`):

    e      = rbf(d[b, j])                                   [K]   Gaussians x cosine cutoff
    W      = Linear2(SiLU(Linear1(e))) * within[b, j]        [3H]  = (Ws, Wv1, Wv2)
             (times env(d[b, j]) with the optional filter envelope)
    ds_b  += s_a * Ws
    dv_b  += v_a * Wv1 + dir[b, j] (x) Wv2                   [3, H]

``within`` is False on empty slots (neighbors == N) and beyond the cutoff (d > rc): those slots
contribute exactly zero. A compressed block (``filter_table``, :mod:`mlff_jax.compress`) replaces the
filter network by its cubic Hermite table, exactly as ``mlff_jax.painn.atomic_energies`` does. This is ``mlff_jax.painn.filter_weights`` + ``message`` on the same graph
(tested), written as gathers and a sum over slots instead of a segment sum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mlff_jax.painn import polynomial_envelope, radial_features
from mlff_jax.radial_table import tabulated_filter

PRECISIONS = ("highest", "tf32x3", "tf32", "bf16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def matmul(x: jax.Array, w: jax.Array, precision: str = "highest", tensor_cores: bool | None = None) -> jax.Array:
    """x @ w in the kernels' precision modes (float64 inputs are always exact float64).

    ``highest``: full float32 (IEEE) products, the default. Opt-in faster modes, all with float32
    accumulation: ``tf32x3``: three TF32 passes (split-float trick; ~float32 accuracy on tensor
    cores); ``tf32``: one TF32 pass (10-bit mantissa inputs); ``bf16``: bfloat16 inputs (8-bit
    mantissa). Where TF32 does not exist (CPU, Pallas interpret mode: ``tensor_cores=False``;
    default: the default backend is a GPU) ``tf32``/``tf32x3`` compute in full float32; ``bf16``
    is emulated bit for bit everywhere.
    """
    if x.dtype != jnp.float32:
        return jnp.dot(x, w, precision=jax.lax.Precision.HIGHEST)
    if precision == "bf16":
        return jnp.dot(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
    if tensor_cores is None:
        tensor_cores = jax.default_backend() == "gpu"
    if precision == "highest" or not tensor_cores:
        return jnp.dot(x, w, precision=jax.lax.Precision.HIGHEST)
    if precision == "tf32":
        return jnp.dot(x, w, precision=jax.lax.DotAlgorithmPreset.TF32_TF32_F32, preferred_element_type=jnp.float32)
    return jnp.dot(x, w, precision=jax.lax.DotAlgorithmPreset.TF32_TF32_F32_X3, preferred_element_type=jnp.float32)


def filter_network(block, rbf: jax.Array, precision: str = "highest", tensor_cores: bool | None = None) -> jax.Array:
    """W = Linear2(SiLU(Linear1(rbf))), unmasked: [..., K] -> [..., 3H]."""
    hidden = jax.nn.silu(matmul(rbf, block["filter_in"]["kernel"], precision, tensor_cores) + block["filter_in"]["bias"])
    return matmul(hidden, block["filter_out"]["kernel"], precision, tensor_cores) + block["filter_out"]["bias"]


def slot_masks(neighbors: jax.Array, distances: jax.Array, cutoff: float):
    """(valid [N, C]: non-empty slots, within [N, C]: valid and d <= cutoff)."""
    num_atoms = neighbors.shape[0]
    valid = (neighbors >= 0) & (neighbors < num_atoms)
    return valid, valid & (distances <= cutoff)


def message_block_reference(
    s: jax.Array,
    v: jax.Array,
    neighbors: jax.Array,
    distances: jax.Array,
    directions: jax.Array,
    block,
    rbf_centers: jax.Array,
    rbf_widths: jax.Array,
    cutoff: float,
    precision: str = "highest",
    tensor_cores: bool | None = None,
    envelope: str | None = None,
):
    """The message increments of one block.

    Args:
      s: [N, H] scalar features; v: [N, 3, H] vector features.
      neighbors: [N, C] int, sentinel N; distances: [N, C] Å; directions: [N, C, 3].
      block: this block's parameters (uses ``filter_in`` Dense K -> H, ``filter_out`` Dense H -> 3H,
        or, when present, ``filter_table`` {coefficients} [G, 4, 3H] instead).
      rbf_centers, rbf_widths: [K] Å; cutoff: rc in Å.
      precision, tensor_cores: float32 matmul mode (see :func:`matmul`).
      envelope: None (upstream) or "polynomial": the network's filter is multiplied by env(d)
        (``mlff_jax.painn.polynomial_envelope``); a table holds the enveloped filter already.
    Returns:
      (ds [N, H], dv [N, 3, H]): the model then sets s += ds, v += dv.
    """
    hidden = s.shape[1]
    valid, within = slot_masks(neighbors, distances, cutoff)
    safe_d = jnp.where(valid, distances, cutoff)  # any finite value: these slots are masked
    safe_dir = jnp.where(valid[..., None], directions, 0.0)
    if "filter_table" in block:  # compressed model: the table, not the network (no matmul, no precision mode)
        w = tabulated_filter(block["filter_table"], safe_d.reshape(-1), cutoff).reshape(*neighbors.shape, 3 * hidden)
    else:
        rbf = radial_features(safe_d.reshape(-1), rbf_centers, rbf_widths, cutoff)
        w = filter_network(block, rbf, precision, tensor_cores).reshape(*neighbors.shape, 3 * hidden)
        if envelope is not None:
            w = w * polynomial_envelope(safe_d, cutoff)[0][..., None]
    w = jnp.where(within[..., None], w, 0.0)
    ws, wv1, wv2 = w[..., :hidden], w[..., hidden : 2 * hidden], w[..., 2 * hidden :]
    senders = jnp.where(valid, neighbors, 0)
    ds = jnp.sum(s[senders] * ws, axis=1)
    dv = jnp.sum(v[senders] * wv1[:, :, None, :] + safe_dir[..., None] * wv2[:, :, None, :], axis=1)
    return ds, dv
