"""Pieces shared by the Pallas message kernels of :mod:`.pallas` (the filter network) and
:mod:`.pallas_table` (the filter from a compressed block's table): launch settings, the kernel
layout, the slot loop, block specs, the launch itself and the outputs' shapes.

Both kernel modules import this one (and :mod:`.pallas` dispatches compressed blocks to
:mod:`.pallas_table`), so the dependencies point one way. See :mod:`.pallas` for the layout.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from .reference import matmul

MIN_DIM = 16  # smallest tl.dot dimension
MAX_HIDDEN = 128  # the register tiles of the kernels are [block_atoms, H]: H = 256 would spill heavily
SMEM_LIMIT_BYTES = 232448  # 227 KiB: most dynamic shared memory one H100/H200 block may use


def next_power_of_two(n: int, minimum: int = 1) -> int:
    return max(minimum, 1 << max(int(n) - 1, 0).bit_length())


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static settings of one kernel launch (hashable: part of the jit cache key).

    Attributes:
      num_atoms: N, real atoms; neighbour indices outside [0, N) are empty slots.
      cutoff: rc in Å.
      precision: "highest" | "tf32x3" | "tf32" | "bf16" (see ``reference.matmul``).
      block_atoms: receivers per program (a power of two >= 16).
      num_warps, num_stages: Triton launch parameters.
      interpret: run the kernel in Pallas interpret mode (CPU tests).
      k_chunk: matmuls contract over the hidden dimension in chunks this wide (a power of two >= 16
        dividing H_pad). Triton's float32 (IEEE) and float64 matmuls run on FMA units and hold a
        K-deep slice of both operands in registers per thread: K = 128 asks for far more than 255
        registers, and ptxas then falls back to 32 registers and spills kilobytes per thread
        (measured: 10-100x slower than XLA on an H100); the tensor-core modes suffer the same at
        K = 128. Chunks of 16 compile to <= 255 registers with (almost) no spills in every mode.
      slot_splits: S, programs sharing one block of receivers, each looping over C / S slots and
        writing its own partial sums (added up afterwards in a fixed order: still deterministic).
        Gives small systems enough programs to fill the GPU (N / block_atoms alone would be 1 for
        benzene); 1 for large systems.
      table_intervals: G > 0 for a compressed block: the filter W(d) (and dW/dd in the backward) is
        read from its cubic Hermite table of G intervals over [0, cutoff] (:mod:`.pallas_table`)
        instead of evaluating the network; 0 (default): the filter network.
      envelope: None (upstream) or "polynomial": the network's filter is multiplied by
        ``painn.polynomial_envelope`` (a table already holds the enveloped filter: ignored there).
    """

    num_atoms: int
    cutoff: float
    precision: str = "highest"
    block_atoms: int = 32
    num_warps: int = 4
    num_stages: int = 1
    interpret: bool = False
    k_chunk: int = 16
    slot_splits: int = 1
    table_intervals: int = 0
    envelope: str | None = None

    def dot(self, x, w):
        """x @ w in this launch's precision mode (TF32 modes need tensor cores: not in interpret mode)."""
        return matmul(x, w, self.precision, tensor_cores=not self.interpret)


def default_block_atoms(num_atoms: int = 0, dtype=jnp.float32, precision: str = "highest") -> int:
    """16 receivers per program: the tiles that compile without register spills (H = 128, 8 warps;
    measured with ptxas for every precision mode, docs/kernels.md)."""
    return 16


def default_num_warps(block_atoms: int) -> int:
    return 8


TARGET_PROGRAMS = 256  # about two programs per streaming multiprocessor of an H100 (132)


def default_slot_splits(num_atoms: int, capacity: int, block_atoms: int) -> int:
    """Enough slot splits to reach ``TARGET_PROGRAMS`` programs, at most one per slot."""
    blocks = -(-num_atoms // block_atoms)
    return max(1, min(capacity, -(-TARGET_PROGRAMS // blocks)))


def default_k_chunk(dtype, precision: str, h_pad: int) -> int:
    """Hidden-dimension chunk of the matmuls: 16 (see ``KernelConfig.k_chunk``)."""
    return min(16, h_pad)


@dataclasses.dataclass(frozen=True)
class Packed:
    """Kernel-layout arrays (see module docstring); shapes: B = block rows, C slots. A compressed block
    has the table instead of the filter network's (w1 .. widths are then None)."""

    neighbors: jax.Array  # [C_pad, Np] int32 (C_pad: C rounded up to a multiple of slot_splits)
    distances: jax.Array  # [C_pad, Np]
    directions: jax.Array  # [3, C_pad, Np]
    w1: jax.Array  # [Kp, Hp]
    b1: jax.Array  # [1, Hp]
    w2: jax.Array  # [3, Hp, Hp]  (Ws, Wv1, Wv2 parts of Linear2)
    b2: jax.Array  # [3, 1, Hp]
    centers: jax.Array  # [1, Kp]
    widths: jax.Array  # [1, Kp]
    table_coefficients: jax.Array | None = None  # [3, 4G, Hp] (Ws, Wv1, Wv2 parts; row 4i + k: c_k of interval i)


def pad_to(x, shape, value=0):
    return jnp.pad(x, [(0, t - n) for n, t in zip(x.shape, shape)], constant_values=value)


def padded_sizes(num_atoms: int, hidden: int, num_rbf: int, block_atoms: int):
    n_pad = -(-num_atoms // block_atoms) * block_atoms
    return n_pad, next_power_of_two(hidden, MIN_DIM), next_power_of_two(num_rbf, MIN_DIM)


def read_slot(nbr_ref, d_ref, k, num_atoms, cutoff):
    nbr = nbr_ref[k, :]
    d = d_ref[k, :]
    valid = (nbr >= 0) & (nbr < num_atoms)
    within = valid & (d <= cutoff)
    return jnp.where(valid, nbr, 0), d[:, None], within[:, None], jnp.max(within.astype(jnp.int32)) > 0


def sum_over_slots(body, capacity, s_out_ref, v_out_ref):
    """The slot loop of every kernel: ``body(k, (s, v0, v1, v2)) -> (s, v0, v1, v2)`` run over the
    ``capacity`` slots from zeros; the sums go to ``s_out_ref`` [rows, H] and ``v_out_ref`` [3, rows, H]."""
    zeros = jnp.zeros(s_out_ref.shape, s_out_ref.dtype)
    s, v0, v1, v2 = jax.lax.fori_loop(0, capacity, body, (zeros, zeros, zeros, zeros))
    s_out_ref[...] = s
    v_out_ref[0] = v0
    v_out_ref[1] = v1
    v_out_ref[2] = v2


def backward_slot(k, any_within, slot_gradients, carry, gd_ref, gu_ref, dtype):
    """Slot k of a backward kernel: ``slot_gradients(carry) -> (carry, (g_d, g_u0, g_u1, g_u2))`` when
    some receiver of the block has the slot within the cutoff, else zero cotangents; writes slot k of
    the distance [C, rows] and direction [3, C, rows] cotangents and returns the carry."""
    rows = gd_ref.shape[1]

    def empty(carry):
        zero = jnp.zeros((rows,), dtype)
        return carry, (zero, zero, zero, zero)

    carry, (g_d, g_u0, g_u1, g_u2) = jax.lax.cond(any_within, slot_gradients, empty, carry)
    gd_ref[k, :] = g_d
    gu_ref[0, k, :] = g_u0
    gu_ref[1, k, :] = g_u1
    gu_ref[2, k, :] = g_u2
    return carry


_SQUEEZED = getattr(pl, "squeezed", None)


def whole(shape):
    """BlockSpec of an array every program reads in full (gather sources, weights)."""
    return pl.BlockSpec(shape, lambda i, j: (0,) * len(shape))


def block_specs(packed: Packed, h_pad: int, cfg: KernelConfig):
    capacity = packed.neighbors.shape[0] // cfg.slot_splits
    b = cfg.block_atoms
    return dict(
        slots=pl.BlockSpec((capacity, b), lambda i, j: (j, i)),
        slot_vectors=pl.BlockSpec((3, capacity, b), lambda i, j: (0, j, i)),
        rows=pl.BlockSpec((b, h_pad), lambda i, j: (i, 0)),
        vector_rows=pl.BlockSpec((3, b, h_pad), lambda i, j: (0, i, 0)),
        split_rows=pl.BlockSpec((_SQUEEZED, b, h_pad), lambda i, j: (j, i, 0)),
        split_vector_rows=pl.BlockSpec((_SQUEEZED, 3, b, h_pad), lambda i, j: (j, 0, i, 0)),
        capacity=capacity,
    )


def compiler_params(cfg: KernelConfig):
    from jax.experimental.pallas import triton as plt

    return plt.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def launch(kernel, name, out_shape, in_specs, out_specs, n_pad, cfg, *args):
    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(n_pad // cfg.block_atoms, cfg.slot_splits),
        in_specs=in_specs,
        out_specs=out_specs,
        compiler_params=compiler_params(cfg),
        interpret=cfg.interpret,
        name=name,
    )(*args)


def sum_splits(partial):
    """Sum over the leading (split) axis in a fixed order (deterministic, unlike a reduction that
    XLA may parallelise with atomics)."""
    total = partial[0]
    for j in range(1, partial.shape[0]):
        total = total + partial[j]
    return total


def feature_outputs(sp, n_pad: int, h_pad: int, cfg: KernelConfig, dtype):
    """(out_specs, out_shape) of the per-split feature sums every kernel writes: [S, Np, Hp] and [S, 3, Np, Hp]."""
    splits = cfg.slot_splits
    return ([sp["split_rows"], sp["split_vector_rows"]],
            [jax.ShapeDtypeStruct((splits, n_pad, h_pad), dtype), jax.ShapeDtypeStruct((splits, 3, n_pad, h_pad), dtype)])  # fmt: skip


def backward_outputs(sp, n_pad: int, h_pad: int, c_pad: int, cfg: KernelConfig, dtype):
    """(out_specs, out_shape) of a backward kernel: the feature cotangents, then g_d [C_pad, Np] and g_dir [3, C_pad, Np]."""
    out_specs, out_shape = feature_outputs(sp, n_pad, h_pad, cfg, dtype)
    return (out_specs + [sp["slots"], sp["slot_vectors"]],
            out_shape + [jax.ShapeDtypeStruct((c_pad, n_pad), dtype), jax.ShapeDtypeStruct((3, c_pad, n_pad), dtype)])  # fmt: skip
