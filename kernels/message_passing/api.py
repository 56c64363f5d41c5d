"""``message_block``: one PaiNN message block on the dense neighbour layout, any implementation.

    ds, dv = message_block(s, v, neighbors, distances, directions, block, centers, widths,
                           cutoff=5.0, implementation="pallas")

``implementation``:
  - ``"xla"``: the plain-JAX reference (:mod:`.reference`), differentiated by JAX.
  - ``"pallas"``: fused Pallas kernels (Triton lowering) for the forward and the backward, joined by
    a ``jax.custom_vjp``; ``interpret=True`` runs them in Pallas interpret mode (CPU tests).
  - ``"triton"``: the same kernels written for jax-triton (GPU only; needs ``jax-triton``).

Gradients of the kernel paths: cotangents of s, v, distances and directions come from the fused
backward kernel; cotangents of the filter parameters and radial basis come from the XLA
reference's VJP (XLA removes that computation when, as for forces, nobody asks for them).

Precondition of the kernel paths' backward: the neighbour list is FULL and ``distances`` are
symmetric (the reverse slot of (b, j) -> a holds b with the same distance), which is what
``layout.slot_geometry`` gives for any full list. The forward has no such precondition.
"""

from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from mlff_jax.analytic import unwrap_primals
from mlff_jax.config import FILTER_ENVELOPES

from . import pallas as pallas_kernels
from .reference import check_precision, message_block_reference

IMPLEMENTATIONS = ("xla", "pallas", "triton")


def _backend(name: str):
    if name == "pallas":
        return pallas_kernels
    try:
        return importlib.import_module(".triton", __package__)
    except ImportError as err:  # jax-triton / triton are GPU-only extras
        raise ValueError(f"implementation='triton' needs jax-triton and triton (pip install 'mlff-jax[triton]'): {err}") from err


def _filter_params(block):
    try:
        filt = {"filter_in": dict(block["filter_in"]), "filter_out": dict(block["filter_out"])}
    except (KeyError, TypeError) as err:
        raise ValueError(f"block must hold 'filter_in' and 'filter_out' Dense parameters ({{'kernel', 'bias'}}): {err}") from err
    if "filter_table" in block:  # compressed model: the kernels read the table, not the network
        table = block["filter_table"]
        if not isinstance(table, dict) or "coefficients" not in table:
            raise ValueError("filter_table must be {'coefficients': [G, 4, 3H]} (as mlff_jax.compress builds it), "
                             f"got {sorted(table) if isinstance(table, dict) else type(table).__name__}")  # fmt: skip
        filt["filter_table"] = {"coefficients": table["coefficients"]}
    return filt


def check_inputs(s, v, neighbors, distances, directions, filt, centers, widths) -> None:
    """Raises ValueError naming the first inconsistent shape or dtype (and, for concrete arrays,
    neighbour indices outside [0, N])."""
    if s.ndim != 2:
        raise ValueError(f"s must be [N, H], got shape {s.shape}")
    n, h = s.shape
    if v.shape != (n, 3, h):
        raise ValueError(f"v must be [N, 3, H] = {(n, 3, h)}, got {v.shape}")
    if neighbors.ndim != 2 or neighbors.shape[0] != n:
        raise ValueError(f"neighbors must be [N, C] with N = {n}, got {neighbors.shape}")
    if not jnp.issubdtype(neighbors.dtype, jnp.integer):
        raise ValueError(f"neighbors must be integers, got {neighbors.dtype}")
    c = neighbors.shape[1]
    if distances.shape != (n, c):
        raise ValueError(f"distances must be [N, C] = {(n, c)}, got {distances.shape}")
    if directions.shape != (n, c, 3):
        raise ValueError(f"directions must be [N, C, 3] = {(n, c, 3)}, got {directions.shape}")
    k = centers.shape[0]
    w1, w2 = filt["filter_in"]["kernel"], filt["filter_out"]["kernel"]
    if centers.shape != (k,) or widths.shape != (k,):
        raise ValueError(f"rbf centers and widths must both be [K], got {centers.shape} and {widths.shape}")
    if w1.shape != (k, h) or filt["filter_in"]["bias"].shape != (h,):
        raise ValueError(f"filter_in must be Dense K -> H = {k} -> {h}, got kernel {w1.shape}")
    if w2.shape != (h, 3 * h) or filt["filter_out"]["bias"].shape != (3 * h,):
        raise ValueError(f"filter_out must be Dense H -> 3H = {h} -> {3 * h}, got kernel {w2.shape}")
    if "filter_table" in filt:
        coefficients = filt["filter_table"]["coefficients"]
        if coefficients.ndim != 3 or coefficients.shape[0] < 1 or coefficients.shape[1:] != (4, 3 * h):
            raise ValueError(f"filter_table coefficients must be [G, 4, 3H] with G >= 1, 3H = {3 * h}; got {coefficients.shape}")
    for name, x in (("s", s), ("v", v), ("distances", distances), ("directions", directions)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if not isinstance(neighbors, jax.core.Tracer):
        nbr = np.asarray(neighbors)
        if nbr.size and (nbr.min() < 0 or nbr.max() > n):
            raise ValueError(f"neighbor indices must lie in [0, N] = [0, {n}] (N marks an empty slot), got [{nbr.min()}, {nbr.max()}]")


def message_block(
    s: jax.Array,
    v: jax.Array,
    neighbors: jax.Array,
    distances: jax.Array,
    directions: jax.Array,
    block,
    rbf_centers: jax.Array,
    rbf_widths: jax.Array,
    *,
    cutoff: float,
    implementation: str = "xla",
    interpret: bool = False,
    precision: str = "highest",
    block_atoms: int | None = None,
    num_warps: int | None = None,
    num_stages: int = 1,
    k_chunk: int | None = None,
    slot_splits: int | None = None,
    envelope: str | None = None,
):
    """Message increments of one PaiNN block (the op of :mod:`.reference`).

    Args:
      s: [N, H] scalar features; v: [N, 3, H] vector features.
      neighbors: [N, C] int32 senders of each receiver's slots, N for an empty slot.
      distances: [N, C] Å; directions: [N, C, 3] unit vectors (``layout.slot_geometry``).
      block: the block's parameters (``filter_in``: Dense K -> H, ``filter_out``: Dense H -> 3H; a
        compressed block's ``filter_table`` {coefficients} [G, 4, 3H], when present, is used
        instead of the network, inside the kernels too: :mod:`.pallas_table`).
      rbf_centers, rbf_widths: [K] Å.
      cutoff: rc in Å (slots with d > rc contribute zero).
      implementation: "xla" | "pallas" | "triton" (module docstring).
      interpret: Pallas interpret mode (CPU); only for "pallas".
      precision: float32 matmuls, "highest" (IEEE float32, default) | "tf32x3" | "tf32" | "bf16"
        (see ``reference.matmul``); float64 inputs are always computed in float64.
      block_atoms: receivers per kernel program (power of two >= 16; default 16).
      num_warps, num_stages: Triton launch parameters of the kernels (default 8 warps, 1 stage).
      k_chunk: width of the hidden-dimension chunks of the kernels' matmuls (see
        ``pallas.KernelConfig``; default ``pallas.default_k_chunk``).
      slot_splits: programs per block of receivers, each with a share of the slots (see
        ``pallas.KernelConfig``; default ``pallas.default_slot_splits``: more for small systems).
      envelope: the model's ``filter_envelope`` (None: upstream; "polynomial": the network's filter
        is multiplied by env(d); a compressed block's table holds env W already).
    Returns:
      (ds [N, H], dv [N, 3, H]).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    check_precision(precision)
    filt = _filter_params(block)
    check_inputs(s, v, neighbors, distances, directions, filt, rbf_centers, rbf_widths)
    if envelope not in FILTER_ENVELOPES:
        raise ValueError(f"envelope must be one of {FILTER_ENVELOPES}, got {envelope!r}")
    if implementation == "xla":
        return message_block_reference(s, v, neighbors, distances, directions, filt, rbf_centers, rbf_widths, cutoff, precision, envelope=envelope)
    if interpret and implementation != "pallas":
        raise ValueError("interpret=True runs Pallas kernels only: use implementation='pallas'")
    n, h = s.shape
    if pallas_kernels.next_power_of_two(h) > pallas_kernels.MAX_HIDDEN:
        raise ValueError(f"the fused kernels support hidden widths up to {pallas_kernels.MAX_HIDDEN}, got {h}: use implementation='xla'")
    if block_atoms is None:
        block_atoms = pallas_kernels.default_block_atoms(n, s.dtype, precision)
    block_atoms = int(block_atoms)
    if block_atoms < pallas_kernels.MIN_DIM or block_atoms & (block_atoms - 1):
        raise ValueError(f"block_atoms must be a power of two >= {pallas_kernels.MIN_DIM}, got {block_atoms}")
    h_pad = pallas_kernels.next_power_of_two(h, pallas_kernels.MIN_DIM)
    k_chunk = pallas_kernels.default_k_chunk(s.dtype, precision, h_pad) if k_chunk is None else int(k_chunk)
    if k_chunk < pallas_kernels.MIN_DIM or k_chunk & (k_chunk - 1) or k_chunk > h_pad:
        raise ValueError(f"k_chunk must be a power of two in [{pallas_kernels.MIN_DIM}, {h_pad}], got {k_chunk}")
    capacity = neighbors.shape[1]
    if slot_splits is None:
        slot_splits = pallas_kernels.default_slot_splits(n, capacity, block_atoms)
    slot_splits = int(slot_splits)
    if not 1 <= slot_splits <= max(capacity, 1):
        raise ValueError(f"slot_splits must lie in [1, C] = [1, {capacity}], got {slot_splits}")
    cfg = pallas_kernels.KernelConfig(
        num_atoms=n,
        cutoff=float(cutoff),
        precision=precision,
        block_atoms=block_atoms,
        num_warps=pallas_kernels.default_num_warps(block_atoms) if num_warps is None else int(num_warps),
        num_stages=int(num_stages),
        interpret=bool(interpret),
        k_chunk=k_chunk,
        slot_splits=slot_splits,
        table_intervals=filt["filter_table"]["coefficients"].shape[0] if "filter_table" in filt else 0,
        envelope=None if "filter_table" in filt else envelope,
    )
    _backend(implementation)  # fail early (ValueError) if the backend cannot be imported
    return _fused(cfg, implementation, s, v, neighbors, distances, directions, filt, rbf_centers, rbf_widths)


# ----------------------------------------------------------------------------- custom VJP
def _kernel_forward(cfg, backend, s, v, neighbors, distances, directions, filt, centers, widths):
    n, h = s.shape
    module = _backend(backend)
    packed = pallas_kernels.pack(neighbors, distances, directions, filt, centers, widths, cfg)
    n_pad, h_pad, _ = pallas_kernels.padded_sizes(n, h, centers.shape[0], cfg.block_atoms)
    s_pad, v_pad = pallas_kernels.pack_features(s, v, n_pad, h_pad)
    ds, dv = module.forward(packed, s_pad, v_pad, cfg)
    return ds[:n, :h], jnp.transpose(dv[:, :n, :h], (1, 0, 2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused(cfg, backend, s, v, neighbors, distances, directions, filt, centers, widths):
    return _kernel_forward(cfg, backend, s, v, neighbors, distances, directions, filt, centers, widths)


def _fused_fwd(cfg, backend, s, v, neighbors, distances, directions, filt, centers, widths):
    (s, _), (v, _), (neighbors, _), (distances, _), (directions, _) = map(unwrap_primals, (s, v, neighbors, distances, directions))
    (filt, filt_perturbed), (centers, centers_perturbed), (widths, widths_perturbed) = map(unwrap_primals, (filt, centers, widths))
    out = _kernel_forward(cfg, backend, s, v, neighbors, distances, directions, filt, centers, widths)
    # Parameter cotangents (training through the kernels) cost the reference's per-edge filters,
    # [N, C, 3H] floats (18 GB at 100k atoms of water): computed only when the parameters are
    # differentiated. The marker is an empty pytree: () when they are, None when not.
    params_wanted = () if (filt_perturbed or centers_perturbed or widths_perturbed) else None
    return out, (s, v, neighbors, distances, directions, filt, centers, widths, params_wanted)


def _fused_bwd(cfg, backend, residuals, cotangents):
    s, v, neighbors, distances, directions, filt, centers, widths, params_wanted = residuals
    g_ds, g_dv = cotangents
    if isinstance(g_ds, SymbolicZero) and isinstance(g_dv, SymbolicZero):
        return (None,) * 8
    g_ds = jnp.zeros(g_ds.shape, g_ds.dtype) if isinstance(g_ds, SymbolicZero) else g_ds
    g_dv = jnp.zeros(g_dv.shape, g_dv.dtype) if isinstance(g_dv, SymbolicZero) else g_dv
    n, h = s.shape
    module = _backend(backend)
    packed = pallas_kernels.pack(neighbors, distances, directions, filt, centers, widths, cfg)
    n_pad, h_pad, _ = pallas_kernels.padded_sizes(n, h, centers.shape[0], cfg.block_atoms)
    s_pad, v_pad = pallas_kernels.pack_features(s, v, n_pad, h_pad)
    gs_pad, gv_pad = pallas_kernels.pack_features(g_ds.astype(s.dtype), g_dv.astype(s.dtype), n_pad, h_pad)
    g_s, g_v, g_d, g_u = module.backward(packed, s_pad, v_pad, gs_pad, gv_pad, cfg)
    g_s = g_s[:n, :h]
    g_v = jnp.transpose(g_v[:, :n, :h], (1, 0, 2))
    c = neighbors.shape[1]
    g_d = g_d[:c, :n].T.astype(distances.dtype)
    g_u = jnp.transpose(g_u[:, :c, :n], (2, 1, 0)).astype(directions.dtype)
    if params_wanted is None:
        return g_s, g_v, None, g_d, g_u, None, None, None

    # Filter-network and basis parameters: the reference's VJP (XLA).
    def by_params(f, c, w):
        return message_block_reference(s, v, neighbors, distances, directions, f, c, w, cfg.cutoff, cfg.precision, envelope=cfg.envelope)

    _, params_vjp = jax.vjp(by_params, filt, centers, widths)
    g_filt, g_centers, g_widths = params_vjp((g_ds, g_dv))
    return g_s, g_v, None, g_d, g_u, g_filt, g_centers, g_widths


_fused.defvjp(_fused_fwd, _fused_bwd, symbolic_zeros=True)
