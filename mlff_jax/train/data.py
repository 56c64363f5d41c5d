"""Seeded generation of a distillation set: GFN2-xTB (tblite) energies and forces of small organic
molecules, dimers and clusters.

    python3 -m mlff_jax.train.data --out .device/data/gfn2_xtb.npz          # full set (~15 min, 1 core)
    python3 -m mlff_jax.train.data --out small.npz --max-molecules 10 --no-clusters

Sampling, per molecule (``molecules.smi``, RDKit ETKDG embedding + MMFF pre-optimisation):
two Langevin MD segments with the teacher, one at a low (300-500 K) and one at a high (600-1000 K)
temperature, recording a frame every few steps, plus randomly displaced copies of recorded frames.
Clusters: water clusters (2-8 molecules), random dimers and mixed trimers/tetramers of small polar
molecules, relaxed briefly with the teacher and sampled by MD at 200-400 K.

Every random choice of a system is seeded by (seed, hash of the system's name), so a system's
frames do not depend on which other systems are generated or on the number of worker processes;
the split (train/validation/test) is decided the same way (:func:`dataset.assign_split`).
Needs ``pip install 'mlff-jax[train]'`` (tblite, rdkit).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import sys
import time
import zlib
from typing import Any

import numpy as np

from mlff_jax.train.dataset import Dataset, assign_split, small_subset

ALLOWED_ELEMENTS = frozenset({1, 6, 7, 8, 9, 16, 17})  # H C N O F S Cl
DEFAULT_SMILES_FILE = pathlib.Path(__file__).with_name("molecules.smi")
# Small molecules that make the dimers and mixed clusters (water clusters are made separately).
CLUSTER_MONOMERS = ("O", "CO", "N", "F", "Cl", "C=O", "C", "CC#N", "S", "O=CO", "CC(=O)O", "c1ccccc1",
                    "c1ccncc1", "CC(C)=O", "COC", "CCO", "NC=O")


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Settings of :func:`generate` (all sizes are per system)."""

    seed: int = 0
    smiles_file: str = str(DEFAULT_SMILES_FILE)
    max_molecules: int | None = None  # first N lines of the SMILES file (None: all)
    low_temperature_K: tuple[float, float] = (300.0, 500.0)
    high_temperature_K: tuple[float, float] = (600.0, 1000.0)
    timestep_fs: float = 0.5
    friction_per_fs: float = 0.02
    equilibration_steps: int = 20
    frames_per_segment: int = 8
    steps_between_frames: int = 8
    displaced_frames: int = 6
    displacement_sigma_A: tuple[float, float] = (0.01, 0.05)
    water_cluster_sizes: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    water_clusters_per_size: int = 4
    dimers: int = 60
    mixed_clusters: int = 20
    cluster_temperature_K: tuple[float, float] = (200.0, 400.0)
    cluster_frames: int = 16
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    max_force_eV_per_A: float = 40.0  # frames beyond this (a broken molecule) are dropped


def _system_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode()), 1])


def read_smiles(path) -> list[str]:
    """SMILES of a text file: the first word of each line; blank lines and lines starting with '#'
    are skipped ('#' inside a SMILES is a triple bond, so comments are whole lines only).

    Raises ValueError if a SMILES is listed twice (its frames and split would be duplicated).
    """
    words = [ln.split()[0] for ln in pathlib.Path(path).read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    repeated = sorted({w for w in words if words.count(w) > 1})
    if repeated:
        raise ValueError(f"{path}: SMILES listed more than once: {repeated[:10]}")
    return words


def embed_smiles(smiles: str, seed: int):
    """ase.Atoms of one conformer (ETKDGv3 + MMFF, or UFF when MMFF lacks parameters).

    Raises ValueError for unparsable SMILES, charged or open-shell molecules, or disallowed elements.
    """
    from ase import Atoms
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem, Descriptors

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"cannot parse SMILES {smiles!r}")
    if Chem.GetFormalCharge(mol) != 0 or Descriptors.NumRadicalElectrons(mol):
        raise ValueError(f"{smiles!r} is charged or open-shell; the generator handles neutral closed-shell molecules")
    mol = Chem.AddHs(mol)
    numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
    bad = sorted(set(numbers) - ALLOWED_ELEMENTS)
    if bad:
        raise ValueError(f"{smiles!r} has elements {bad} outside H, C, N, O, F, S, Cl")
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed % (2**31 - 1))
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise ValueError(f"RDKit could not embed {smiles!r}")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=500)
    else:
        AllChem.UFFOptimizeMolecule(mol, maxIters=500)
    return Atoms(numbers=numbers, positions=mol.GetConformer().GetPositions())


def teacher_calculator():
    """GFN2-xTB through tblite's ASE calculator (eV, eV/Å)."""
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


def _label(atoms) -> tuple[np.ndarray, float, np.ndarray]:
    return atoms.get_positions().copy(), float(atoms.get_potential_energy()), atoms.get_forces().copy()


def _md_frames(atoms, rng, temperature_K: float, cfg: GenerationConfig, num_frames: int, equilibrate: bool, hot_start: bool):
    """Langevin MD with the teacher; a labelled frame every ``steps_between_frames`` steps."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation

    if hot_start:  # twice the target: half the kinetic energy flows into the potential energy
        MaxwellBoltzmannDistribution(atoms, temperature_K=2 * temperature_K, rng=rng)
        Stationary(atoms)
        ZeroRotation(atoms)
    dyn = Langevin(atoms, timestep=cfg.timestep_fs * units.fs, temperature_K=temperature_K,
                   friction=cfg.friction_per_fs / units.fs, fixcm=False, rng=rng)
    if equilibrate:
        dyn.run(cfg.equilibration_steps)
    frames = []
    for _ in range(num_frames):
        dyn.run(cfg.steps_between_frames)
        frames.append(_label(atoms))
    return frames


def sample_molecule(atoms, rng, cfg: GenerationConfig) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """Frames of one molecule: low-T MD, high-T MD, and displaced copies of random MD frames."""
    atoms = atoms.copy()
    atoms.calc = teacher_calculator()
    low = rng.uniform(*cfg.low_temperature_K)
    high = rng.uniform(*cfg.high_temperature_K)
    frames = _md_frames(atoms, rng, low, cfg, cfg.frames_per_segment, equilibrate=True, hot_start=True)
    frames += _md_frames(atoms, rng, high, cfg, cfg.frames_per_segment, equilibrate=True, hot_start=False)
    md_count = len(frames)
    for _ in range(cfg.displaced_frames):
        positions = frames[rng.integers(md_count)][0]
        sigma = rng.uniform(*cfg.displacement_sigma_A)
        atoms.set_positions(positions + rng.normal(0.0, sigma, positions.shape))
        frames.append(_label(atoms))
    return frames


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def build_cluster(monomers: list, rng):
    """Monomers placed one by one in contact (closest intermolecular distance 1.9-2.6 Å), random orientations."""
    cluster = None
    for mono in monomers:
        part = mono.copy()
        part.positions = (part.positions - part.positions.mean(0)) @ _random_rotation(rng).T
        if cluster is None:
            cluster = part
            continue
        target = rng.uniform(1.9, 2.6)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        centre = cluster.positions.mean(0)
        r = np.max(np.linalg.norm(cluster.positions - centre, axis=1)) + np.max(np.linalg.norm(part.positions, axis=1)) + 4.0
        while r > 0:  # walk in until the closest pair is at the target distance
            trial = part.positions + centre + r * direction
            closest = np.min(np.linalg.norm(trial[:, None] - cluster.positions[None], axis=-1))
            if closest <= target:
                break
            r -= 0.05
        part.positions = part.positions + centre + (r + 0.05) * direction
        cluster = cluster + part
    return cluster


def sample_cluster(atoms, rng, cfg: GenerationConfig):
    """Frames of a cluster: a short teacher relaxation (no frames), then MD at 200-400 K."""
    from ase.optimize import FIRE

    atoms = atoms.copy()
    atoms.calc = teacher_calculator()
    FIRE(atoms, logfile=None).run(fmax=0.3, steps=15)
    temperature = rng.uniform(*cfg.cluster_temperature_K)
    return _md_frames(atoms, rng, temperature, cfg, cfg.cluster_frames, equilibrate=True, hot_start=True)


def system_list(cfg: GenerationConfig) -> list[tuple[str, str, Any]]:
    """(name, kind, recipe) of every system: molecules, then water clusters, dimers, mixed clusters."""
    smiles = read_smiles(cfg.smiles_file)
    if cfg.max_molecules is not None:
        smiles = smiles[: cfg.max_molecules]
    systems = [(s, "molecule", s) for s in smiles]
    for n in cfg.water_cluster_sizes:
        for k in range(cfg.water_clusters_per_size):
            systems.append((f"cluster:{'.'.join(['O'] * n)}#{k}", "cluster", ("O",) * n))
    rng = np.random.default_rng([cfg.seed, 2])
    for k in range(cfg.dimers):
        pair = tuple(sorted(rng.choice(CLUSTER_MONOMERS, 2).tolist()))
        systems.append((f"cluster:{'.'.join(pair)}#{k}", "cluster", pair))
    for k in range(cfg.mixed_clusters):
        group = tuple(sorted(rng.choice(CLUSTER_MONOMERS, int(rng.integers(3, 5))).tolist()))
        systems.append((f"cluster:{'.'.join(group)}#{k}", "cluster", group))
    return systems


def generate_system(cfg: GenerationConfig, name: str, kind: str, recipe) -> list[tuple[np.ndarray, np.ndarray, float, np.ndarray]]:
    """Labelled frames (numbers, positions, energy, forces) of one system; [] if the teacher fails."""
    rng = _system_rng(cfg.seed, name)
    embed_seed = int(rng.integers(2**31 - 1))
    try:
        if kind == "molecule":
            atoms = embed_smiles(recipe, embed_seed)
            frames = sample_molecule(atoms, rng, cfg)
        else:
            monomers = [embed_smiles(s, embed_seed + i) for i, s in enumerate(recipe)]
            atoms = build_cluster(monomers, rng)
            frames = sample_cluster(atoms, rng, cfg)
    except Exception as exc:  # SCF failures, embedding failures: skip the system, say so
        print(f"  skipped {name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return []
    numbers = atoms.get_atomic_numbers()
    return [(numbers, p, e, f) for p, e, f in frames if np.all(np.isfinite(f)) and np.abs(f).max() <= cfg.max_force_eV_per_A]


def _worker(args):
    cfg, name, kind, recipe = args
    t0 = time.perf_counter()
    return name, generate_system(cfg, name, kind, recipe), time.perf_counter() - t0


# Settings that do not change the frames of a given system (they only choose which systems exist).
_LIST_ONLY_SETTINGS = ("smiles_file", "max_molecules", "water_cluster_sizes", "water_clusters_per_size", "dimers",
                       "mixed_clusters", "validation_fraction", "test_fraction")


def reusable_frames(cfg: GenerationConfig, previous: Dataset) -> dict[str, list]:
    """Frames of ``previous`` (a file made by this generator) by system name, if it was made with the
    same sampling settings: a system's frames depend only on (seed, name, settings), so reusing them
    gives exactly the file a full regeneration would. Raises ValueError if the settings differ."""
    normal = lambda d: json.loads(json.dumps({k: v for k, v in d.items() if k not in _LIST_ONLY_SETTINGS}))  # noqa: E731
    old = previous.metadata.get("config", {})
    if normal(old) != normal(dataclasses.asdict(cfg)):
        raise ValueError("the previous dataset was made with other sampling settings; it cannot be reused")
    first = {}
    for index, name in enumerate(previous.system_name):
        first.setdefault(str(name), index)  # a name listed twice has the same frames twice: keep one copy
    frames: dict[str, list] = {}
    for i in range(previous.num_frames):
        name = str(previous.system_name[previous.system[i]])
        if first[name] == previous.system[i]:
            frames.setdefault(name, []).append(previous.frame(i))
    return frames


def generate(cfg: GenerationConfig, workers: int = 1, log=print, reuse: Dataset | None = None) -> Dataset:
    """Generates every system of :func:`system_list` and returns the labelled, split dataset.

    reuse: a dataset made earlier with the same settings; its systems are copied, not recomputed.
    """
    for package in ("tblite", "rdkit"):  # fail here, not once per system inside the per-system error handling
        if importlib.util.find_spec(package) is None:
            raise ModuleNotFoundError(f"data generation needs {package}: pip install 'mlff-jax[train]'", name=package)
    systems = system_list(cfg)
    results: dict[str, list] = {}
    if reuse is not None:
        old = reusable_frames(cfg, reuse)
        results = {name: old[name] for name, _, _ in systems if name in old}
        log(f"[data] reusing {len(results)} systems of the previous dataset", flush=True)
    tasks = [(cfg, name, kind, recipe) for name, kind, recipe in systems if name not in results]
    t0 = time.perf_counter()
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for i, (name, frames, _) in enumerate(pool.imap_unordered(_worker, tasks)):
                results[name] = frames
                _progress(log, i + 1, len(tasks), t0)
    else:
        for i, task in enumerate(tasks):
            name, frames, _ = _worker(task)
            results[name] = frames
            _progress(log, i + 1, len(tasks), t0)
    numbers, positions, forces, energy, num_atoms, system, names, splits = [], [], [], [], [], [], [], []
    for name, _, _ in systems:  # fixed order, whatever order the workers finished in
        frames = results[name]
        if not frames:
            continue
        index = len(names)
        names.append(name)
        splits.append(assign_split(name, cfg.seed, (cfg.validation_fraction, cfg.test_fraction)))
        for z, p, e, f in frames:
            numbers.append(z)
            positions.append(p)
            forces.append(f)
            energy.append(e)
            num_atoms.append(len(z))
            system.append(index)
    metadata = {
        "teacher": "GFN2-xTB (tblite ASE calculator, default accuracy and electronic temperature)",
        "units": {"energy": "eV", "forces": "eV/Å", "positions": "Å"},
        "generator": "mlff_jax.train.data",
        "config": dataclasses.asdict(cfg) | {"smiles_file": pathlib.Path(cfg.smiles_file).name},
        "versions": {p: _version(p) for p in ("tblite", "rdkit", "ase", "numpy")},
        "generation_seconds": round(time.perf_counter() - t0, 1),
        "workers": workers,
        "reused_systems": len(systems) - len(tasks),
    }
    return Dataset(
        numbers=np.concatenate(numbers).astype(np.int32),
        positions=np.concatenate(positions).reshape(-1, 3),
        forces=np.concatenate(forces).reshape(-1, 3),
        energy=np.asarray(energy),
        num_atoms=np.asarray(num_atoms, np.int32),
        system=np.asarray(system, np.int32),
        system_name=np.asarray(names, dtype=str),
        system_split=np.asarray(splits, np.int8),
        metadata=metadata,
    )


def _progress(log, done: int, total: int, t0: float) -> None:
    if done == total or done % 20 == 0:
        elapsed = time.perf_counter() - t0
        log(f"[data] {done}/{total} systems, {elapsed:.0f} s elapsed, ~{elapsed / done * (total - done):.0f} s left", flush=True)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """``mlff-jax data`` / ``python3 -m mlff_jax.train.data``: generate, save, print a summary."""
    parser = argparse.ArgumentParser(prog="mlff-jax data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output .npz file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smiles", default=str(DEFAULT_SMILES_FILE), help="SMILES file (default: the bundled list)")
    parser.add_argument("--max-molecules", type=int, default=None, help="use the first N molecules only")
    parser.add_argument("--no-clusters", action="store_true", help="molecules only (no water clusters, dimers, mixed clusters)")
    parser.add_argument("--workers", type=int, default=1, help="teacher processes (each single-threaded)")
    parser.add_argument("--subset-out", default=None, help="also write a small test-split subset here")
    parser.add_argument("--subset-frames", type=int, default=4, help="frames per test system in the subset")
    parser.add_argument("--from-dataset", default=None, help="skip generation: cut --subset-out from this existing dataset")
    parser.add_argument("--reuse", default=None, help="copy the systems of this earlier dataset (same settings) instead of recomputing them")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before tblite loads: one core per teacher process

    if args.from_dataset:
        dataset = Dataset.load(args.from_dataset)
    else:
        cfg = GenerationConfig(seed=args.seed, smiles_file=args.smiles, max_molecules=args.max_molecules)
        if args.no_clusters:
            cfg = dataclasses.replace(cfg, water_cluster_sizes=(), dimers=0, mixed_clusters=0)
        dataset = generate(cfg, workers=args.workers, reuse=Dataset.load(args.reuse) if args.reuse else None)
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        dataset.save(args.out)
        print(f"[data] wrote {args.out}: {json.dumps(dataset.summary())}")
    if args.subset_out:
        subset = small_subset(dataset, "test", args.subset_frames, seed=args.seed)
        subset = Dataset(**{**dataclasses.asdict(subset), "metadata": {**dataset.metadata, "subset": f"{args.subset_frames} frames per test system"}})
        pathlib.Path(args.subset_out).parent.mkdir(parents=True, exist_ok=True)
        subset.save(args.subset_out)
        print(f"[data] wrote {args.subset_out}: {json.dumps(subset.summary())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
