"""Split a dataset into N float32 parts by frames (the GPU machine returns files of at most 16 MiB),
and join such parts back into one dataset.

    python3 tools/split_dataset.py DATASET.npz OUT_DIR N          # writes OUT_DIR/DATASET_part{k}.npz
    python3 tools/split_dataset.py --join OUT.npz PART0.npz PART1.npz ...

Every part keeps the whole system table, so the parts rejoin without renumbering systems (joining
refuses parts whose system tables differ).
"""
import pathlib
import sys

import numpy as np

from mlff_jax.train.dataset import Dataset


def split(src: str, out: pathlib.Path, nparts: int) -> None:
    dataset = Dataset.load(src)
    for k, frames in enumerate(np.array_split(np.arange(dataset.num_frames), nparts)):
        part = dataset.select(frames)
        path = out / f"{pathlib.Path(src).stem}_part{k}.npz"
        part.save(path, float32=True)
        print(path, f"{path.stat().st_size / 2**20:.1f} MiB", part.num_frames, "frames")


def join(paths: list[str]) -> Dataset:
    parts = [Dataset.load(p) for p in paths]
    first = parts[0]
    for path, part in zip(paths[1:], parts[1:]):
        if list(part.system_name) != list(first.system_name) or not np.array_equal(part.system_split, first.system_split):
            raise ValueError(f"{path}: its system table differs from {paths[0]}'s: not parts of one split dataset")
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    weights = None if first.force_weight is None else cat("force_weight")
    return Dataset(numbers=cat("numbers"), positions=cat("positions"), forces=cat("forces"), energy=cat("energy"),
                   num_atoms=cat("num_atoms"), system=cat("system"), system_name=first.system_name,
                   system_split=first.system_split, metadata=first.metadata, force_weight=weights)


if __name__ == "__main__":
    if sys.argv[1] == "--join":
        joined = join(sys.argv[3:])
        joined.save(sys.argv[2])
        print(sys.argv[2], joined.summary())
    else:
        split(sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3]))
