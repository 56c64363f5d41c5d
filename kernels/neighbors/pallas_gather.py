"""Neighbour gather over a cell list as one fused Pallas kernel (Triton lowering on GPU).

Same op as :func:`reference.gather_neighbors`, without its [N, bin capacity] intermediates per
stencil offset: each program takes ``block`` centre atoms (consecutive in bin order, so they
share neighbour bins and their loads hit the cache), loops over the stencil offsets, loads the
[block, C] tile of candidates of the neighbour bins, tests distances, and writes the hits
straight into the rows of the output (a running count per row and a cumsum across the tile
give each hit its slot). Rows are owned by one program, so writes never race.

On GPU it is lowered by Triton (``compiler_params=CompilerParams``: jax 0.10+ would otherwise
pick Mosaic GPU); ``interpret=True`` runs it on any backend (tests compare it with the reference
on CPU). Triton needs power-of-two tiles: ``block`` and the bin capacity C must be powers of two.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

DEFAULT_BLOCK = 32  # centre atoms per program


def _kernel(order_ref, mask_ref, px_ref, py_ref, pz_ref, cx_ref, cy_ref, cz_ref, batch_ref, table_ref, tx_ref, ty_ref, tz_ref, cells_ref, *refs,
            num_atoms, grid, stencil, pbc, cutoff2, capacity, block):
    if capacity:
        _, _, idx_ref, image_ref, count_ref = refs  # the first two are the aliased initial outputs
    else:
        (count_ref,) = refs
    bin_capacity = table_ref.shape[1]
    lane = pl.program_id(0) * block + jnp.arange(block, dtype=jnp.int32)
    in_range = lane < num_atoms
    atom = jnp.where(in_range, plt.load(order_ref.at[jnp.minimum(lane, num_atoms - 1)]), 0)
    center = in_range & (plt.load(mask_ref.at[atom]) != 0)
    xi, yi, zi = plt.load(px_ref.at[atom]), plt.load(py_ref.at[atom]), plt.load(pz_ref.at[atom])
    ci = (plt.load(cx_ref.at[atom]), plt.load(cy_ref.at[atom]), plt.load(cz_ref.at[atom]))
    structure = plt.load(batch_ref.at[atom])
    cell = [plt.load(cells_ref.at[structure * 9 + e]) for e in range(9)]  # row-major [3, 3] per atom
    slots = jnp.arange(bin_capacity, dtype=jnp.int32)[None, :]
    zeros_tile = jnp.zeros((block, bin_capacity), jnp.int32)
    rows = atom[:, None] + zeros_tile
    widths = [2 * m + 1 for m in stencil]

    def body(t, count):
        # Every operand below is a non-negative int32: plain integer division is floor division.
        div = lambda a, b: jax.lax.div(a, jnp.int32(b))
        rem = lambda a, b: jax.lax.rem(a, jnp.int32(b))
        offset = (div(t, widths[1] * widths[2]) - stencil[0], rem(div(t, widths[2]), widths[1]) - stencil[1], rem(t, widths[2]) - stencil[2])
        inside = center
        nb, image = [], []
        for k in range(3):
            target = ci[k] + offset[k]
            if pbc[k]:
                lift = (stencil[k] // grid[k] + 1) * grid[k]  # makes target + lift >= 0
                nb.append(rem(target + lift, grid[k]))
                image.append(div(target + lift, grid[k]) - lift // grid[k])
            else:
                inside &= (target >= 0) & (target < grid[k])
                nb.append(jnp.clip(target, 0, grid[k] - 1))
                image.append(jnp.zeros_like(target))
        flat = structure * (grid[0] * grid[1] * grid[2]) + (nb[0] * grid[1] + nb[1]) * grid[2] + nb[2]
        tile = (flat[:, None] + zeros_tile, slots + zeros_tile)
        candidates = plt.load(table_ref.at[tile])
        fimage = [im.astype(xi.dtype) for im in image]
        shift = [fimage[0] * cell[j] + fimage[1] * cell[3 + j] + fimage[2] * cell[6 + j] for j in range(3)]
        dx = plt.load(tx_ref.at[tile]) + (shift[0] - xi)[:, None]
        dy = plt.load(ty_ref.at[tile]) + (shift[1] - yi)[:, None]
        dz = plt.load(tz_ref.at[tile]) + (shift[2] - zi)[:, None]
        zero_image = (image[0] == 0) & (image[1] == 0) & (image[2] == 0)
        is_self = (candidates == atom[:, None]) & zero_image[:, None]
        hit = inside[:, None] & (candidates < num_atoms) & (dx * dx + dy * dy + dz * dz <= cutoff2) & ~is_self
        hits = hit.astype(jnp.int32)
        if capacity:
            slot = count[:, None] + jnp.cumsum(hits, axis=1) - 1
            write = hit & (slot < capacity)
            # Masked-off lanes point outside the array: Triton skips them, and interpret mode (which
            # writes masked lanes back with their old value) drops out-of-bounds writes, so they
            # can never clobber another lane's write to the same slot.
            target = (jnp.where(write, rows, num_atoms), jnp.clip(slot, 0, capacity - 1))
            plt.store(idx_ref.at[target], candidates, mask=write)
            for k in range(3):
                plt.store(image_ref.at[(*target, k)], (image[k][:, None] + zeros_tile).astype(jnp.int8), mask=write)
        return count + jnp.sum(hits, axis=1, dtype=jnp.int32)

    count = jax.lax.fori_loop(jnp.int32(0), jnp.int32(widths[0] * widths[1] * widths[2]), body, jnp.zeros(block, jnp.int32))
    plt.store(count_ref.at[jnp.where(in_range, atom, num_atoms)], count, mask=in_range)


@functools.partial(jax.jit, static_argnames=("grid", "stencil", "pbc", "cutoff", "capacity", "block", "interpret", "num_warps"))
def gather_neighbors(positions, coords, batch, center_mask, table, table_positions, cells, order, *, grid, stencil, pbc, cutoff, capacity,
                     block=DEFAULT_BLOCK, interpret=False, num_warps=4):
    """Pallas version of :func:`reference.gather_neighbors`; same arguments and results.

    Extra argument ``order``: [N] int32, a permutation of the atoms in which centres are
    processed (atoms sorted by bin give the best cache reuse); it does not change the result.
    """
    num_atoms = positions.shape[0]
    bin_capacity = table.shape[1]
    if bin_capacity & (bin_capacity - 1) or block & (block - 1):
        raise ValueError(f"the Pallas gather needs power-of-two tiles: bin capacity {bin_capacity}, block {block}")
    dtype = positions.dtype
    soa = [positions[:, k] for k in range(3)] + [coords[:, k].astype(jnp.int32) for k in range(3)]
    table_soa = [table_positions[..., k].astype(dtype) for k in range(3)]
    inputs = [order.astype(jnp.int32), center_mask.astype(jnp.int32), *soa[:3], *soa[3:], batch.astype(jnp.int32), table, *table_soa,
              cells.astype(dtype).reshape(-1)]
    out_shape = [jax.ShapeDtypeStruct((num_atoms,), jnp.int32)]
    aliases = {}
    if capacity:
        initial = [jnp.full((num_atoms, capacity), num_atoms, jnp.int32), jnp.zeros((num_atoms, capacity, 3), jnp.int8)]
        aliases = {len(inputs): 0, len(inputs) + 1: 1}
        inputs += initial
        out_shape = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in initial] + out_shape
    kernel = functools.partial(_kernel, num_atoms=num_atoms, grid=grid, stencil=stencil, pbc=pbc, cutoff2=float(cutoff) ** 2,
                               capacity=capacity, block=block)
    outputs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(pl.cdiv(num_atoms, block),),
        input_output_aliases=aliases,
        interpret=interpret,
        compiler_params=plt.CompilerParams(num_warps=num_warps, num_stages=1),
    )(*inputs)
    if capacity:
        return tuple(outputs)
    return None, None, outputs[0]
