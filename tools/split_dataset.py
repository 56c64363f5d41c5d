"""Split a dataset into N float32 parts by frames (the GPU machine returns files of at most 16 MiB).

    python3 tools/split_dataset.py DATASET.npz OUT_DIR N

Every part keeps the whole system table, so the parts rejoin without renumbering systems.
"""
import pathlib
import sys

import numpy as np

from mlff_jax.train.dataset import Dataset

src, out, nparts = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3])
dataset = Dataset.load(src)
for k, frames in enumerate(np.array_split(np.arange(dataset.num_frames), nparts)):
    part = dataset.select(frames)
    path = out / f"{pathlib.Path(src).stem}_part{k}.npz"
    part.save(path, float32=True)
    print(path, f"{path.stat().st_size / 2**20:.1f} MiB", part.num_frames, "frames")
