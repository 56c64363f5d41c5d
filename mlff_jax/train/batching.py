"""Packing ragged frames into fixed-size batches, so that training compiles one step only.

A batch holds up to ``max_structures`` frames, ``max_atoms`` atoms and ``max_edges`` edges; the
rest is padding (masked: it contributes exactly zero to energies, forces and the loss). Edges are
the ordered pairs of atoms of the same frame within the cutoff, found once on the host: training
positions never move, and the model applies the same cutoff itself, so this is exact (the same
energy as ``graph.all_pairs_edges``, without the O(N_batch^2) candidate pairs across frames).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from mlff_jax.graph import Edges
from mlff_jax.train.dataset import Dataset

EDGE_MARGIN = 1e-6  # Å: keep pairs a hair beyond the cutoff (the model masks them exactly)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Batch:
    """Padded frames. N = max_atoms, E = max_edges, B = max_structures.

    Attributes:
      positions: [N, 3] Å (padding atoms at the origin; they have no edges).
      numbers: [N] int32 (1 for padding atoms).
      atom_mask: [N] bool.
      structure: [N] int32, frame slot of each atom (0 for padding atoms).
      edges: :class:`Edges` with E slots.
      energy: [B] eV, teacher energies (0 for padding slots).
      forces: [N, 3] eV/Å, teacher forces (0 for padding atoms).
      force_weight: [N], weight of each atom's force in the loss (0 for padding atoms; see Dataset).
      num_atoms: [B] float, atoms of each frame (0 for padding slots).
      structure_mask: [B] bool.
    """

    positions: jax.Array
    numbers: jax.Array
    atom_mask: jax.Array
    structure: jax.Array
    edges: Edges
    energy: jax.Array
    forces: jax.Array
    num_atoms: jax.Array
    structure_mask: jax.Array
    force_weight: jax.Array

    @property
    def max_structures(self) -> int:
        return self.energy.shape[-1]


@dataclasses.dataclass(frozen=True)
class BatchShape:
    """Static sizes of a batch (they decide the compiled program)."""

    max_structures: int
    max_atoms: int
    max_edges: int


def frame_edges(positions: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Ordered pairs (a, b), a != b, with |R_a - R_b| <= cutoff: (senders, receivers), local indices."""
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    close = (d <= cutoff + EDGE_MARGIN) & ~np.eye(len(positions), dtype=bool)
    a, b = np.nonzero(close)
    return a.astype(np.int32), b.astype(np.int32)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for each (s, n), vectorised."""
    total = int(np.sum(lengths))
    if total == 0:
        return np.zeros(0, np.int64)
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + (np.arange(total) - first)


class Packer:
    """Host-side batcher of one dataset: edges are found once, batches are built per epoch
    (vectorised NumPy: an epoch of ~15 000 frames packs in well under a second)."""

    def __init__(self, dataset: Dataset, cutoff: float):
        self.dataset = dataset
        self.offsets = dataset.offsets
        edges = [frame_edges(dataset.frame(i)[1], cutoff) for i in range(dataset.num_frames)]
        self.num_edges = np.array([len(s) for s, _ in edges], np.int64)
        self.edge_offsets = np.concatenate([[0], np.cumsum(self.num_edges)]).astype(np.int64)
        self.senders = np.concatenate([s for s, _ in edges]) if edges else np.zeros(0, np.int32)
        self.receivers = np.concatenate([r for _, r in edges]) if edges else np.zeros(0, np.int32)

    def auto_shape(self, max_structures: int, slack: float = 1.15, multiple: int = 64) -> BatchShape:
        """Atom and edge budgets for ``max_structures`` frames of average size (plus slack), and at
        least the largest single frame."""
        atoms = max(int(math.ceil(max_structures * self.dataset.num_atoms.mean() * slack)), int(self.dataset.num_atoms.max()))
        edges = max(int(math.ceil(max_structures * self.num_edges.mean() * slack)), int(self.num_edges.max()))
        round_up = lambda x: int(math.ceil(x / multiple) * multiple)  # noqa: E731
        return BatchShape(max_structures, round_up(atoms), round_up(edges))

    def groups(self, order: np.ndarray, shape: BatchShape) -> list[list[int]]:
        """Consecutive frames of ``order`` packed greedily into batches that respect ``shape``."""
        order = np.asarray(order, np.int64)
        atoms_of, edges_of = self.dataset.num_atoms[order], self.num_edges[order]
        too_big = np.nonzero((atoms_of > shape.max_atoms) | (edges_of > shape.max_edges))[0]
        if len(too_big):
            i = int(order[too_big[0]])
            raise ValueError(
                f"frame {i} ({self.dataset.num_atoms[i]} atoms, {self.num_edges[i]} edges) does not fit a batch of "
                f"{shape.max_atoms} atoms / {shape.max_edges} edges"
            )
        groups, current, atoms, edges = [], [], 0, 0
        for i, n, e in zip(order.tolist(), atoms_of.tolist(), edges_of.tolist()):
            if current and (len(current) == shape.max_structures or atoms + n > shape.max_atoms or edges + e > shape.max_edges):
                groups.append(current)
                current, atoms, edges = [], 0, 0
            current.append(i)
            atoms += n
            edges += e
        if current:
            groups.append(current)
        return groups

    def pack_groups(self, groups: list[list[int]], shape: BatchShape, dtype=np.float32) -> dict[str, np.ndarray]:
        """Batches (one per group of frames) as stacked NumPy arrays [num_batches, ...]: the fields
        of :class:`Batch`, with the edges flattened as ``edge_senders``/``edge_receivers``/``edge_mask``."""
        ds, nb = self.dataset, len(groups)
        frames = np.fromiter((i for g in groups for i in g), np.int64)
        sizes = np.array([len(g) for g in groups], np.int64)
        batch_of_frame = np.repeat(np.arange(nb), sizes)
        slot = np.arange(len(frames)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        n_atoms, n_edges = ds.num_atoms[frames].astype(np.int64), self.num_edges[frames]

        def start_in_batch(counts):  # where each frame starts inside its batch
            total = np.cumsum(counts) - counts
            return total - np.repeat(total[np.cumsum(sizes) - sizes], sizes)

        atom_start, edge_start = start_in_batch(n_atoms), start_in_batch(n_edges)
        src_atoms = _ranges(self.offsets[frames], n_atoms)
        dst_batch = np.repeat(batch_of_frame, n_atoms)
        dst_atom = _ranges(atom_start, n_atoms)
        src_edges = _ranges(self.edge_offsets[frames], n_edges)
        edge_batch = np.repeat(batch_of_frame, n_edges)
        edge_slot = _ranges(edge_start, n_edges)
        edge_shift = np.repeat(atom_start, n_edges)  # local atom index -> index inside the batch

        A, E, B = shape.max_atoms, shape.max_edges, shape.max_structures
        atom_at = dst_batch * A + dst_atom  # flat destinations: 1-D fancy indexing is the fast path
        edge_at = edge_batch * E + edge_slot
        frame_at = batch_of_frame * B + slot
        out = {
            "positions": np.zeros((nb * A, 3), dtype),
            "numbers": np.ones(nb * A, np.int32),
            "atom_mask": np.zeros(nb * A, bool),
            "structure": np.zeros(nb * A, np.int32),
            "edge_senders": np.zeros(nb * E, np.int32),
            "edge_receivers": np.zeros(nb * E, np.int32),
            "edge_mask": np.zeros(nb * E, bool),
            "energy": np.zeros(nb * B, np.float64),
            "forces": np.zeros((nb * A, 3), dtype),
            "force_weight": np.zeros(nb * A, dtype),
            "num_atoms": np.zeros(nb * B, dtype),
            "structure_mask": np.zeros(nb * B, bool),
        }
        out["positions"][atom_at] = ds.positions[src_atoms]
        out["numbers"][atom_at] = ds.numbers[src_atoms]
        out["atom_mask"][atom_at] = True
        out["structure"][atom_at] = np.repeat(slot, n_atoms)
        out["forces"][atom_at] = ds.forces[src_atoms]
        out["force_weight"][atom_at] = ds.atom_force_weights()[src_atoms]
        out["edge_senders"][edge_at] = self.senders[src_edges] + edge_shift
        out["edge_receivers"][edge_at] = self.receivers[src_edges] + edge_shift
        out["edge_mask"][edge_at] = True
        out["energy"][frame_at] = ds.energy[frames]
        out["num_atoms"][frame_at] = n_atoms
        out["structure_mask"][frame_at] = True
        return {k: v.reshape((nb, -1) + v.shape[1:]) for k, v in out.items()}

    def pack(self, frames: list[int], shape: BatchShape, dtype=np.float32) -> dict[str, np.ndarray]:
        """One batch (arrays without the leading batch axis)."""
        return {k: v[0] for k, v in self.pack_groups([list(frames)], shape, dtype).items()}

    def epoch(self, shape: BatchShape, rng: np.random.Generator | None, multiple_of: int = 1, dtype=np.float32) -> dict[str, np.ndarray]:
        """All frames (shuffled when ``rng`` is given) packed and stacked: arrays [num_batches, ...].

        With ``multiple_of`` > 1 the batch count is cut to a multiple of it (the dropped frames are
        reshuffled into the next epoch), or, for a dataset of fewer batches, the batches are repeated up
        to it; with ``rng=None`` every frame is kept, in order.
        """
        order = rng.permutation(self.dataset.num_frames) if rng is not None else np.arange(self.dataset.num_frames)
        groups = self.groups(order, shape)
        if multiple_of > 1:
            if len(groups) >= multiple_of:
                groups = groups[: len(groups) // multiple_of * multiple_of]
            else:
                groups = [groups[i % len(groups)] for i in range(multiple_of)]
        return self.pack_groups(groups, shape, dtype)


def to_batch(arrays: dict, energy_dtype=None) -> Batch:
    """:class:`Batch` from the arrays of :meth:`Packer.pack` (NumPy or JAX, any leading axes)."""
    shifts = np.zeros(arrays["edge_senders"].shape + (3,), arrays["positions"].dtype) if isinstance(arrays["positions"], np.ndarray) else None
    if shifts is None:
        import jax.numpy as jnp

        shifts = jnp.zeros(arrays["edge_senders"].shape + (3,), arrays["positions"].dtype)
    edges = Edges(arrays["edge_senders"], arrays["edge_receivers"], shifts, arrays["edge_mask"])
    energy = arrays["energy"] if energy_dtype is None else arrays["energy"].astype(energy_dtype)
    # arrays packed before per-atom weights existed: every real atom has weight 1
    force_weight = arrays["force_weight"] if "force_weight" in arrays else arrays["atom_mask"].astype(arrays["positions"].dtype)
    return Batch(arrays["positions"], arrays["numbers"], arrays["atom_mask"], arrays["structure"], edges, energy,
                 arrays["forces"], arrays["num_atoms"], arrays["structure_mask"], force_weight)
