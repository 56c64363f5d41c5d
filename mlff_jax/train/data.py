"""Seeded generation of a distillation set: teacher energies and forces of small organic molecules,
dimers and clusters. The teacher is GFN2-xTB (tblite) by default, or any ASE calculator.

    python3 -m mlff_jax.train.data --out .device/data/gfn2_xtb_v2.npz [--workers N]   # full set (~1 core-hour)
    python3 -m mlff_jax.train.data --out small.npz --max-molecules 10 --no-clusters
    python3 -m mlff_jax.train.data --out emt.npz --teacher emt --max-molecules 5 --no-clusters
    python3 -m mlff_jax.train.data --from-structures mine.extxyz --out mine.npz   # a user's labelled frames

Teachers (``--teacher``): ``gfn2`` (default), ``gfn1`` (tblite), ``emt`` (ASE's EMT: a toy for
demonstrations, not chemistry), or ``package.module:factory``, an import path to a callable that
returns an ASE calculator (it is imported, and called once per system, in every worker process;
nothing is evaluated from the string). From Python, ``generate(cfg, calculator=...)`` takes any
ASE calculator object or a factory of them.

Sampling, per molecule (``molecules.smi``, RDKit ETKDG embedding + MMFF pre-optimisation):
two Langevin MD segments with the teacher, one at a low (300-500 K) and one at a high (600-1000 K)
temperature, recording a frame every few steps, plus randomly displaced copies of recorded frames.
Clusters: water clusters (2-12 molecules), random dimers and mixed trimers/tetramers of small polar
molecules, relaxed briefly with the teacher and sampled by MD at 200-400 K. Stretched clusters
("stretch:" systems: water clusters of 2-12 molecules and dimers) are relaxed, then pulled apart:
one molecule moved away from the rest, or all molecular centres moved out from the cluster's centre,
up to beyond the 5 Å cutoff, so that the student sees weak binding and dissociation.

Every random choice of a system is seeded by (seed, hash of the system's name), so a system's
frames do not depend on which other systems are generated or on the number of worker processes;
the split (train/validation/test) is decided the same way (:func:`dataset.assign_split`).
Needs ``pip install 'mlff-jax[train]'`` (tblite, rdkit; RDKit only with another teacher).
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
from mlff_jax.train.teachers import TEACHERS, resolve_teacher, teacher_calculator, teacher_factory, teacher_needs

__all__ = ["GenerationConfig", "generate", "teacher_calculator", "teacher_factory", "TEACHERS"]

ALLOWED_ELEMENTS = frozenset({1, 6, 7, 8, 9, 16, 17})  # H C N O F S Cl
DEFAULT_SMILES_FILE = pathlib.Path(__file__).with_name("molecules.smi")
# Small molecules that make the dimers and mixed clusters (water clusters are made separately).
CLUSTER_MONOMERS = ("O", "CO", "N", "F", "Cl", "C=O", "C", "CC#N", "S", "O=CO", "CC(=O)O", "c1ccccc1",
                    "c1ccncc1", "CC(C)=O", "COC", "CCO", "NC=O")


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Settings of :func:`generate` (all sizes are per system)."""

    seed: int = 0
    teacher: str = "gfn2"  # a name of TEACHERS or "package.module:factory" (see teacher_factory)
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
    water_cluster_sizes: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
    water_clusters_per_size: int = 10
    dimers: int = 60
    mixed_clusters: int = 20
    more_dimers: int = 100  # drawn after the first dimers and mixed clusters (their names stay as they were)
    more_mixed_clusters: int = 40
    cluster_temperature_K: tuple[float, float] = (200.0, 400.0)
    cluster_frames: int = 16
    # stretched clusters: relaxed, then molecules pulled apart (near-dissociation and beyond the cutoff)
    stretch_water_sizes: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
    stretch_water_per_size: int = 6
    stretch_dimers: int = 60
    stretch_relax_steps: int = 40
    stretch_frames: int = 16
    stretch_pull_A: tuple[float, float] = (0.0, 5.0)  # one molecule moved out by this much
    stretch_scale: tuple[float, float] = (1.0, 1.6)  # or every molecular centre scaled about the cluster centre
    stretch_noise_A: float = 0.02  # Gaussian displacement of every atom (breaks the rigid-body geometry)
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


def sample_molecule(atoms, rng, cfg: GenerationConfig, make_calculator=None) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """Frames of one molecule: low-T MD, high-T MD, and displaced copies of random MD frames.
    make_calculator: the teacher (a calculator factory; default: that of ``cfg.teacher``)."""
    atoms = atoms.copy()
    atoms.calc = (make_calculator or teacher_factory(cfg.teacher))()
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


def sample_cluster(atoms, rng, cfg: GenerationConfig, make_calculator=None):
    """Frames of a cluster: a short teacher relaxation (no frames), then MD at 200-400 K."""
    from ase.optimize import FIRE

    atoms = atoms.copy()
    atoms.calc = (make_calculator or teacher_factory(cfg.teacher))()
    FIRE(atoms, logfile=None).run(fmax=0.3, steps=15)
    temperature = rng.uniform(*cfg.cluster_temperature_K)
    return _md_frames(atoms, rng, temperature, cfg, cfg.cluster_frames, equilibrate=True, hot_start=True)


def sample_stretched(atoms, sizes: list[int], rng, cfg: GenerationConfig, make_calculator=None):
    """Frames of a cluster pulled apart: a teacher relaxation (no frames), then ``stretch_frames``
    geometries, alternately one random molecule moved out along the line from the centre of the rest
    (by ``stretch_pull_A``) and all molecular centres scaled about the cluster centre (by
    ``stretch_scale``), each with a small random displacement of every atom."""
    from ase.optimize import FIRE

    atoms = atoms.copy()
    atoms.calc = (make_calculator or teacher_factory(cfg.teacher))()
    FIRE(atoms, logfile=None).run(fmax=0.1, steps=cfg.stretch_relax_steps)
    relaxed = atoms.get_positions().copy()
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    molecules = [slice(bounds[i], bounds[i + 1]) for i in range(len(sizes))]
    centres = np.array([relaxed[m].mean(0) for m in molecules])
    frames = []
    for j in range(cfg.stretch_frames):
        positions = relaxed.copy()
        if j % 2 == 0:  # one molecule leaves
            i = int(rng.integers(len(molecules)))
            rest = np.delete(centres, i, axis=0).mean(0)
            direction = centres[i] - rest
            norm = np.linalg.norm(direction)
            direction = direction / norm if norm > 1e-6 else rng.normal(size=3) / np.sqrt(3)
            positions[molecules[i]] += rng.uniform(*cfg.stretch_pull_A) * direction
        else:  # the whole cluster expands
            scale = rng.uniform(*cfg.stretch_scale)
            centre = centres.mean(0)
            for m, c in zip(molecules, centres):
                positions[m] += (scale - 1.0) * (c - centre)
        atoms.set_positions(positions + rng.normal(0.0, cfg.stretch_noise_A, positions.shape))
        frames.append(_label(atoms))
    return frames


def system_list(cfg: GenerationConfig) -> list[tuple[str, str, Any]]:
    """(name, kind, recipe) of every system: molecules, then water clusters, dimers, mixed clusters,
    stretched clusters. Raises ValueError for a stretched water "cluster" of fewer than 2 molecules."""
    if any(n < 2 for n in cfg.stretch_water_sizes):
        raise ValueError(f"stretch_water_sizes must be >= 2 (a cluster is pulled apart), got {cfg.stretch_water_sizes}")
    smiles = read_smiles(cfg.smiles_file)
    if cfg.max_molecules is not None:
        smiles = smiles[: cfg.max_molecules]
    systems = [(s, "molecule", s) for s in smiles]
    for n in cfg.water_cluster_sizes:
        for k in range(cfg.water_clusters_per_size):
            systems.append((f"cluster:{'.'.join(['O'] * n)}#{k}", "cluster", ("O",) * n))
    rng = np.random.default_rng([cfg.seed, 2])
    draw_pair = lambda: tuple(sorted(rng.choice(CLUSTER_MONOMERS, 2).tolist()))  # noqa: E731
    draw_group = lambda: tuple(sorted(rng.choice(CLUSTER_MONOMERS, int(rng.integers(3, 5))).tolist()))  # noqa: E731
    # The first dimers and mixed clusters come first from the stream, so adding more keeps their names.
    for k in range(cfg.dimers):
        pair = draw_pair()
        systems.append((f"cluster:{'.'.join(pair)}#{k}", "cluster", pair))
    for k in range(cfg.mixed_clusters):
        group = draw_group()
        systems.append((f"cluster:{'.'.join(group)}#{k}", "cluster", group))
    for k in range(cfg.dimers, cfg.dimers + cfg.more_dimers):
        pair = draw_pair()
        systems.append((f"cluster:{'.'.join(pair)}#{k}", "cluster", pair))
    for k in range(cfg.mixed_clusters, cfg.mixed_clusters + cfg.more_mixed_clusters):
        group = draw_group()
        systems.append((f"cluster:{'.'.join(group)}#{k}", "cluster", group))
    for n in cfg.stretch_water_sizes:
        for k in range(cfg.stretch_water_per_size):
            systems.append((f"stretch:{'.'.join(['O'] * n)}#{k}", "stretch", ("O",) * n))
    stretch_rng = np.random.default_rng([cfg.seed, 3])
    for k in range(cfg.stretch_dimers):
        pair = tuple(sorted(stretch_rng.choice(CLUSTER_MONOMERS, 2).tolist()))
        systems.append((f"stretch:{'.'.join(pair)}#{k}", "stretch", pair))
    return systems


def generate_system(cfg: GenerationConfig, name: str, kind: str, recipe,
                    make_calculator=None) -> list[tuple[np.ndarray, np.ndarray, float, np.ndarray]]:
    """Labelled frames (numbers, positions, energy, forces) of one system; [] if the teacher fails.
    make_calculator: the teacher (a calculator factory; default: that of ``cfg.teacher``)."""
    make_calculator = make_calculator or teacher_factory(cfg.teacher)
    rng = _system_rng(cfg.seed, name)
    embed_seed = int(rng.integers(2**31 - 1))
    try:
        if kind == "molecule":
            atoms = embed_smiles(recipe, embed_seed)
            frames = sample_molecule(atoms, rng, cfg, make_calculator)
        else:
            monomers = [embed_smiles(s, embed_seed + i) for i, s in enumerate(recipe)]
            atoms = build_cluster(monomers, rng)
            if kind == "stretch":
                frames = sample_stretched(atoms, [len(m) for m in monomers], rng, cfg, make_calculator)
            else:
                frames = sample_cluster(atoms, rng, cfg, make_calculator)
    except Exception as exc:  # SCF failures, embedding failures: skip the system, say so
        print(f"  skipped {name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return []
    numbers = atoms.get_atomic_numbers()
    return [(numbers, p, e, f) for p, e, f in frames if np.all(np.isfinite(f)) and np.abs(f).max() <= cfg.max_force_eV_per_A]


def _worker(args):
    cfg, name, kind, recipe, make_calculator = args
    t0 = time.perf_counter()
    return name, generate_system(cfg, name, kind, recipe, make_calculator), time.perf_counter() - t0


# Settings that do not change the frames of a given system (they only choose which systems exist).
_LIST_ONLY_SETTINGS = ("smiles_file", "max_molecules", "water_cluster_sizes", "water_clusters_per_size", "dimers",
                       "mixed_clusters", "more_dimers", "more_mixed_clusters", "stretch_water_sizes",
                       "stretch_water_per_size", "stretch_dimers", "validation_fraction", "test_fraction")
# Settings that only change the frames of "stretch:" systems (added after the first dataset was made).
_STRETCH_SETTINGS = ("stretch_relax_steps", "stretch_frames", "stretch_pull_A", "stretch_scale", "stretch_noise_A")


def reusable_frames(cfg: GenerationConfig, previous: Dataset) -> dict[str, list]:
    """Frames of ``previous`` (a file made by this generator) by system name, if it was made with the
    same sampling settings: a system's frames depend only on (seed, name, settings), so reusing them
    gives exactly the file a full regeneration would. Raises ValueError if the settings differ."""
    old = {"teacher": "gfn2", **previous.metadata.get("config", {})}  # files made before the choice of teacher: GFN2
    new = dataclasses.asdict(cfg)
    has_stretch = any(str(n).startswith("stretch:") for n in previous.system_name)
    # A file made before the stretch settings existed has no stretch systems: its other frames compare
    # on the settings it has.
    compared = [k for k in new if k not in _LIST_ONLY_SETTINGS and (k in old or k not in _STRETCH_SETTINGS or has_stretch)]
    normal = lambda d: json.loads(json.dumps({k: d.get(k) for k in compared}))  # noqa: E731
    if normal(old) != normal(new):
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


def generate(cfg: GenerationConfig, workers: int = 1, log=print, reuse: Dataset | None = None,
             partial_path=None, partial_every: int = 200, calculator=None) -> Dataset:
    """Generates every system of :func:`system_list` and returns the labelled, split dataset.

    calculator: the teacher, overriding ``cfg.teacher``: any ASE calculator object, or a factory of
    them (see :func:`teacher_factory`). With ``workers`` > 1 it must be picklable (a module-level
    function or class); a calculator object cannot be shared by processes, so it needs ``workers=1``.

    reuse: a dataset made earlier with the same settings; its systems are copied, not recomputed.
    partial_path: every ``partial_every`` finished systems, the systems done so far are written there
    (a valid dataset: pass it as ``reuse`` to resume an interrupted run).
    """
    teacher, task_calculator, teacher_text = resolve_teacher(cfg.teacher, calculator, workers)
    cfg = dataclasses.replace(cfg, teacher=teacher)  # in the metadata, and compared by --reuse
    needed = ("rdkit",) + teacher_needs(cfg.teacher)
    for package in needed:  # fail here, not once per system inside the per-system error handling
        if importlib.util.find_spec(package) is None:
            raise ModuleNotFoundError(f"data generation needs {package}: pip install 'mlff-jax[train]'", name=package)
    systems = system_list(cfg)
    results: dict[str, list] = {}
    if reuse is not None:
        old = reusable_frames(cfg, reuse)
        results = {name: old[name] for name, _, _ in systems if name in old}
        log(f"[data] reusing {len(results)} systems of the previous dataset", flush=True)
    tasks = [(cfg, name, kind, recipe, task_calculator) for name, kind, recipe in systems if name not in results]
    # Clusters first: they are few and cheap, so an interrupted run's partial file already has them all.
    # (The order of work does not change any frame: each system is seeded by its name.)
    tasks.sort(key=lambda task: task[2] == "molecule")
    t0 = time.perf_counter()

    def finished(i, name, frames):
        results[name] = frames
        _progress(log, i + 1, len(tasks), t0)
        if partial_path is not None and (i + 1) % partial_every == 0 and i + 1 < len(tasks):
            tmp = pathlib.Path(partial_path).with_suffix(".tmp.npz")
            _assemble(cfg, systems, results, workers, len(systems) - len(tasks), t0, teacher_text).save(tmp)
            os.replace(tmp, partial_path)  # atomic: a reader never sees a half-written partial file

    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for i, (name, frames, _) in enumerate(pool.imap_unordered(_worker, tasks)):
                finished(i, name, frames)
    else:
        for i, task in enumerate(tasks):
            name, frames, _ = _worker(task)
            finished(i, name, frames)
    return _assemble(cfg, systems, results, workers, len(systems) - len(tasks), t0, teacher_text)


def _assemble(cfg: GenerationConfig, systems, results: dict, workers: int, reused: int, t0: float, teacher: str) -> Dataset:
    """The dataset of the systems in ``results`` (in the order of ``systems``; missing ones left out)."""
    numbers, positions, forces, energy, num_atoms, system, names, splits = [], [], [], [], [], [], [], []
    for name, _, _ in systems:  # fixed order, whatever order the workers finished in
        frames = results.get(name)
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
        "teacher": teacher,
        "units": {"energy": "eV", "forces": "eV/Å", "positions": "Å"},
        "generator": "mlff_jax.train.data",
        "config": dataclasses.asdict(cfg) | {"smiles_file": pathlib.Path(cfg.smiles_file).name},
        "versions": {p: _version(p) for p in ("tblite", "rdkit", "ase", "numpy")},
        "generation_seconds": round(time.perf_counter() - t0, 1),
        "workers": workers,
        "reused_systems": reused,
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
    parser.add_argument("--out", default=None, help="output .npz file (required unless --from-dataset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher", default="gfn2", help=f"teacher: one of {', '.join(TEACHERS)} (default gfn2), or an import "
                        "path package.module:factory of a function or class that returns an ASE calculator")
    parser.add_argument("--smiles", default=str(DEFAULT_SMILES_FILE), help="SMILES file (default: the bundled list)")
    parser.add_argument("--max-molecules", type=int, default=None, help="use the first N molecules only")
    parser.add_argument("--no-clusters", action="store_true", help="molecules only (no water clusters, dimers, mixed clusters)")
    parser.add_argument("--workers", type=int, default=1, help="teacher processes (each single-threaded)")
    parser.add_argument("--subset-out", default=None, help="also write a small test-split subset here")
    parser.add_argument("--subset-frames", type=int, default=4, help="frames per test system in the subset")
    parser.add_argument("--float32-out", default=None, help="also write a copy with float32 positions and forces here "
                        "(half the size; for carrying to a GPU machine)")
    parser.add_argument("--from-dataset", default=None, help="skip generation: cut --subset-out / --float32-out from this existing dataset")
    parser.add_argument("--from-structures", default=None, metavar="FILE",
                        help="skip generation: convert your labelled structures (extxyz or any file ASE reads, with energies "
                        "and forces; or an .npz of R, Z, E, F arrays) to a dataset written to --out (see mlff_jax.train.user_data)")
    parser.add_argument("--reuse", default=None, help="copy the systems of this earlier dataset (same settings) instead of recomputing them")
    parser.add_argument("--partial-every", type=int, default=200,
                        help="write the systems done so far to OUT.partial.npz every N systems (resume with --reuse)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before tblite loads: one core per teacher process

    if not args.out and not args.from_dataset:
        parser.error("--out is required (or --from-dataset to cut a subset or a float32 copy from an existing file)")
    if args.from_structures:
        from mlff_jax.train.user_data import read_labelled

        dataset = read_labelled(args.from_structures, seed=args.seed)
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        dataset.save(args.out)
        print(f"[data] wrote {args.out}: {json.dumps(dataset.summary())}")
    elif args.from_dataset:
        dataset = Dataset.load(args.from_dataset)
        print(f"[data] {args.from_dataset}: {json.dumps(dataset.summary())}")
    else:
        cfg = GenerationConfig(seed=args.seed, teacher=args.teacher, smiles_file=args.smiles, max_molecules=args.max_molecules)
        if args.no_clusters:
            cfg = dataclasses.replace(cfg, water_cluster_sizes=(), dimers=0, mixed_clusters=0, more_dimers=0,
                                      more_mixed_clusters=0, stretch_water_sizes=(), stretch_dimers=0)
        partial = pathlib.Path(args.out).with_suffix(".partial.npz")
        partial.parent.mkdir(parents=True, exist_ok=True)
        dataset = generate(cfg, workers=args.workers, reuse=Dataset.load(args.reuse) if args.reuse else None,
                           partial_path=partial, partial_every=args.partial_every)
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        dataset.save(args.out)
        print(f"[data] wrote {args.out}: {json.dumps(dataset.summary())}")
    if args.float32_out:
        dataset.save_float32_copy(args.float32_out, "data")
    if args.subset_out:
        subset = small_subset(dataset, "test", args.subset_frames, seed=args.seed)
        subset = Dataset(**{**dataclasses.asdict(subset), "metadata": {**dataset.metadata, "subset": f"{args.subset_frames} frames per test system"}})
        pathlib.Path(args.subset_out).parent.mkdir(parents=True, exist_ok=True)
        subset.save(args.subset_out)
        print(f"[data] wrote {args.subset_out}: {json.dumps(subset.summary())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
