"""Condensed-phase data at scale: a seeded list of carving tasks, labelled by a process pool under a
time budget, from liquid boxes packed here (``--recipe``) or from frames of the model's own MD
(``--from-frames``). The pieces (boxes, carving, labels) are in :mod:`mlff_jax.train.condensed`.

    OMP_NUM_THREADS=1 python3 -m mlff_jax.train.condensed --recipe default --workers 15 --budget-minutes 5 --out liquids.npz
    python3 -m mlff_jax.train.condensed --from-frames water.npz methanol.npz --clusters-per-frame 4 \\
        --workers 15 --budget-minutes 10 --out visited.npz

Determinism: every task (one carved cluster, one label) is seeded by its system's name and its index
within the system, never by the worker that runs it. The task list interleaves the liquids (one task
of each kind in turn), so any prefix of it is a balanced mix; a run keeps the longest completed
prefix (a budget stops it; a task that fails in the teacher counts as done, with no frame), so its
file depends only on how many tasks finished, not on the number of workers. Every
``--partial-seconds`` the prefix done so far is written to ``OUT.partial.npz`` (a valid dataset), so
a killed run still leaves a file.

Systems and splits: one system per box (``carved:water:64:box3``; a solvated box holds one solute
and gives one cluster, ``carved:water+CC(C)=O:64:box5``), one per frames file for the model's MD
(``carved-md:water:192:water``), so the split by system holds out whole boxes. The split is the hash
of the name (:func:`mlff_jax.train.dataset.assign_split`), then :func:`balance_splits`: a liquid kind
with 2 or more boxes and none in test gets its last box (in task order) moved to test, and one with
3 or more and none in validation its last remaining training box moved to validation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import sys
import time
import zlib

import numpy as np

from mlff_jax.train.liquid_boxes import LIQUIDS, carve_cluster, compress_box, liquid_box, monomer, relax_box
from mlff_jax.train.dataset import SPLITS, Dataset, assign_split

# Solutes of the default recipe (lines of molecules.smi), one molecule each in a box of water.
DEFAULT_SOLUTES = ("CC(=O)O", "c1ccncc1", "CC(C)=O", "NC=O", "Cc1ccccc1", "CS(C)=O")
# (liquid, molecules per box) of the default recipe's liquid streams; benzene boxes are smaller
# (12 atoms a molecule) so that all boxes hold ~400-600 atoms.
DEFAULT_LIQUIDS = (("water", 64), ("water", 128), ("methanol", 64), ("ethanol", 64), ("acetonitrile", 64),
                   ("benzene", 48), ("water-methanol", 64))
PACKING_FRACTION = 0.8  # boxes are packed at this fraction of the density, then compressed
MAX_FORCE = 40.0  # eV/Å: a label beyond this (a broken molecule, an SCF gone wrong) is dropped, as in data.py


@dataclasses.dataclass(frozen=True)
class Settings:
    """Settings of every task of a run (stored in the metadata)."""

    seed: int = 0
    radius: float = 8.0  # Å, see mlff_jax.train.condensed for the measurement behind 8 / 4
    inner_radius: float = 4.0  # Å
    min_distance: float = 1.6  # Å, random packing; relax_box then enforces contact_distance
    relax_steps: int = 60
    contact_scale: float = 1.0  # relax_box's contact distances scaled: < 1 keeps closer intermolecular contacts
    fractions: tuple[float, float] = (0.1, 0.1)  # validation, test


@dataclasses.dataclass(frozen=True)
class BoxSpec:
    """A seeded box of ``molecules`` molecules of ``liquid`` (plus one ``solute`` molecule, SMILES)."""

    liquid: str
    molecules: int
    box: int
    solute: str | None = None
    seed: int = 0  # the run's seed: boxes of different seeds are different systems (and names)

    @property
    def kind(self) -> str:
        return f"{self.liquid}+{self.solute}" if self.solute else self.liquid

    @property
    def name(self) -> str:
        box = f"box{self.box}" if self.seed == 0 else f"s{self.seed}box{self.box}"
        return f"carved:{self.kind}:{self.molecules}:{box}"


@dataclasses.dataclass(frozen=True)
class Task:
    """One cluster to carve and label. ``box``: the periodic box (ase.Atoms with arrays["molecule"]),
    or None to build it from ``spec`` in the worker; ``centre``: the molecule at the cluster's centre
    (None: the solute)."""

    system: str
    kind: str
    spec: BoxSpec | None = None
    box: object = None
    centre: int | None = None
    index: int = 0  # cluster index within the system (seeds the choice of centre)


def build_box(spec: BoxSpec, settings: Settings):
    """The seeded, relaxed periodic box of ``spec`` (ase.Atoms, arrays["molecule"], arrays["species"];
    species 0 is the solute when there is one). Raises ValueError for an unknown liquid."""
    if spec.liquid not in LIQUIDS:
        raise ValueError(f"unknown liquid {spec.liquid!r}: one of {sorted(LIQUIDS)}")
    smiles, density = LIQUIDS[spec.liquid]
    rng = np.random.default_rng([settings.seed, zlib.crc32(spec.name.encode())])
    monomers = [monomer(s, settings.seed + i) for i, s in enumerate(smiles)]
    counts = [spec.molecules // len(smiles) + (i < spec.molecules % len(smiles)) for i in range(len(smiles))]
    if spec.solute:
        monomers, counts = [monomer(spec.solute, settings.seed + len(smiles))] + monomers, [1] + counts
    if settings.relax_steps <= 0:
        return liquid_box(monomers, counts, density, rng, settings.min_distance)
    # packed at 80 % of the density (random placement at full density fails for benzene), then
    # compressed as rigid molecules and pushed apart
    box = liquid_box(monomers, counts, PACKING_FRACTION * density, rng, settings.min_distance)
    return relax_box(compress_box(box, PACKING_FRACTION ** (1 / 3)), steps=settings.relax_steps, contact_scale=settings.contact_scale)


def _cluster_rng(settings: Settings, system: str, index: int) -> np.random.Generator:
    return np.random.default_rng([settings.seed, zlib.crc32(system.encode()), index, 7])


def _interleave(streams: list[list[Task]]) -> list[Task]:
    """One task of each stream in turn: any prefix is a balanced mix."""
    out = []
    for r in range(max((len(s) for s in streams), default=0)):
        out.extend(s[r] for s in streams if r < len(s))
    return out


def default_recipe(settings: Settings, boxes: int = 8, clusters_per_box: int = 24,
                   solutes: tuple[str, ...] = DEFAULT_SOLUTES) -> list[Task]:
    """The default task list: one stream per entry of :data:`DEFAULT_LIQUIDS` (``boxes`` boxes,
    ``clusters_per_box`` clusters each around random molecules; cluster k of every box before cluster
    k + 1) and one stream of solvated molecules of the same length (solutes in turn, each cluster
    from its own box of 64 waters and one solute, centred on the solute); the streams interleaved."""
    streams = []
    for liquid, molecules in DEFAULT_LIQUIDS:
        specs = [BoxSpec(liquid, molecules, b, seed=settings.seed) for b in range(boxes)]
        streams.append([Task(s.name, s.kind, s, None, int(_cluster_rng(settings, s.name, k).integers(molecules)), k)
                        for k in range(clusters_per_box) for s in specs])
    solvated = []
    for j in range(boxes * clusters_per_box if solutes else 0):
        s = BoxSpec("water", 64, j // len(solutes), solutes[j % len(solutes)], seed=settings.seed)
        solvated.append(Task(s.name, s.kind, s, None, None, 0))
    return _interleave(streams + [solvated])


RECIPES = {"default": default_recipe}


# ------------------------------------------------------------------------------ frames of the model's MD
def load_frames(path) -> dict:
    """Periodic frames of an MD run (as ``mlff_jax.train.sample_md`` writes them), checked:
    positions [F, N, 3] Å, numbers [N], cell [3, 3] or [F, 3, 3] Å, molecule [N] (molecule index of
    every atom); optional "liquid" (string) and "temperature" (K). Raises ValueError naming the problem."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no frames file at {path}")
    with np.load(path, allow_pickle=False) as f:
        missing = {"positions", "numbers", "cell", "molecule"} - set(f.files)
        if missing:
            raise ValueError(f"{path}: a frames file needs arrays positions, numbers, cell, molecule; missing {sorted(missing)}")
        out = {k: f[k] for k in ("positions", "numbers", "cell", "molecule")}
        out["liquid"] = str(f["liquid"]) if "liquid" in f.files else path.stem
        out["temperature"] = float(f["temperature"]) if "temperature" in f.files else None
    positions, numbers, cell, molecule = (np.asarray(out[k]) for k in ("positions", "numbers", "cell", "molecule"))
    if positions.ndim != 3 or positions.shape[2] != 3 or positions.shape[0] == 0:
        raise ValueError(f"{path}: positions must be [F, N, 3] with F >= 1, got {positions.shape}")
    n = positions.shape[1]
    if numbers.shape != (n,) or molecule.shape != (n,):
        raise ValueError(f"{path}: numbers and molecule must be [{n}] (atoms of a frame), got {numbers.shape} and {molecule.shape}")
    if cell.shape not in ((3, 3), (positions.shape[0], 3, 3)):
        raise ValueError(f"{path}: cell must be [3, 3] or [{positions.shape[0]}, 3, 3], got {cell.shape}")
    if not np.all(np.isfinite(positions)) or not np.all(np.isfinite(cell)):
        raise ValueError(f"{path}: positions and cell must be finite")
    cells = np.broadcast_to(cell, (positions.shape[0], 3, 3))
    if np.any(np.abs(np.linalg.det(cells)) < 1e-6):
        raise ValueError(f"{path}: a cell has zero volume")
    return {**out, "cell": np.array(cells), "path": str(path)}


def frame_tasks(frame_sets: list[dict], clusters_per_frame: int, settings: Settings) -> list[Task]:
    """``clusters_per_frame`` clusters per frame around random molecules (seeded by the system name,
    frame and cluster index). One system per frames file, ``carved-md:LIQUID:ATOMS:STEM:CRC`` (CRC: a CRC-32 of
    the file's positions, so two sampling rounds written to files of the same name are two systems); within a
    file, cluster k of every frame before cluster k + 1; files interleaved."""
    from ase import Atoms

    if clusters_per_frame < 1:
        raise ValueError(f"clusters_per_frame must be >= 1, got {clusters_per_frame}")
    streams, names = [], set()
    for fs in frame_sets:
        n = fs["positions"].shape[1]
        # the trajectory's fingerprint: two sampling rounds with the same file name stay two systems
        fingerprint = zlib.crc32(np.ascontiguousarray(fs["positions"], np.float64).tobytes())
        system = f"carved-md:{fs['liquid']}:{n}:{pathlib.Path(fs['path']).stem}:{fingerprint:08x}"
        if system in names:
            raise ValueError(f"two frames files give the same system name {system!r}: rename one")
        names.add(system)
        molecules = np.unique(fs["molecule"])
        boxes = []
        for p, c in zip(fs["positions"], fs["cell"]):
            box = Atoms(numbers=fs["numbers"], positions=p, cell=c, pbc=True)
            box.arrays["molecule"] = np.asarray(fs["molecule"], np.int64)
            boxes.append(box)
        stream = []
        for k in range(clusters_per_frame):
            for f, box in enumerate(boxes):
                index = k * len(boxes) + f
                centre = int(molecules[_cluster_rng(settings, system, index).integers(len(molecules))])
                stream.append(Task(system, str(fs["liquid"]), None, box, centre, index))
        streams.append(stream)
    return _interleave(streams)


# ------------------------------------------------------------------------------ labelling
def _molecule_centre(box, m: int) -> np.ndarray:
    """Centre of molecule m, made whole across the periodic boundary (nearest images of its first atom)."""
    r = box.positions[box.arrays["molecule"] == m]
    cell = np.asarray(box.cell.array)
    d = r - r[0]
    return (r[0] + d - np.round(d @ np.linalg.inv(cell)) @ cell).mean(0)


@functools.lru_cache(maxsize=4)
def _cached_calculator_factory(teacher):
    from mlff_jax.train.teachers import teacher_factory

    return teacher_factory(teacher)


def label_task(task: Task, settings: Settings, make_calculator):
    """(numbers [n], positions [n, 3] Å, energy eV, forces [n, 3] eV/Å, force_weight [n]) of the
    task's cluster, or None when the teacher fails or a force exceeds :data:`MAX_FORCE`."""
    box = task.box if task.box is not None else build_box(task.spec, settings)
    centre = task.centre
    if centre is None:  # the solute: species 0
        centre = int(box.arrays["molecule"][box.arrays["species"] == 0][0])
    cluster = carve_cluster(box, _molecule_centre(box, centre), settings.radius, settings.inner_radius)
    atoms = cluster.copy()
    try:
        atoms.calc = make_calculator()
        energy = float(atoms.get_potential_energy())
        forces = np.asarray(atoms.get_forces(), np.float64)
    except Exception as exc:  # SCF failures: the task is done, without a frame
        print(f"  skipped {task.system} #{task.index}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return None
    if not np.isfinite(energy) or not np.all(np.isfinite(forces)) or np.abs(forces).max() > MAX_FORCE:
        return None
    return atoms.numbers.astype(np.int32), atoms.positions.copy(), energy, forces, cluster.arrays["force_weight"].copy()


def _worker(args):
    position, task, settings, teacher, factory = args
    make_calculator = factory if factory is not None else _cached_calculator_factory(teacher)
    return position, label_task(task, settings, make_calculator)


def _build_worker(args):
    spec, settings = args
    return spec, build_box(spec, settings)


def balance_splits(names: list[str], kinds: list[str], splits: list[int]) -> list[int]:
    """Splits with, per kind, a test system when the kind has >= 2 systems (its last training system
    moved to test) and a validation system when it has >= 3 (its last remaining training system)."""
    splits = list(splits)
    for kind in dict.fromkeys(kinds):
        members = [i for i, k in enumerate(kinds) if k == kind]
        for code, needed in ((SPLITS["test"], 2), (SPLITS["validation"], 3)):
            train = [i for i in members if splits[i] == SPLITS["train"]]
            if len(members) >= needed and not any(splits[i] == code for i in members) and train:
                splits[train[-1]] = code
    return splits


def assemble(tasks: list[Task], results: list, settings: Settings, metadata: dict) -> Dataset:
    """The dataset of ``results[i]`` (label_task's tuple or None) of ``tasks[i]``: systems in order
    of first appearance, splits by hash and :func:`balance_splits`."""
    names, kinds = [], []
    for t in tasks:
        if t.system not in names:
            names.append(t.system)
            kinds.append(t.kind)
    splits = balance_splits(names, kinds, [assign_split(n, settings.seed, settings.fractions) for n in names])
    kept = [(t, r) for t, r in zip(tasks, results) if r is not None]
    used = sorted({names.index(t.system) for t, _ in kept})
    renumber = {old: new for new, old in enumerate(used)}
    if not kept:
        z = np.zeros(0)
        return Dataset(numbers=z.astype(np.int32), positions=z.reshape(0, 3), forces=z.reshape(0, 3), energy=z,
                       num_atoms=z.astype(np.int32), system=z.astype(np.int32), system_name=np.asarray([], str),
                       system_split=z.astype(np.int8), metadata=metadata, force_weight=z)
    return Dataset(
        numbers=np.concatenate([r[0] for _, r in kept]), positions=np.concatenate([r[1] for _, r in kept]),
        forces=np.concatenate([r[3] for _, r in kept]), energy=np.asarray([r[2] for _, r in kept]),
        num_atoms=np.asarray([len(r[0]) for _, r in kept], np.int32),
        system=np.asarray([renumber[names.index(t.system)] for t, _ in kept], np.int32),
        system_name=np.asarray([names[i] for i in used], dtype=str),
        system_split=np.asarray([splits[i] for i in used], np.int8),
        metadata={**metadata, "kinds": {names[i]: kinds[i] for i in used}},
        force_weight=np.concatenate([r[4] for _, r in kept]),
    )


def run(tasks: list[Task], settings: Settings, teacher="gfn2", workers: int = 1, budget_s: float | None = None,
        partial_path=None, partial_seconds: float = 60.0, metadata: dict | None = None, log=print) -> Dataset:
    """Labels the tasks (``workers`` spawned processes, or this one) and returns the dataset of the
    longest completed prefix of ``tasks``. budget_s: after this many seconds (box building included)
    no task is started and the running ones are abandoned. teacher: a name, an import path, or a
    picklable calculator factory (see :func:`mlff_jax.train.teachers.resolve_teacher`)."""
    from mlff_jax.train.teachers import resolve_teacher

    name, factory, teacher_text = resolve_teacher(teacher if isinstance(teacher, str) else "gfn2",
                                                  None if isinstance(teacher, str) else teacher, workers)
    t0 = time.perf_counter()
    deadline = None if budget_s is None else t0 + budget_s
    results: dict[int, object] = {}
    last_partial = [t0]
    base = {"generator": "mlff_jax.train.condensed", "teacher": teacher_text, "settings": dataclasses.asdict(settings),
            "units": {"energy": "eV", "forces": "eV/Å", "positions": "Å"}, **(metadata or {}),
            "workers": workers, "tasks_total": len(tasks), "budget_s": budget_s}

    def prefix() -> int:
        n = 0
        while n in results:
            n += 1
        return n

    def dataset(finished: bool) -> Dataset:
        n = prefix()
        return assemble(tasks[:n], [results[i] for i in range(n)], settings,
                        {**base, "tasks_done": n, "finished": finished, "seconds": round(time.perf_counter() - t0, 1)})

    def done(position, result):
        results[position] = result
        if len(results) % 50 == 0:
            elapsed = time.perf_counter() - t0
            log(f"[condensed] {len(results)}/{len(tasks)} tasks, {elapsed:.0f} s, prefix {prefix()}", flush=True)
        if partial_path is not None and len(results) < len(tasks) and time.perf_counter() - last_partial[0] >= partial_seconds:
            last_partial[0] = time.perf_counter()
            tmp = pathlib.Path(partial_path).with_suffix(".tmp.npz")
            dataset(False).save(tmp)
            os.replace(tmp, partial_path)  # atomic: a reader never sees a half-written file

    specs = list(dict.fromkeys(t.spec for t in tasks if t.spec is not None and t.box is None and not t.spec.solute))
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            building = pool.map_async(_build_worker, [(s, settings) for s in specs], chunksize=1)  # shared boxes, once
            try:
                boxes = dict(building.get(timeout=None if deadline is None else max(0.0, deadline - time.perf_counter())))
            except multiprocessing.TimeoutError:
                log(f"[condensed] budget of {budget_s:.0f} s reached while building the boxes", flush=True)
                pool.terminate()
                return dataset(False)
            log(f"[condensed] {len(boxes)} boxes built in {time.perf_counter() - t0:.0f} s", flush=True)
            jobs = [(i, _with_box(t, boxes), settings, name, factory) for i, t in enumerate(tasks)]
            stream = pool.imap_unordered(_worker, jobs, chunksize=1)
            for _ in jobs:
                try:
                    timeout = None if deadline is None else max(0.0, deadline - time.perf_counter())
                    done(*stream.next(timeout=timeout))
                except multiprocessing.TimeoutError:
                    log(f"[condensed] budget of {budget_s:.0f} s reached: abandoning the running tasks", flush=True)
                    pool.terminate()
                    break
    else:
        make_calculator = factory if factory is not None else _cached_calculator_factory(name)
        boxes = {}
        for i, t in enumerate(tasks):
            if deadline is not None and time.perf_counter() >= deadline:
                log(f"[condensed] budget of {budget_s:.0f} s reached after {i} tasks", flush=True)
                break
            if t.spec in specs and t.spec not in boxes:
                boxes[t.spec] = build_box(t.spec, settings)
            done(i, label_task(_with_box(t, boxes), settings, make_calculator))
    return dataset(prefix() == len(tasks))


def _with_box(task: Task, boxes: dict) -> Task:
    return dataclasses.replace(task, box=boxes[task.spec]) if task.box is None and task.spec in boxes else task


def cli(args) -> int:
    """The ``--recipe`` / ``--from-frames`` runs of ``python3 -m mlff_jax.train.condensed`` (parsed there)."""
    settings = Settings(seed=args.seed, radius=args.radius, inner_radius=args.inner_radius, min_distance=args.min_distance,
                        relax_steps=0 if args.no_relax else Settings.relax_steps, contact_scale=args.contact_scale)
    if args.inner_radius <= 0 or args.inner_radius > args.radius:
        raise ValueError(f"need 0 < inner_radius <= radius, got {args.inner_radius} and {args.radius}")
    if args.recipe:
        tasks = RECIPES[args.recipe](settings, boxes=args.boxes, clusters_per_box=args.clusters_per_box)
        metadata = {"recipe": args.recipe, "boxes": args.boxes, "clusters_per_box": args.clusters_per_box}
    else:
        frame_sets = [load_frames(p) for p in args.from_frames]
        tasks = frame_tasks(frame_sets, args.clusters_per_frame, settings)
        metadata = {"from_frames": [pathlib.Path(p).name for p in args.from_frames], "clusters_per_frame": args.clusters_per_frame,
                    "temperatures_K": {fs["liquid"]: fs["temperature"] for fs in frame_sets}}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.npz")
    budget = None if args.budget_minutes is None else 60.0 * args.budget_minutes
    print(f"[condensed] {len(tasks)} tasks, {args.workers} workers, budget {budget} s; partial results in {partial}", flush=True)
    if args.split != "hash":
        metadata["split"] = f"every system in {args.split} (--split)"
    dataset = run(tasks, settings, args.teacher, args.workers, budget, partial, args.partial_seconds, metadata)
    if args.split != "hash":
        dataset = dataset.all_in(args.split)
    dataset.save(out)
    partial.unlink(missing_ok=True)
    meta = dataset.metadata
    fitted = int(np.sum(dataset.force_weight > 0)) if dataset.force_weight is not None else 0
    print(f"[condensed] wrote {out}: {meta['tasks_done']} of {meta['tasks_total']} tasks ({'all' if meta['finished'] else 'a prefix'}) "
          f"in {meta['seconds']} s; {json.dumps(dataset.summary())}; {fitted} of {len(dataset.numbers)} atoms fitted", flush=True)
    if args.float32_out:
        dataset.save_float32_copy(args.float32_out, "condensed")
    return 0
