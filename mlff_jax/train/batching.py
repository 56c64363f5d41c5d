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


class Packer:
    """Host-side batcher of one dataset: edges are found once, batches are built per epoch."""

    def __init__(self, dataset: Dataset, cutoff: float):
        self.dataset = dataset
        self.offsets = dataset.offsets
        self.edges = [frame_edges(dataset.frame(i)[1], cutoff) for i in range(dataset.num_frames)]
        self.num_edges = np.array([len(s) for s, _ in self.edges], np.int64)

    def auto_shape(self, max_structures: int, slack: float = 1.15, multiple: int = 64) -> BatchShape:
        """Atom and edge budgets for ``max_structures`` frames of average size (plus slack), and at
        least the largest single frame."""
        atoms = max(int(math.ceil(max_structures * self.dataset.num_atoms.mean() * slack)), int(self.dataset.num_atoms.max()))
        edges = max(int(math.ceil(max_structures * self.num_edges.mean() * slack)), int(self.num_edges.max()))
        round_up = lambda x: int(math.ceil(x / multiple) * multiple)  # noqa: E731
        return BatchShape(max_structures, round_up(atoms), round_up(edges))

    def groups(self, order: np.ndarray, shape: BatchShape) -> list[list[int]]:
        """Consecutive frames of ``order`` packed greedily into batches that respect ``shape``."""
        too_big = [i for i in order if self.dataset.num_atoms[i] > shape.max_atoms or self.num_edges[i] > shape.max_edges]
        if too_big:
            i = too_big[0]
            raise ValueError(
                f"frame {i} ({self.dataset.num_atoms[i]} atoms, {self.num_edges[i]} edges) does not fit a batch of "
                f"{shape.max_atoms} atoms / {shape.max_edges} edges"
            )
        groups, current, atoms, edges = [], [], 0, 0
        for i in order:
            n, e = int(self.dataset.num_atoms[i]), int(self.num_edges[i])
            if current and (len(current) == shape.max_structures or atoms + n > shape.max_atoms or edges + e > shape.max_edges):
                groups.append(current)
                current, atoms, edges = [], 0, 0
            current.append(int(i))
            atoms += n
            edges += e
        if current:
            groups.append(current)
        return groups

    def pack(self, frames: list[int], shape: BatchShape, dtype=np.float32) -> dict[str, np.ndarray]:
        """One batch as NumPy arrays (the fields of :class:`Batch`, edges flattened as edge_*)."""
        out = {
            "positions": np.zeros((shape.max_atoms, 3), dtype),
            "numbers": np.ones(shape.max_atoms, np.int32),
            "atom_mask": np.zeros(shape.max_atoms, bool),
            "structure": np.zeros(shape.max_atoms, np.int32),
            "edge_senders": np.zeros(shape.max_edges, np.int32),
            "edge_receivers": np.zeros(shape.max_edges, np.int32),
            "edge_mask": np.zeros(shape.max_edges, bool),
            "energy": np.zeros(shape.max_structures, np.float64),
            "forces": np.zeros((shape.max_atoms, 3), dtype),
            "num_atoms": np.zeros(shape.max_structures, dtype),
            "structure_mask": np.zeros(shape.max_structures, bool),
        }
        a0 = e0 = 0
        ds = self.dataset
        for slot, i in enumerate(frames):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            n = hi - lo
            senders, receivers = self.edges[i]
            e = len(senders)
            out["positions"][a0 : a0 + n] = ds.positions[lo:hi]
            out["numbers"][a0 : a0 + n] = ds.numbers[lo:hi]
            out["atom_mask"][a0 : a0 + n] = True
            out["structure"][a0 : a0 + n] = slot
            out["forces"][a0 : a0 + n] = ds.forces[lo:hi]
            out["edge_senders"][e0 : e0 + e] = senders + a0
            out["edge_receivers"][e0 : e0 + e] = receivers + a0
            out["edge_mask"][e0 : e0 + e] = True
            out["energy"][slot] = ds.energy[i]
            out["num_atoms"][slot] = n
            out["structure_mask"][slot] = True
            a0 += n
            e0 += e
        return out

    def epoch(self, shape: BatchShape, rng: np.random.Generator | None, multiple_of: int = 1, dtype=np.float32) -> dict[str, np.ndarray]:
        """All frames (shuffled when ``rng`` is given) packed and stacked: arrays [num_batches, ...].

        With ``multiple_of`` > 1 the batch count is cut to a multiple of it (the dropped frames are
        reshuffled into the next epoch); with ``rng=None`` every frame is kept, in order.
        """
        order = rng.permutation(self.dataset.num_frames) if rng is not None else np.arange(self.dataset.num_frames)
        groups = self.groups(order, shape)
        if multiple_of > 1:
            groups = groups[: max(len(groups) // multiple_of, 1) * multiple_of] if len(groups) >= multiple_of else groups
        packed = [self.pack(g, shape, dtype) for g in groups]
        return {k: np.stack([p[k] for p in packed]) for k in packed[0]}


def to_batch(arrays: dict, energy_dtype=None) -> Batch:
    """:class:`Batch` from the arrays of :meth:`Packer.pack` (NumPy or JAX, any leading axes)."""
    shifts = np.zeros(arrays["edge_senders"].shape + (3,), arrays["positions"].dtype) if isinstance(arrays["positions"], np.ndarray) else None
    if shifts is None:
        import jax.numpy as jnp

        shifts = jnp.zeros(arrays["edge_senders"].shape + (3,), arrays["positions"].dtype)
    edges = Edges(arrays["edge_senders"], arrays["edge_receivers"], shifts, arrays["edge_mask"])
    energy = arrays["energy"] if energy_dtype is None else arrays["energy"].astype(energy_dtype)
    return Batch(arrays["positions"], arrays["numbers"], arrays["atom_mask"], arrays["structure"], edges, energy,
                 arrays["forces"], arrays["num_atoms"], arrays["structure_mask"])
