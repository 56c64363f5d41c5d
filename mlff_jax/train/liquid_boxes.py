"""Liquid boxes and clusters carved from them, labelled in vacuum: the building blocks of
:mod:`mlff_jax.train.condensed` (which explains why and how, and is the command line)."""
from __future__ import annotations

import zlib

import numpy as np

from mlff_jax.train.dataset import Dataset, assign_split

# name -> (SMILES of the molecules, density g/cm^3 at ~298 K); a mixture lists several SMILES
LIQUIDS = {
    "water": (("O",), 0.997),
    "methanol": (("CO",), 0.792),
    "ethanol": (("CCO",), 0.789),
    "acetonitrile": (("CC#N",), 0.786),
    "benzene": (("c1ccccc1",), 0.876),
    "water-methanol": (("O", "CO"), 0.92),  # equimolar by count; density roughly interpolated
}
AMU_PER_A3_PER_G_CM3 = 0.602214076  # 1 g/cm^3 = 0.6022 amu/Å^3


def _rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def monomer(smiles: str, seed: int = 0):
    """ase.Atoms of one molecule: RDKit conformer (mlff_jax.train.data.embed_smiles), or, without
    RDKit, ASE's geometry for water ("O") only."""
    import importlib.util

    if importlib.util.find_spec("rdkit") is None:
        if smiles == "O":
            from ase.build import molecule

            return molecule("H2O")
        raise ModuleNotFoundError(f"building {smiles!r} needs RDKit: pip install 'mlff-jax[train]'", name="rdkit")
    from mlff_jax.train.data import embed_smiles

    return embed_smiles(smiles, seed)


def liquid_box(monomers: list, counts: list[int], density_g_cm3: float, rng: np.random.Generator,
               min_distance: float = 1.6, max_tries: int = 2000):
    """A cubic periodic box of ``counts[i]`` copies of ``monomers[i]`` (ase.Atoms) at a density.

    Molecules are placed one at a time at a random position and orientation until no atom is closer
    than ``min_distance`` Å (minimum image) to an atom of another molecule. The result has
    ``arrays["molecule"]`` [N] (index of each atom's molecule), ``arrays["species"]`` [N] (index into
    ``monomers``) and ``pbc = True``. A solvated molecule: ``liquid_box([solute, water], [1, 63], ...)``.
    Raises ValueError if a molecule cannot be placed in ``max_tries`` attempts (lower the density
    or ``min_distance``), or for non-positive density or counts.
    """
    from ase import Atoms

    if density_g_cm3 <= 0 or len(monomers) != len(counts) or any(c < 0 for c in counts) or sum(counts) == 0:
        raise ValueError("liquid_box needs a positive density and one non-negative count per monomer (not all 0)")
    mass = sum(c * float(np.sum(m.get_masses())) for m, c in zip(monomers, counts))
    length = (mass / (density_g_cm3 * AMU_PER_A3_PER_G_CM3)) ** (1 / 3)
    order = np.concatenate([np.full(c, i) for i, c in enumerate(counts)])
    rng.shuffle(order)
    placed_positions = np.zeros((0, 3))
    numbers, molecule, species = [], [], []
    for index, kind in enumerate(order.tolist()):
        local = monomers[kind].positions - monomers[kind].positions.mean(0)
        for _ in range(max_tries):
            trial = local @ _rotation(rng).T + rng.uniform(0, length, 3)
            if len(placed_positions) == 0:
                break
            d = trial[:, None, :] - placed_positions[None]
            d -= length * np.round(d / length)
            if np.min(np.einsum("ijk,ijk->ij", d, d)) >= min_distance**2:
                break
        else:
            raise ValueError(f"could not place molecule {index + 1} of {len(order)} in a {length:.2f} Å box with atoms "
                             f"{min_distance} Å apart after {max_tries} tries: lower the density or min_distance")
        placed_positions = np.concatenate([placed_positions, trial])
        numbers.extend(monomers[kind].numbers.tolist())
        molecule.extend([index] * len(local))
        species.extend([kind] * len(local))
    box = Atoms(numbers=numbers, positions=placed_positions, cell=np.eye(3) * length, pbc=True)
    box.arrays["molecule"] = np.asarray(molecule, np.int64)
    box.arrays["species"] = np.asarray(species, np.int64)
    return box


def compress_box(box, factor: float):
    """The box with its cell and molecular centres scaled by ``factor`` (molecules rigid): packing
    at a lower density and compressing, then :func:`relax_box`, fills boxes where random placement at
    the full density fails (benzene). box: whole molecules, as :func:`liquid_box` makes them."""
    box = box.copy()
    positions = box.positions.copy()
    for m in np.unique(box.arrays["molecule"]):
        mask = box.arrays["molecule"] == m
        positions[mask] += (factor - 1.0) * positions[mask].mean(0)
    box.positions = positions
    box.set_cell(np.asarray(box.cell.array) * factor, scale_atoms=False)
    return box


# Closest approach (Å) allowed by relax_box between atoms of different molecules; floors well below
# the first peaks of liquid radial distributions (water O-O ~2.5, H-bond H...O ~1.6, benzene C-C ~3.4).
POLAR = frozenset({7, 8, 9})  # N O F: hydrogen-bond partners


def contact_distance(z1: int, z2: int) -> float:
    """Closest intermolecular approach (Å) of elements z1, z2 that :func:`relax_box` enforces."""
    if z1 == 1 and z2 == 1:
        return 1.8
    if 1 in (z1, z2):
        other = z2 if z1 == 1 else z1
        return 1.6 if other in POLAR else 2.2
    return 2.6 if z1 in POLAR and z2 in POLAR else 3.0


def relax_box(box, steps: int = 60, max_move: float = 0.3, tolerance: float = 0.05, contact_scale: float = 1.0):
    """The box with its molecules moved apart as rigid bodies (translations only) until no two atoms
    of different molecules are closer than ``contact_scale`` × :func:`contact_distance` (to within
    ``tolerance`` Å; a scale below 1 keeps closer contacts: data on the repulsive wall), or
    ``steps`` steps have passed. Each step moves every molecule by half the overlap of each of its
    close pairs, summed, capped at ``max_move`` Å. Cheap (no teacher), deterministic. Returns a copy
    with ``info["overlap_A"]``: the largest overlap left, Å."""
    if not 0 < contact_scale <= 1.5:
        raise ValueError(f"contact_scale must be in (0, 1.5], got {contact_scale}")
    box = box.copy()
    cell = np.asarray(box.cell.array)
    inverse = np.linalg.inv(cell)
    molecule = box.arrays["molecule"]
    z = box.numbers
    table = np.zeros((max(z) + 1, max(z) + 1))
    for a in np.unique(z):
        for b in np.unique(z):
            table[a, b] = contact_scale * contact_distance(int(a), int(b))
    target = table[z[:, None], z[None]]
    other = molecule[:, None] != molecule[None]
    members = [molecule == m for m in np.unique(molecule)]
    positions = box.positions.copy()
    overlap = np.zeros(1)
    for _ in range(steps):
        d = positions[:, None] - positions[None]  # [N, N, 3] from j to i
        d -= np.round(d @ inverse) @ cell
        r = np.linalg.norm(d, axis=-1)
        overlap = np.where(other & (r < target), target - r, 0.0)
        if overlap.max() < tolerance:
            break
        push = np.einsum("ij,ijk->ik", 0.5 * overlap / np.maximum(r, 1e-6), d)  # [N, 3] away from close atoms
        for mask in members:
            move = push[mask].sum(0)
            norm = np.linalg.norm(move)
            positions[mask] += move * min(1.0, max_move / norm) if norm > 0 else 0.0
    box.positions = positions
    box.info["overlap_A"] = float(overlap.max())
    return box


def carve_cluster(box, centre, radius: float, inner_radius: float):
    """The non-periodic cluster of the whole molecules of ``box`` with an atom within ``radius`` Å of
    ``centre`` [3] Å, centred at the origin, with ``arrays["force_weight"]`` 1 for atoms within
    ``inner_radius`` Å of the centre and 0 for the buffer shell.

    Periodic images of the box are separate molecules (a cluster may be wider than the box).
    box: ase.Atoms with a cell, pbc and ``arrays["molecule"]`` (as from :func:`liquid_box`).
    Raises ValueError if 0 < inner_radius <= radius does not hold, or the box lacks molecule indices.
    """
    from ase import Atoms

    if not 0 < inner_radius <= radius:
        raise ValueError(f"need 0 < inner_radius <= radius, got inner_radius={inner_radius}, radius={radius}")
    if "molecule" not in box.arrays:
        raise ValueError("the box needs arrays['molecule'] (the molecule of each atom), as liquid_box makes")
    cell = np.asarray(box.cell.array)
    inverse = np.linalg.inv(cell)
    centre = np.asarray(centre, np.float64)
    molecule = box.arrays["molecule"]
    # each molecule made whole (atoms as the nearest images of its first atom), then shifted so that
    # its first atom is the image nearest to the centre
    whole = []
    for m in np.unique(molecule):
        r = box.positions[molecule == m]
        d = r - r[0]
        r = r[0] + d - np.round(d @ inverse) @ cell
        s = r[0] - centre
        whole.append((box.numbers[molecule == m], r - np.round(s @ inverse) @ cell))
    # images within reach: the sphere spans at most radius + molecule size + one cell
    heights = 1.0 / np.linalg.norm(inverse, axis=0)  # distances between opposite faces
    reach = np.ceil((radius + max(np.ptp(r, axis=0).max() for _, r in whole)) / heights).astype(int)
    shifts = np.array(np.meshgrid(*[np.arange(-k, k + 1) for k in reach], indexing="ij")).reshape(3, -1).T @ cell
    numbers, positions = [], []
    for z, r in whole:
        for shift in shifts:
            rr = r + shift
            if np.min(np.linalg.norm(rr - centre, axis=1)) <= radius:
                numbers.append(z)
                positions.append(rr - centre)
    positions = np.concatenate(positions)
    cluster = Atoms(numbers=np.concatenate(numbers), positions=positions, pbc=False)
    cluster.arrays["force_weight"] = (np.linalg.norm(positions, axis=1) <= inner_radius).astype(np.float64)
    return cluster


def label_clusters(clusters: list, names: list[str], make_calculator, seed: int = 0,
                   fractions: tuple[float, float] = (0.1, 0.1), metadata: dict | None = None) -> Dataset:
    """Teacher energies and forces of non-periodic clusters (with ``arrays["force_weight"]``), as a
    :class:`Dataset` whose ``force_weight`` masks the buffer atoms. One system per name."""
    numbers, positions, forces, energy, weights, system, system_names = [], [], [], [], [], [], []
    for cluster, name in zip(clusters, names):
        atoms = cluster.copy()
        atoms.calc = make_calculator()
        energy.append(float(atoms.get_potential_energy()))
        forces.append(np.asarray(atoms.get_forces(), np.float64))
        numbers.append(atoms.numbers.astype(np.int32))
        positions.append(atoms.positions.copy())
        weights.append(cluster.arrays.get("force_weight", np.ones(len(cluster))))
        if name not in system_names:
            system_names.append(name)
        system.append(system_names.index(name))
    return Dataset(
        numbers=np.concatenate(numbers), positions=np.concatenate(positions), forces=np.concatenate(forces),
        energy=np.asarray(energy), num_atoms=np.asarray([len(z) for z in numbers], np.int32),
        system=np.asarray(system, np.int32), system_name=np.asarray(system_names, dtype=str),
        system_split=np.asarray([assign_split(n, seed, fractions) for n in system_names], np.int8),
        metadata=metadata or {}, force_weight=np.concatenate(weights),
    )


def carved_liquid(liquid: str, molecules: int, clusters: int, make_calculator, seed: int = 0, radius: float = 8.0,
                  inner_radius: float = 4.0, min_distance: float = 1.6, teacher: str = "", solute: str | None = None) -> Dataset:
    """``clusters`` clusters carved from one seeded box of ``molecules`` molecules of ``liquid`` (a name of
    :data:`LIQUIDS`), each centred on a random molecule's centre, labelled by the teacher. With a
    ``solute`` (SMILES), one solute molecule is added to the box (one box per cluster, seeded) and
    every cluster is centred on it (the density is the liquid's, the box a little larger)."""
    if liquid not in LIQUIDS:
        raise ValueError(f"unknown liquid {liquid!r}: one of {sorted(LIQUIDS)}")
    smiles, density = LIQUIDS[liquid]
    tag = f"{liquid}+{solute}" if solute else liquid
    rng = np.random.default_rng([seed, zlib.crc32(tag.encode()), molecules])
    monomers = [monomer(s, seed + i) for i, s in enumerate(smiles)]
    counts = [molecules // len(smiles) + (i < molecules % len(smiles)) for i in range(len(smiles))]
    if solute:
        monomers, counts = [monomer(solute, seed + len(smiles))] + monomers, [1] + counts
    if solute:  # one solute molecule per box: a fresh box for every cluster, centred on the solute
        boxes = [liquid_box(monomers, counts, density, rng, min_distance) for _ in range(clusters)]
        centred = [int(b.arrays["molecule"][b.arrays["species"] == 0][0]) for b in boxes]
    else:  # one box, clusters around random molecules
        boxes = [liquid_box(monomers, counts, density, rng, min_distance)] * clusters
        centred = rng.choice(molecules, clusters, replace=clusters > molecules).tolist()
    carved, names = [], []
    for k, (box, m) in enumerate(zip(boxes, centred)):
        centre = box.positions[box.arrays["molecule"] == m].mean(0)
        carved.append(carve_cluster(box, centre, radius, inner_radius))
        names.append(f"carved:{tag}:{molecules}#{k}")
    metadata = {"generator": "mlff_jax.train.condensed", "teacher": teacher, "liquid": liquid, "solute": solute, "molecules": molecules,
                "density_g_cm3": density, "box_A": float(box.cell[0, 0]), "radius_A": radius, "inner_radius_A": inner_radius,
                "min_distance_A": min_distance, "seed": seed,
                "units": {"energy": "eV", "forces": "eV/Å", "positions": "Å"}}
    return label_clusters(carved, names, make_calculator, seed, metadata=metadata)
