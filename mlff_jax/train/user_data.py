"""A user's labelled structures (energies and forces) as a training :class:`~mlff_jax.train.dataset.Dataset`.

Two kinds of files are read:

- any file ASE reads (extended XYZ first of all), one frame per structure, with the energy and
  forces either as a calculator's results (what ``ase.io.write`` stores for atoms with a
  ``SinglePointCalculator``, and what extxyz's ``energy=`` and ``forces`` columns become) or under
  other names in ``atoms.info`` / ``atoms.arrays`` (``energy_key`` / ``forces_key``, e.g.
  ``REF_energy``);
- an ``.npz`` of fixed-size frames: ``R`` [F, N, 3] Å, ``Z`` (or ``z``) [N] or [F, N], ``E`` [F] or
  [F, 1] eV, ``F`` [F, N, 3] eV/Å (the layout of the sGDML / MD17 files; use ``energy_unit`` for
  kcal/mol). An ``.npz`` written by :meth:`Dataset.save` is loaded as it is.

Units: positions Å; energies in ``energy_unit`` (default eV) and forces in ``energy_unit``/Å,
converted to eV and eV/Å. Structures must be non-periodic (molecules, clusters): training has no
periodic images yet.

Split (train / validation / test) is by *system*: frames with the same ``atoms.info["system"]``
(``system_key``) stay together, so correlated frames of one trajectory are not spread over the
splits; without it every frame is its own system. ``atoms.info["split"]`` ("train", "validation",
"test") fixes a frame's split; otherwise it comes from a hash of (seed, system name) as for the
generated data. An optional per-atom column ``force_weight`` (``atoms.arrays``, >= 0) weights each
atom's force in the loss (0: the force is not fitted, e.g. the buffer shell of a carved cluster).
Energies, forces and positions must be finite, forces [n, 3], elements 1..max_z:
anything else is a ValueError naming the file and the frame.
"""

from __future__ import annotations

import pathlib

import numpy as np

from mlff_jax.train.dataset import SPLITS, Dataset, assign_split

# eV per unit of energy (forces are taken in the same unit per Å)
ENERGY_UNITS = {"eV": 1.0, "meV": 1e-3, "kcal/mol": 0.0433641043, "kJ/mol": 0.0103642688}
DATASET_ARRAYS = {"numbers", "positions", "forces", "energy", "num_atoms", "system", "system_name", "system_split"}


def load_training_data(path, *, seed: int = 0, fractions: tuple[float, float] = (0.1, 0.1), energy_key: str = "energy",
                       forces_key: str = "forces", energy_unit: str = "eV", max_z: int = 100) -> Dataset:
    """The dataset of ``path``: an mlff-jax dataset ``.npz`` as it is, anything else through :func:`read_labelled`."""
    path = pathlib.Path(path)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as f:
            if DATASET_ARRAYS <= set(f.files):
                return Dataset.load(path)
    return read_labelled(path, seed=seed, fractions=fractions, energy_key=energy_key, forces_key=forces_key,
                         energy_unit=energy_unit, max_z=max_z)


def read_labelled(path, *, seed: int = 0, fractions: tuple[float, float] = (0.1, 0.1), energy_key: str = "energy",
                  forces_key: str = "forces", energy_unit: str = "eV", system_key: str = "system", max_z: int = 100,
                  index: str = ":", format: str | None = None) -> Dataset:
    """Reads labelled structures (see the module docstring) into a split :class:`Dataset`.

    fractions: (validation, test) fractions of the systems without an explicit split.
    Raises FileNotFoundError for a missing file, ValueError for a file without usable labels.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no labelled-structure file at {path}")
    if energy_unit not in ENERGY_UNITS:
        raise ValueError(f"energy_unit must be one of {sorted(ENERGY_UNITS)}, got {energy_unit!r}")
    if path.suffix == ".npz":
        frames = _npz_frames(path)
    else:
        frames = _ase_frames(path, index, format, energy_key, forces_key, system_key)
    if not frames:
        raise ValueError(f"{path}: no structures")
    scale = ENERGY_UNITS[energy_unit]
    names: dict[str, int] = {}
    splits: list[int] = []
    numbers, positions, forces, energy, num_atoms, system, weights = [], [], [], [], [], [], []
    weighted = any(frame[6] is not None for frame in frames)
    for i, (z, r, e, f, name, split, weight) in enumerate(frames):
        where = f"{path}, frame {i}"
        z, r, f = np.asarray(z), np.asarray(r, np.float64), np.asarray(f, np.float64)
        n = len(z)
        if n == 0:
            raise ValueError(f"{where}: no atoms")
        if r.shape != (n, 3) or f.shape != (n, 3):
            raise ValueError(f"{where}: {n} atoms, but positions {r.shape} and forces {f.shape} (both must be [{n}, 3])")
        if np.any(z < 1) or np.any(z > max_z) or not np.all(z == np.round(z)):
            bad = sorted(set(z[(z < 1) | (z > max_z)].tolist()))
            raise ValueError(f"{where}: atomic numbers {bad} outside the model's elements 1..{max_z}")
        if not (np.isfinite(e) and np.all(np.isfinite(r)) and np.all(np.isfinite(f))):
            raise ValueError(f"{where}: non-finite energy, positions or forces")
        weight = np.ones(n) if weight is None else np.asarray(weight, np.float64).reshape(-1)
        if weight.shape != (n,) or np.any(weight < 0) or not np.all(np.isfinite(weight)):
            raise ValueError(f"{where}: force_weight must be {n} finite numbers >= 0")
        if split is not None and split not in SPLITS:
            raise ValueError(f"{where}: split {split!r} is not one of {list(SPLITS)}")
        if name is None:
            name = f"{path.name}#{i}"
        if name not in names:
            names[name] = len(names)
            splits.append(SPLITS[split] if split is not None else assign_split(name, seed, fractions))
        elif split is not None and splits[names[name]] != SPLITS[split]:
            raise ValueError(f"{where}: system {name!r} is given two different splits")
        numbers.append(z.astype(np.int32))
        positions.append(r)
        forces.append(f * scale)
        energy.append(float(e) * scale)
        num_atoms.append(n)
        system.append(names[name])
        weights.append(weight)
    return Dataset(
        numbers=np.concatenate(numbers), positions=np.concatenate(positions), forces=np.concatenate(forces),
        energy=np.asarray(energy), num_atoms=np.asarray(num_atoms, np.int32), system=np.asarray(system, np.int32),
        system_name=np.asarray(list(names), dtype=str), system_split=np.asarray(splits, np.int8),
        metadata={"source": path.name, "energy_unit": energy_unit, "seed": seed, "split_fractions": list(fractions),
                  "units": {"energy": "eV", "forces": "eV/Å", "positions": "Å"}},
        force_weight=np.concatenate(weights) if weighted else None,
    )


def _ase_frames(path, index, format, energy_key, forces_key, system_key) -> list:
    import ase.io

    try:
        images = ase.io.read(path, index=index, format=format)
    except Exception as exc:  # ASE raises many types for unreadable files; name the file and the cause
        raise ValueError(f"cannot read {path} with ASE: {type(exc).__name__}: {exc}") from None
    if not isinstance(images, list):
        images = [images]
    frames = []
    for i, atoms in enumerate(images):
        where = f"{path}, frame {i}"
        if np.any(atoms.pbc):
            raise ValueError(f"{where} is periodic (pbc={atoms.pbc.tolist()}); training takes non-periodic structures "
                             "(molecules, clusters) only: set pbc to False if the cell is only a box")
        results = atoms.calc.results if atoms.calc is not None and hasattr(atoms.calc, "results") else {}
        energy = atoms.info.get(energy_key, results.get(energy_key))
        forces = atoms.arrays.get(forces_key, results.get(forces_key))
        missing = [what for what, value in (("energy", energy), ("forces", forces)) if value is None]
        if missing:
            raise ValueError(f"{where} has no {' and no '.join(missing)} (looked for {energy_key!r} in atoms.info and "
                             f"the calculator results, {forces_key!r} in atoms.arrays and the calculator results)")
        try:
            energy = float(np.asarray(energy).reshape(()))
        except (TypeError, ValueError):
            raise ValueError(f"{where}: the energy is not one number: {energy!r}") from None
        name = atoms.info.get(system_key)
        split = atoms.info.get("split")
        frames.append((atoms.get_atomic_numbers(), atoms.get_positions(), energy, np.asarray(forces, np.float64),
                       None if name is None else str(name), None if split is None else str(split),
                       atoms.arrays.get("force_weight")))
    return frames


def _npz_frames(path) -> list:
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
        z_key = "Z" if "Z" in keys else "z"
        missing = [k for k in ("R", z_key, "E", "F") if k not in keys]
        if missing:
            raise ValueError(f"{path}: an .npz of labelled structures needs arrays R [F, N, 3], Z [N] or [F, N], E [F], "
                             f"F [F, N, 3] (or is an mlff-jax dataset); missing {missing}, found {sorted(keys)}")
        r, z, e, forces = (np.asarray(f[k]) for k in ("R", z_key, "E", "F"))
    if r.ndim != 3 or r.shape[-1] != 3:
        raise ValueError(f"{path}: R must be [frames, atoms, 3], got {r.shape}")
    num_frames, n = r.shape[:2]
    if e.shape not in ((num_frames,), (num_frames, 1)):
        raise ValueError(f"{path}: E must be [{num_frames}] or [{num_frames}, 1] (one energy per frame of R), got {e.shape}")
    if forces.shape != r.shape:
        raise ValueError(f"{path}: F must have the shape of R {r.shape}, got {forces.shape}")
    if z.shape == (n,):
        z = np.broadcast_to(z, (num_frames, n))
    elif z.shape != (num_frames, n):
        raise ValueError(f"{path}: Z must be [{n}] or [{num_frames}, {n}], got {z.shape}")
    e = e.reshape(num_frames)
    return [(z[i], r[i], float(e[i]), forces[i], None, None, None) for i in range(num_frames)]
