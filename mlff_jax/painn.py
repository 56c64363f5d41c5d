"""The PaiNN student's forward pass, as pure functions of a parameter pytree.

Exactly the model of ``shared/design/painn-student.md`` (upstream MLFF-Distiller). Shapes use
N atoms, E edges, H hidden width, K radial functions; units are Å and eV.

Parameter pytree (Flax layout: ``Dense`` kernels are [in, out], i.e. the transpose of PyTorch's
``Linear.weight``)::

    embedding/embedding          [max_z + 1, H]
    rbf/centers, rbf/widths      [K]        (buffers in upstream; never trained)
    interactions_t/filter_in     Dense K -> H
    interactions_t/filter_out    Dense H -> 3H
    interactions_t/update_in     Dense 2H -> H
    interactions_t/update_out    Dense H -> 3H
    interactions_t/mixing_matrix [3, 3]       (vector_mixing="cartesian", upstream)
    interactions_t/channel_mixing [H, H]      (vector_mixing="channels"; "none" has neither)
    readout/dense_0, dense_1, dense_2   Dense H -> H/2 -> H/4 -> 1
    atom_reference/energies      [max_z + 1] eV  (optional, ours only: see ATOM_REFERENCE)

:class:`PaiNN` is the same model as a Flax ``nn.Module`` (for fresh initialisation and training).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mlff_jax.config import PaiNNConfig
from mlff_jax.graph import Edges
from mlff_jax.radial_table import tabulated_filter

Params = dict[str, Any]

DIR_EPS = 1e-8  # upstream's dir = vec / (d + 1e-8)
# Optional leaf ``atom_reference/energies`` [max_z + 1] eV: a fixed energy per element added to each
# real atom's energy. Not part of the upstream model (its checkpoints never have it, and converters
# reject it); our distilled models carry it because the teacher's total energies are large.
ATOM_REFERENCE = "atom_reference"


def dense(x: jax.Array, layer: Params, precision) -> jax.Array:
    """y = x @ kernel + bias, at the requested matmul precision."""
    return jnp.dot(x, layer["kernel"], precision=precision) + layer["bias"]


def safe_norm(v: jax.Array, axis: int) -> jax.Array:
    """Euclidean norm that is 0 with a zero gradient where v == 0 (PyTorch's convention).

    Double-``where``: the square root never sees a zero, so no inf * 0 = NaN in the gradient.
    """
    sq = jnp.sum(v * v, axis=axis)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def edge_geometry(positions: jax.Array, edges: Edges, cutoff: float):
    """Edge vectors, lengths, unit directions and the within-cutoff mask.

    Returns:
      vec: [E, 3] Å, R_a - R_b + shift.
      d: [E] Å (sqrt(3) on masked slots; 0 with a zero gradient for coincident atoms: no NaN in any gradient).
      direction: [E, 3], vec / (d + 1e-8).
      within: [E] bool, mask & (d <= cutoff).
    """
    vec = positions[edges.senders] - positions[edges.receivers] + edges.shifts
    safe_vec = jnp.where(edges.mask[:, None], vec, 1.0)
    # safe_norm: coincident atoms (d = 0) get dd/dvec = 0, the analytic sweep's convention, not NaN.
    d = safe_norm(safe_vec, axis=-1)
    within = edges.mask & (d <= cutoff)
    direction = safe_vec / (d + DIR_EPS)[:, None]
    return safe_vec, d, direction, within


def radial_features(d: jax.Array, centers: jax.Array, widths: jax.Array, cutoff: float) -> jax.Array:
    """e_k(d) = exp(-(d - mu_k)^2 / w_k^2) * fc(d), fc = (cos(pi d / rc) + 1) / 2 for d < rc else 0.

    d: [E] Å -> [E, K].
    """
    phi = jnp.exp(-((d[:, None] - centers) ** 2) / widths**2)
    fc = jnp.where(d < cutoff, 0.5 * (jnp.cos(jnp.pi * d / cutoff) + 1.0), 0.0)
    return phi * fc[:, None]


def polynomial_envelope(d: jax.Array, cutoff: float):
    """env(d) = 1 - 28 x^6 + 48 x^7 - 21 x^8 for x = d / rc < 1, else 0, and its derivative [E] (1/Å).

    DimeNet's p = 6 envelope without its 1/x term: env' = -168 x^5 (1 - x)^2 / rc, so env, env' and
    env'' vanish at rc (a double root of env'), and env = 1 - O(x^6) leaves short pairs untouched.
    """
    x = d / cutoff
    inside = x < 1.0
    # Factored form (1 - x)^3 (1 + 3x + 6x^2 + 10x^3 + 15x^4 + 21x^5): exact zeros at rc, and no
    # cancellation near it (the expanded polynomial would leave ~1e-15, or 1e-7 in float32, at rc).
    one_minus = 1.0 - x
    env = one_minus**3 * (1.0 + x * (3.0 + x * (6.0 + x * (10.0 + x * (15.0 + 21.0 * x)))))
    x2 = x * x
    denv = -168.0 * x2 * x2 * x * one_minus**2 / cutoff
    return jnp.where(inside, env, 0.0), jnp.where(inside, denv, 0.0)


def filter_envelope(d: jax.Array, config: PaiNNConfig):
    """(env [E], env' [E] 1/Å) of the config's filter envelope, or None when it has none (upstream)."""
    if config.filter_envelope is None:
        return None
    return polynomial_envelope(d, config.cutoff)


def filter_weights(block: Params, rbf: jax.Array, within: jax.Array, precision, envelope: jax.Array | None = None) -> jax.Array:
    """W = env(d) Linear2(SiLU(Linear1(e))), zeroed on edges outside the cutoff: [E, 3H].

    envelope: env(d) [E], or None (upstream: no envelope).
    """
    hidden = jax.nn.silu(dense(rbf, block["filter_in"], precision))
    w = dense(hidden, block["filter_out"], precision) * within[:, None]
    return w if envelope is None else w * envelope[:, None]


def message(s, v, w, direction, edges: Edges):
    """s_b += sum_a s_a * Ws ;  v_b += sum_a (v_a * Wv1 + dir (x) Wv2).

    s: [N, H], v: [N, 3, H], w: [E, 3H], direction: [E, 3].
    """
    num_atoms, hidden = s.shape
    ws, wv1, wv2 = w[:, :hidden], w[:, hidden : 2 * hidden], w[:, 2 * hidden :]
    ds = jax.ops.segment_sum(s[edges.senders] * ws, edges.receivers, num_atoms)
    dv_edge = v[edges.senders] * wv1[:, None, :] + direction[:, :, None] * wv2[:, None, :]
    dv = jax.ops.segment_sum(dv_edge, edges.receivers, num_atoms)
    return s + ds, v + dv


def mix_vectors(block: Params, v: jax.Array, vector_mixing: str, precision) -> jax.Array | None:
    """The mixed vector features [N, 3, H] of the update, or None for vector_mixing="none".

    "cartesian" (upstream): (M v)[n, i, h] = sum_j M[i, j] v[n, j, h] (M: mixing_matrix [3, 3]);
    "channels": (v C)[n, i, h] = sum_k v[n, i, k] C[k, h] (C: channel_mixing [H, H]), which acts on
    the channels only and so commutes with any rotation of the xyz axes.
    """
    if vector_mixing == "cartesian":
        return jnp.einsum("ij,njh->nih", block["mixing_matrix"], v, precision=precision)
    if vector_mixing == "channels":
        return jnp.einsum("nik,kh->nih", v, block["channel_mixing"], precision=precision)
    if vector_mixing == "none":
        return None
    raise ValueError(f"vector_mixing must be 'cartesian', 'channels' or 'none', got {vector_mixing!r}")


def update(block: Params, s, v, precision, vector_mixing: str = "cartesian"):
    """U = Linear2(SiLU(Linear1([s, |v|]))) = (a, g1, g2); s += a; v = v g1 + mix(v) g2
    (mix: :func:`mix_vectors`; with vector_mixing="none", v = v g1 and g2 is unused)."""
    hidden = s.shape[-1]
    norm = safe_norm(v, axis=1)
    u = dense(jax.nn.silu(dense(jnp.concatenate([s, norm], axis=-1), block["update_in"], precision)), block["update_out"], precision)
    a, g1, g2 = u[:, :hidden], u[:, hidden : 2 * hidden], u[:, 2 * hidden :]
    mixed = mix_vectors(block, v, vector_mixing, precision)
    v_new = v * g1[:, None, :]
    return s + a, v_new if mixed is None else v_new + mixed * g2[:, None, :]


def readout(params: Params, s, precision) -> jax.Array:
    """Per-atom energy: Linear3(SiLU(Linear2(SiLU(Linear1(s))))), [N, H] -> [N] eV."""
    head = params["readout"]
    h = jax.nn.silu(dense(s, head["dense_0"], precision))
    h = jax.nn.silu(dense(h, head["dense_1"], precision))
    return dense(h, head["dense_2"], precision)[:, 0]


def atomic_energies(
    params: Params,
    config: PaiNNConfig,
    positions: jax.Array,
    atomic_numbers: jax.Array,
    edges: Edges,
    atom_mask: jax.Array | None = None,
    precision=jax.lax.Precision.HIGHEST,
) -> jax.Array:
    """Energy of each atom, [N] eV (exactly 0 for padding atoms).

    positions: [N, 3] Å; atomic_numbers: [N] int; atom_mask: [N] bool (None: all real).
    """
    _, d, direction, within = edge_geometry(positions, edges, config.cutoff)
    rbf = radial_features(d, params["rbf"]["centers"], params["rbf"]["widths"], config.cutoff)  # unused (DCE) when tabulated
    envelope = filter_envelope(d, config)
    s = params["embedding"]["embedding"][atomic_numbers]
    v = jnp.zeros((s.shape[0], 3, s.shape[1]), s.dtype)
    for t in range(config.num_interactions):
        block = params[f"interactions_{t}"]
        if "filter_table" in block:  # compressed model (mlff_jax.compress): the table holds env * W already
            w = tabulated_filter(block["filter_table"], d, config.cutoff) * within[:, None]
        else:
            w = filter_weights(block, rbf, within, precision, None if envelope is None else envelope[0])
        s, v = message(s, v, w, direction, edges)
        s, v = update(block, s, v, precision, config.vector_mixing)
    energies = readout(params, s, precision)
    if ATOM_REFERENCE in params:  # optional per-element reference energies (our distilled models; upstream has none)
        energies = energies + params[ATOM_REFERENCE]["energies"][atomic_numbers]
    if atom_mask is not None:
        energies = jnp.where(atom_mask, energies, 0.0)
    return energies


def structure_energies(params, config, positions, atomic_numbers, edges, atom_mask, batch, num_structures, precision=jax.lax.Precision.HIGHEST):
    """Per-structure energies [B] eV: the sum over each structure's atoms (batch: [N] structure index)."""
    per_atom = atomic_energies(params, config, positions, atomic_numbers, edges, atom_mask, precision)
    return jax.ops.segment_sum(per_atom, batch, num_structures)


def cast_params(params: Params, dtype) -> Params:
    """Casts every leaf to ``dtype`` (float32 or float64)."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)


def param_shapes(config: PaiNNConfig, table_intervals: int | None = None) -> dict[str, tuple[int, ...]]:
    """Expected shape of every leaf, keyed by '/'-joined path (used by converters and checks).

    table_intervals: grid intervals G of compressed radial filter tables (mlff_jax.compress), if the
    model has them.
    """
    h, k = config.hidden_dim, config.num_rbf
    shapes = {
        "embedding/embedding": (config.max_z + 1, h),
        "rbf/centers": (k,),
        "rbf/widths": (k,),
    }
    layers = {"filter_in": (k, h), "filter_out": (h, 3 * h), "update_in": (2 * h, h), "update_out": (h, 3 * h)}
    for t in range(config.num_interactions):
        for name, (fan_in, fan_out) in layers.items():
            shapes[f"interactions_{t}/{name}/kernel"] = (fan_in, fan_out)
            shapes[f"interactions_{t}/{name}/bias"] = (fan_out,)
        if config.vector_mixing == "cartesian":
            shapes[f"interactions_{t}/mixing_matrix"] = (3, 3)
        elif config.vector_mixing == "channels":
            shapes[f"interactions_{t}/channel_mixing"] = (h, h)
        if table_intervals is not None:
            shapes[f"interactions_{t}/filter_table/coefficients"] = (table_intervals, 4, 3 * h)
    for i, (fan_in, fan_out) in enumerate([(h, h // 2), (h // 2, h // 4), (h // 4, 1)]):
        shapes[f"readout/dense_{i}/kernel"] = (fan_in, fan_out)
        shapes[f"readout/dense_{i}/bias"] = (fan_out,)
    return shapes


def optional_param_shapes(config: PaiNNConfig) -> dict[str, tuple[int, ...]]:
    """Leaves a model may have on top of :func:`param_shapes` (only our own format stores them)."""
    return {f"{ATOM_REFERENCE}/energies": (config.max_z + 1,)}


def unflatten(flat: dict[str, Any]) -> Params:
    """{'a/b/c': x} -> {'a': {'b': {'c': x}}}."""
    tree: Params = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def flatten(tree: Params, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': x}} -> {'a/b': x}."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


class PaiNN(nn.Module):
    """The PaiNN student as a Flax module: ``apply(variables, positions, Z, edges, mask, batch, B)``
    returns per-structure energies [B] eV. Its ``params`` have the layout documented above, so
    ``init`` gives fresh weights for training and converted checkpoints plug straight in."""

    config: PaiNNConfig
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, positions, atomic_numbers, edges: Edges, atom_mask, batch, num_structures: int):
        cfg = self.config
        dtype = positions.dtype
        params = {name: self.param(name, lambda key, shape=shape: _init_leaf(key, name, shape, cfg, dtype)) for name, shape in param_shapes(cfg).items()}
        return structure_energies(unflatten(params), cfg, positions, atomic_numbers, edges, atom_mask, batch, num_structures, self.precision)


def _init_leaf(key, path: str, shape, config: PaiNNConfig, dtype):
    """PyTorch-like defaults: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for Linear, N(0, 1) embedding,
    identity mixing matrices (3 x 3 or H x H: at initialisation "channels" mixes like upstream's M = I),
    and upstream's fixed radial basis."""
    if path == "rbf/centers":
        return jnp.linspace(0.0, config.cutoff, config.num_rbf, dtype=dtype)
    if path == "rbf/widths":
        return jnp.full(shape, config.cutoff / config.num_rbf, dtype)
    if path.endswith("mixing_matrix"):
        return jnp.eye(3, dtype=dtype)
    if path.endswith("channel_mixing"):
        return jnp.eye(shape[0], dtype=dtype)
    if path == "embedding/embedding":
        return jax.random.normal(key, shape, dtype)
    fan_in = shape[0] if path.endswith("kernel") else _kernel_fan_in(path, config)
    bound = 1.0 / np.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _kernel_fan_in(bias_path: str, config: PaiNNConfig) -> int:
    return param_shapes(config)[bias_path.rsplit("/", 1)[0] + "/kernel"][0]
