"""Labelled structures for training: a compact, split-aware container stored as one ``.npz`` file.

Frames of different sizes are stored back to back (ragged arrays with per-frame atom counts), so
a file of 15 000 small molecules is a few MB. Every frame belongs to a *system* (a molecule, a
dimer or a cluster); the train/validation/test split is a property of the system, so a test
molecule is never seen in training.

Arrays (A = total atoms over all frames, F frames, S systems)::

    numbers    [A] uint8      atomic numbers
    positions  [A, 3] f64     Å
    forces     [A, 3] f64     eV/Å (teacher)
    energy     [F] f64        eV (teacher total energy)
    num_atoms  [F] int32      atoms of each frame
    system     [F] int32      index into the system arrays
    system_name   [S] str     canonical SMILES, or a cluster description
    system_split  [S] int8    0 train, 1 validation, 2 test
    metadata   JSON string    teacher, seed, generator settings, versions
    force_weight  [A] f64     optional: weight of each atom's force in the loss and the force errors
                              (absent: 1 for every atom; 0 for the buffer atoms of carved clusters)
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import zlib
from typing import Any

import numpy as np

SPLITS = {"train": 0, "validation": 1, "test": 2}


def assign_split(name: str, seed: int, fractions: tuple[float, float] = (0.1, 0.1)) -> int:
    """Split of a system, from a stable hash of its name and the seed (not of its position in a list).

    fractions: (validation, test). Returns 0 (train), 1 (validation) or 2 (test).
    """
    u = np.random.default_rng([seed, zlib.crc32(name.encode())]).random()
    validation, test = fractions
    if u < test:
        return SPLITS["test"]
    if u < test + validation:
        return SPLITS["validation"]
    return SPLITS["train"]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Ragged frames of labelled structures (see the module docstring for the arrays)."""

    numbers: np.ndarray
    positions: np.ndarray
    forces: np.ndarray
    energy: np.ndarray
    num_atoms: np.ndarray
    system: np.ndarray
    system_name: np.ndarray
    system_split: np.ndarray
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    force_weight: np.ndarray | None = None  # [A], None: every atom's force has weight 1

    def __post_init__(self):
        a, f = int(np.sum(self.num_atoms)), len(self.energy)
        problems = []
        if self.numbers.shape != (a,) or self.positions.shape != (a, 3) or self.forces.shape != (a, 3):
            problems.append(f"atom arrays must be [{a}] / [{a}, 3] (sum of num_atoms)")
        if self.num_atoms.shape != (f,) or self.system.shape != (f,):
            problems.append(f"frame arrays must all have {f} entries")
        if len(self.system_name) != len(self.system_split):
            problems.append("system_name and system_split differ in length")
        if f and (self.system.min() < 0 or self.system.max() >= len(self.system_name)):
            problems.append("system index out of range")
        if self.force_weight is not None and (np.shape(self.force_weight) != (a,) or np.any(self.force_weight < 0)
                                              or not np.all(np.isfinite(self.force_weight))):
            problems.append(f"force_weight must be [{a}], finite and >= 0")
        if problems:
            raise ValueError("inconsistent dataset: " + "; ".join(problems))

    # ------------------------------------------------------------------ views
    @property
    def num_frames(self) -> int:
        return len(self.energy)

    @property
    def offsets(self) -> np.ndarray:
        """[F + 1] start of each frame in the atom arrays."""
        return np.concatenate([[0], np.cumsum(self.num_atoms)]).astype(np.int64)

    def frame(self, i: int) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
        """(numbers [n], positions [n, 3] Å, energy eV, forces [n, 3] eV/Å) of frame i."""
        o = self.offsets
        sl = slice(o[i], o[i + 1])
        return self.numbers[sl], self.positions[sl], float(self.energy[i]), self.forces[sl]

    def frame_split(self) -> np.ndarray:
        """[F] split code of every frame (0 train, 1 validation, 2 test)."""
        return self.system_split[self.system]

    def select(self, frames) -> "Dataset":
        """A dataset of the given frames (indices or a boolean mask); systems are kept as they are."""
        frames = np.arange(self.num_frames)[np.asarray(frames)]
        o = self.offsets
        atoms = np.concatenate([np.arange(o[i], o[i + 1]) for i in frames]) if len(frames) else np.zeros(0, np.int64)
        return dataclasses.replace(
            self,
            numbers=self.numbers[atoms],
            positions=self.positions[atoms],
            forces=self.forces[atoms],
            energy=self.energy[frames],
            num_atoms=self.num_atoms[frames],
            system=self.system[frames],
            force_weight=None if self.force_weight is None else self.force_weight[atoms],
        )

    def compact(self) -> "Dataset":
        """The same frames, with the systems that have no frame dropped (and the rest renumbered)."""
        used, system = np.unique(self.system, return_inverse=True)
        return dataclasses.replace(self, system=system.astype(np.int32), system_name=self.system_name[used],
                                   system_split=self.system_split[used])

    def split(self, name: str) -> "Dataset":
        """Frames of the 'train', 'validation' or 'test' systems."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {name!r}")
        return self.select(self.frame_split() == SPLITS[name])

    def all_in(self, split: str) -> "Dataset":
        """The same dataset with every system in ``split`` ("train", "validation" or "test")."""
        return dataclasses.replace(self, system_split=np.full(len(self.system_name), SPLITS[split], np.int8))

    def elements(self) -> list[int]:
        return sorted(set(np.unique(self.numbers).tolist()))

    def atom_force_weights(self) -> np.ndarray:
        """[A] weight of every atom's force (ones when the dataset has none)."""
        return np.ones(len(self.numbers)) if self.force_weight is None else self.force_weight

    def composition(self, max_z: int) -> np.ndarray:
        """[F, max_z + 1] count of each element in each frame."""
        counts = np.zeros((self.num_frames, max_z + 1), np.float64)
        frame_of_atom = np.repeat(np.arange(self.num_frames), self.num_atoms)
        np.add.at(counts, (frame_of_atom, self.numbers.astype(np.int64)), 1.0)
        return counts

    def summary(self) -> dict[str, Any]:
        out = {"frames": self.num_frames, "atoms": int(self.num_atoms.sum()), "systems": len(self.system_name)}
        for name, code in SPLITS.items():
            out[f"{name}_systems"] = int(np.sum(self.system_split == code))
            out[f"{name}_frames"] = int(np.sum(self.frame_split() == code))
        out["max_atoms"] = int(self.num_atoms.max()) if self.num_frames else 0
        out["elements"] = self.elements()
        return out

    # ------------------------------------------------------------------ files
    def save(self, path, float32: bool = False) -> None:
        """Writes a compressed ``.npz``: positions and forces in float64 (labels stay exact), or with
        ``float32`` in float32 (half the size, for carrying a training copy: training runs in float32;
        energies stay float64). :meth:`load` reads both as float64."""
        label = np.float32 if float32 else np.float64
        metadata = {**self.metadata, "stored_float32": True} if float32 else self.metadata
        optional = {} if self.force_weight is None else {"force_weight": self.force_weight.astype(np.float64)}
        np.savez_compressed(
            path,
            numbers=self.numbers.astype(np.uint8),
            positions=self.positions.astype(label),
            forces=self.forces.astype(label),
            energy=self.energy.astype(np.float64),
            num_atoms=self.num_atoms.astype(np.int32),
            system=self.system.astype(np.int32),
            system_name=np.asarray(self.system_name, dtype=str),
            system_split=self.system_split.astype(np.int8),
            metadata=np.asarray(json.dumps(metadata)),
            **optional,
        )

    def save_float32_copy(self, path, tag: str) -> None:
        """The ``--float32-out`` of the dataset commands: :meth:`save` with ``float32`` (parent
        folders made), and a line ``[tag] wrote PATH (float32 positions and forces, S MiB)``."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.save(path, float32=True)
        print(f"[{tag}] wrote {path} (float32 positions and forces, {path.stat().st_size / 2**20:.1f} MiB)", flush=True)

    @classmethod
    def load(cls, path) -> "Dataset":
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no dataset file at {path}")
        with np.load(path, allow_pickle=False) as f:
            missing = {"numbers", "positions", "forces", "energy", "num_atoms", "system", "system_name", "system_split"} - set(f.files)
            if missing:
                raise ValueError(f"{path} is not an mlff-jax dataset: missing arrays {sorted(missing)}")
            return cls(
                numbers=f["numbers"].astype(np.int32),
                positions=f["positions"].astype(np.float64),
                forces=f["forces"].astype(np.float64),
                energy=f["energy"].astype(np.float64),
                num_atoms=f["num_atoms"].astype(np.int32),
                system=f["system"].astype(np.int32),
                system_name=f["system_name"].astype(str),
                system_split=f["system_split"].astype(np.int8),
                metadata=json.loads(str(f["metadata"])) if "metadata" in f.files else {},
                force_weight=f["force_weight"].astype(np.float64) if "force_weight" in f.files else None,
            )

    @classmethod
    def concatenate(cls, parts: list["Dataset"], metadata: dict[str, Any] | None = None) -> "Dataset":
        """Joins datasets; systems of each part are renumbered after the previous parts'."""
        shift, systems = 0, []
        for p in parts:
            systems.append(p.system + shift)
            shift += len(p.system_name)
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        weighted = any(p.force_weight is not None for p in parts)
        weights = [p.force_weight if p.force_weight is not None else np.ones(len(p.numbers)) for p in parts]
        return cls(
            numbers=cat("numbers"),
            positions=cat("positions").reshape(-1, 3),
            forces=cat("forces").reshape(-1, 3),
            energy=cat("energy"),
            num_atoms=cat("num_atoms"),
            system=np.concatenate(systems).astype(np.int32),
            system_name=cat("system_name"),
            system_split=cat("system_split"),
            metadata=metadata if metadata is not None else (parts[0].metadata if parts else {}),
            force_weight=np.concatenate(weights) if weighted else None,
        )


def small_subset(dataset: Dataset, split: str = "test", frames_per_system: int = 4, seed: int = 0) -> Dataset:
    """A few frames of every system of one split (seeded): the small file committed for tests."""
    rng = np.random.default_rng(seed)
    code = SPLITS[split]
    chosen = []
    for s in np.nonzero(dataset.system_split == code)[0]:
        frames = np.nonzero(dataset.system == s)[0]
        if len(frames):
            chosen.extend(sorted(rng.choice(frames, min(frames_per_system, len(frames)), replace=False).tolist()))
    return dataset.select(np.asarray(sorted(chosen), np.int64)).compact()


def merge(parts: list[Dataset], names: list[str] | None = None) -> Dataset:
    """One dataset of several (e.g. molecules, carved liquid clusters, clusters of the model's MD):
    every system keeps the split its part gave it, every atom its force weight (1 where a part has
    none). The metadata records each part's metadata under "parts" (with its file name from ``names``).

    Raises ValueError if two parts share a system name (a system would be in two splits, or twice),
    or there is no part.
    """
    if not parts:
        raise ValueError("merge needs at least one dataset")
    names = names or [f"part{i}" for i in range(len(parts))]
    seen: dict[str, str] = {}
    for part, label in zip(parts, names):
        for system in part.system_name.tolist():
            if system in seen:
                raise ValueError(f"system {system!r} is in both {seen[system]} and {label}: merged parts must not share "
                                 "system names (the same system would be counted twice, possibly in two splits)")
            seen[system] = label
    metadata = {"merged": True, "parts": [{"file": label, "frames": p.num_frames, "systems": len(p.system_name),
                                           "metadata": p.metadata} for p, label in zip(parts, names)]}
    teachers = {str(p.metadata.get("teacher", "")) for p in parts}
    if len(teachers) == 1:  # one teacher labelled every part
        metadata["teacher"] = teachers.pop()
    return Dataset.concatenate(parts, metadata=metadata)


def main(argv: list[str] | None = None) -> int:
    """``python3 -m mlff_jax.train.dataset merge A.npz B.npz ... --out C.npz [--float32-out C32.npz]``
    (or ``summary A.npz``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python3 -m mlff_jax.train.dataset", description="Dataset files: merge, summary.")
    commands = parser.add_subparsers(dest="command", required=True)
    join = commands.add_parser("merge", help="join datasets; each system keeps its split and force weights")
    join.add_argument("inputs", nargs="+", help="dataset .npz files")
    join.add_argument("--out", required=True, help="merged dataset .npz (float64 labels)")
    join.add_argument("--float32-out", default=None, help="also write a copy with float32 positions and forces")
    join.add_argument("--split-of", action="append", default=[], metavar="FILE=SPLIT",
                      help="put every system of input FILE in SPLIT (train, validation or test), e.g. clusters of a model's own "
                           "MD labelled as a test set, then trained on by the next round; repeatable")
    show = commands.add_parser("summary", help="print a dataset's summary")
    show.add_argument("inputs", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "summary":
        for path in args.inputs:
            print(f"{path}: {json.dumps(Dataset.load(path).summary())}")
        return 0
    splits = {}
    for item in args.split_of:
        path, _, split = item.rpartition("=")
        if path not in args.inputs or split not in SPLITS:
            parser.error(f"--split-of {item!r}: need FILE=SPLIT with FILE one of the inputs and SPLIT one of {', '.join(SPLITS)}")
        splits[path] = split
    parts = [Dataset.load(p).all_in(splits[p]) if p in splits else Dataset.load(p) for p in args.inputs]
    merged = merge(parts, [pathlib.Path(p).name for p in args.inputs])
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    merged.save(args.out)
    print(f"[dataset] wrote {args.out}: {json.dumps(merged.summary())}")
    if args.float32_out:
        merged.save_float32_copy(args.float32_out, "dataset")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
