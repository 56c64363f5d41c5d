"""Periodic cells: validation, the binning frame, perpendicular heights and wrapping.

Conventions are ASE's: ``cell`` is [3, 3] Å with the cell vectors a1, a2, a3 as ROWS, ``pbc`` is
three bools, and a Cartesian position is r = s @ cell for fractional coordinates s. A batch of
structures has cells [B, 3, 3] and one ``pbc`` shared by all of them.

Only the periodic rows of a cell ever matter: a pair's periodic shift is S @ cell with S = 0 in
every non-periodic direction. So the neighbour search works in a *binning frame*: the periodic
rows of the cell, completed by unit vectors orthogonal to them (and to each other) for the
non-periodic directions. Non-periodic cell vectors may therefore be zero or anything else.
"""

from __future__ import annotations

import numpy as np

# Periodic cell vectors whose spanned volume (relative to the product of their lengths) falls
# below this are treated as linearly dependent: the cell is singular.
SINGULAR_CELL_TOLERANCE = 1e-8


def normalize_pbc(pbc, cell) -> tuple[bool, bool, bool]:
    """pbc as a static tuple of three bools; ``None`` means periodic everywhere iff a cell is given."""
    if pbc is None:
        return (cell is not None,) * 3
    flags = np.asarray(pbc)
    if flags.shape == ():
        flags = np.repeat(flags, 3)
    if flags.shape != (3,) or flags.dtype.kind not in "biu":
        raise ValueError(f"pbc must be a bool or three bools (one per cell vector), got {pbc!r}")
    return tuple(bool(f) for f in flags)


def validate_cells(cell, pbc: tuple[bool, bool, bool], num_structures: int | None = None) -> np.ndarray:
    """Checks a cell (or a batch of cells) on the host and returns it as float64 [B, 3, 3].

    Args:
      cell: [3, 3] or [B, 3, 3] Å, rows are cell vectors; ``None`` is allowed only if no
        direction is periodic (an identity frame is returned then).
      pbc: three bools, shared by all structures.
      num_structures: B if known; a single [3, 3] cell is then repeated for every structure.
    Raises:
      ValueError: a periodic direction without a cell, a non-finite cell, a zero cell vector in a
        periodic direction, or periodic cell vectors that are linearly dependent (singular cell).
    """
    b = 1 if num_structures is None else num_structures
    if cell is None:
        if any(pbc):
            raise ValueError(f"pbc={list(pbc)} has periodic directions but no cell was given")
        return np.broadcast_to(np.eye(3), (b, 3, 3)).copy()
    cells = np.asarray(cell, dtype=np.float64)
    if cells.shape == (3, 3):
        cells = np.broadcast_to(cells, (b, 3, 3)).copy()
    if cells.ndim != 3 or cells.shape[1:] != (3, 3) or (num_structures is not None and cells.shape[0] != b):
        want = "[3, 3]" if num_structures is None else f"[3, 3] or [{b}, 3, 3]"
        raise ValueError(f"cell must have shape {want} (rows are cell vectors, Å), got {list(np.shape(cell))}")
    if not np.all(np.isfinite(cells)):
        raise ValueError("cell contains NaN or inf")
    periodic = [k for k in range(3) if pbc[k]]
    for s, c in enumerate(cells):
        where = f" of structure {s}" if cells.shape[0] > 1 else ""
        lengths = np.linalg.norm(c, axis=1)
        for k in periodic:
            if lengths[k] == 0.0:
                raise ValueError(f"cell vector {k}{where} is zero but direction {k} is periodic (pbc[{k}] = True)")
        if len(periodic) >= 2:
            rows = c[periodic]
            volume = np.sqrt(max(np.linalg.det(rows @ rows.T), 0.0))
            if volume <= SINGULAR_CELL_TOLERANCE * np.prod(lengths[periodic]):
                raise ValueError(
                    f"cell{where} is singular: its periodic vectors {periodic} are linearly dependent "
                    f"(spanned volume {volume:.3g} for lengths {lengths[periodic].round(6).tolist()})"
                )
    return cells


def binning_frame(cells, pbc: tuple[bool, bool, bool], xp=np):
    """Rows: the periodic cell vectors, and orthonormal completions for the other directions.

    cells: [..., 3, 3] Å (rows are cell vectors). Works with ``xp=numpy`` or ``xp=jax.numpy``.
    In the returned frame, the fractional coordinate along a non-periodic direction is a
    Cartesian distance (Å) along a unit vector orthogonal to every other row.
    """
    periodic = [k for k in range(3) if pbc[k]]
    if len(periodic) == 3:
        return cells
    rows = [cells[..., k, :] for k in range(3)]
    if not periodic:
        eye = xp.eye(3, dtype=cells.dtype)
        return xp.broadcast_to(eye, cells.shape)
    free = [k for k in range(3) if not pbc[k]]
    if len(periodic) == 2:
        normal = xp.cross(rows[periodic[0]], rows[periodic[1]])
        rows[free[0]] = normal / xp.linalg.norm(normal, axis=-1, keepdims=True)
    else:
        u = rows[periodic[0]] / xp.linalg.norm(rows[periodic[0]], axis=-1, keepdims=True)
        # The Cartesian axis least aligned with u gives a well-conditioned orthogonal complement.
        axis = xp.argmin(xp.abs(u), axis=-1)
        e = (xp.arange(3) == axis[..., None]).astype(cells.dtype)
        v1 = e - xp.sum(e * u, axis=-1, keepdims=True) * u
        v1 = v1 / xp.linalg.norm(v1, axis=-1, keepdims=True)
        rows[free[0]] = v1
        rows[free[1]] = xp.cross(u, v1)
    return xp.stack(rows, axis=-2)


def inverse3(matrix, xp=np):
    """Inverse of [..., 3, 3] matrices by cofactors (rows a, b, c -> columns b x c, c x a, a x b over
    the determinant). Compiles far faster than ``jnp.linalg.inv``'s LU decomposition."""
    a, b, c = matrix[..., 0, :], matrix[..., 1, :], matrix[..., 2, :]
    bc = xp.cross(b, c)
    columns = xp.stack([bc, xp.cross(c, a), xp.cross(a, b)], axis=-1)
    return columns / xp.sum(a * bc, axis=-1)[..., None, None]


def heights(inverse_frame, xp=np):
    """Perpendicular heights [..., 3] Å of the frame's cell: h_k = 1 / |column k of frame^-1|.

    h_k is the distance between the two faces of the cell spanned by the other two vectors; a
    sphere of radius r crosses at most ceil(r / h_k) periodic images along direction k.
    """
    return 1.0 / xp.linalg.norm(inverse_frame, axis=-2)


def validate_positions(positions) -> np.ndarray:
    """positions as float64 [N, 3] (N >= 0); ValueError for a wrong shape, NaN or inf."""
    r = np.asarray(positions, dtype=np.float64)
    if r.ndim != 2 or r.shape[1] != 3:
        raise ValueError(f"positions must have shape [N, 3] (Å), got {list(r.shape)}")
    if not np.all(np.isfinite(r)):
        bad = np.unique(np.nonzero(~np.isfinite(r))[0])
        raise ValueError(f"positions contain NaN or inf (atoms {bad[:10].tolist()})")
    return r


def validate_cutoff(cutoff) -> float:
    c = float(cutoff)
    if not np.isfinite(c) or c <= 0:
        raise ValueError(f"cutoff must be a positive finite distance in Å, got {cutoff!r}")
    return c
