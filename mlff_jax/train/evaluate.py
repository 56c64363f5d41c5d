"""Errors of a model against the teacher on held-out molecules, and NVE stability runs.

    python3 -m mlff_jax.train.evaluate --model runs/default/best.safetensors \\
        --data .device/data/gfn2_xtb.npz --subset tests/data/gfn2_xtb_test_subset.npz \\
        --nve-ps 10 --out weights/default.metrics.json

Errors: energy MAE / RMSE per atom (|E_model - E_teacher| / N averaged over frames) and force MAE /
RMSE over Cartesian components, in eV and eV/Å. NVE: velocity Verlet (``lax.fori_loop``) of
ethanol and a water hexamer from 300 K Maxwell-Boltzmann velocities; reports the total-energy
drift and the largest distance of any atom from the centre of mass (atoms flying apart show there).
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from mlff_jax import painn
from mlff_jax.config import PaiNNConfig
from mlff_jax.train.batching import Packer, to_batch
from mlff_jax.train.dataset import Dataset

PRECISIONS = {"highest": jax.lax.Precision.HIGHEST, "high": jax.lax.Precision.HIGH, "default": jax.lax.Precision.DEFAULT}


FORCE_METHODS = ("autodiff", "analytic")


def energies_and_forces(params, config: PaiNNConfig, batch, precision, method: str = "autodiff"):
    """Per-slot energies [B] eV and forces [N, 3] eV/Å of one padded :class:`Batch`.

    The single place where training and evaluation get forces: ``"autodiff"`` (``jax.grad`` of the
    energy) or ``"analytic"`` (the hand-derived sweep of :mod:`mlff_jax.analytic`, plain JAX, so a
    loss on its forces has parameter gradients too). Both give the same values to round-off.
    """
    if method == "analytic":
        from mlff_jax import analytic

        return analytic.structure_energies_and_forces(params, config, batch.positions, batch.numbers, batch.edges,
                                                      batch.atom_mask, batch.structure, batch.max_structures, precision)
    if method != "autodiff":
        raise ValueError(f"force method must be one of {FORCE_METHODS}, got {method!r}")

    def total(positions):
        e = painn.structure_energies(params, config, positions, batch.numbers, batch.edges, batch.atom_mask,
                                     batch.structure, batch.max_structures, precision)
        return jnp.sum(e), e

    grad, energies = jax.grad(total, has_aux=True)(batch.positions)
    return energies, -grad


@functools.partial(jax.jit, static_argnames=("config", "precision"))
def _predict_stacked(params, config, arrays, precision):
    return jax.lax.map(lambda a: energies_and_forces(params, config, to_batch(a), PRECISIONS[precision]), arrays)


class Predictor:
    """Energies and forces of every frame of a dataset, with the batches packed once (reused)."""

    def __init__(self, dataset: Dataset, config: PaiNNConfig, batch_structures: int = 32, dtype=np.float32):
        self.dataset, self.config, self.dtype = dataset, config, dtype
        packer = Packer(dataset, config.cutoff)
        shape = packer.auto_shape(batch_structures)
        self.groups = packer.groups(np.arange(dataset.num_frames), shape)
        stacked = packer.pack_groups(self.groups, shape, dtype)
        stacked["energy"] = np.zeros_like(stacked["energy"], dtype)  # not needed to predict
        self.arrays = {k: jnp.asarray(v) for k, v in stacked.items()}

    def __call__(self, params, precision: str = "highest") -> tuple[np.ndarray, np.ndarray]:
        """(energies [F] eV, forces [A, 3] eV/Å) in the dataset's frame and atom order."""
        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, self.dtype), params)
        e, f = jax.device_get(_predict_stacked(params, self.config, self.arrays, precision))
        energies = np.zeros(self.dataset.num_frames)
        forces = np.zeros((int(self.dataset.num_atoms.sum()), 3))
        offsets = self.dataset.offsets
        for b, group in enumerate(self.groups):
            a0 = 0
            for slot, i in enumerate(group):
                n = int(self.dataset.num_atoms[i])
                energies[i] = e[b, slot]
                forces[offsets[i] : offsets[i] + n] = f[b, a0 : a0 + n]
                a0 += n
        return energies, forces


# Groups of systems reported separately, by the prefix of the system name (first match wins).
GROUP_PREFIXES = (("model_md", ("carved-md:",)), ("condensed", ("carved:",)), ("clusters", ("cluster:", "stretch:")))


def system_group(name: str) -> str:
    """'model_md' (clusters carved from the model's own MD), 'condensed' (clusters carved from liquid
    boxes), 'clusters' (clusters in vacuum, stretched clusters) or 'molecules' (anything else)."""
    for group, prefixes in GROUP_PREFIXES:
        if str(name).startswith(prefixes):
            return group
    return "molecules"


def _errors(de: np.ndarray, df: np.ndarray, weight: np.ndarray, systems: int) -> dict[str, float]:
    """de [F] eV/atom, df [A, 3] eV/Å, weight [A] per-atom force weights."""
    w = np.repeat(weight, 3) / max(3 * float(np.sum(weight)), 1e-300)
    return {
        "frames": int(len(de)),
        "systems": int(systems),
        "energy_mae_per_atom": float(np.mean(np.abs(de))),
        "energy_rmse_per_atom": float(np.sqrt(np.mean(de**2))),
        "force_mae": float(np.sum(w * np.abs(df).ravel())),
        "force_rmse": float(np.sqrt(np.sum(w * (df**2).ravel()))),
        "energy_mse_per_atom": float(np.mean(de**2)),
        "force_mse": float(np.sum(w * (df**2).ravel())),
        "fitted_atoms": int(np.sum(weight > 0)),
    }


def error_metrics(dataset: Dataset, energies: np.ndarray, forces: np.ndarray) -> dict:
    """Energy errors per atom (eV/atom) and force component errors (eV/Å) against the teacher; force
    errors are means weighted by the dataset's per-atom force weights (atoms of weight 0, the buffer
    of carved clusters, do not count). ``groups``: the same errors for each :func:`system_group`
    present (molecules, clusters, condensed, model_md)."""
    de = (energies - dataset.energy) / dataset.num_atoms
    df = forces - dataset.forces
    weight = dataset.atom_force_weights()
    out: dict = _errors(de, df, weight, len(np.unique(dataset.system)))
    frame_group = np.array([system_group(n) for n in dataset.system_name] or [""])[dataset.system]
    atom_group = np.repeat(frame_group, dataset.num_atoms)
    out["groups"] = {g: _errors(de[frame_group == g], df[atom_group == g], weight[atom_group == g],
                                len(np.unique(dataset.system[frame_group == g])))
                     for g in dict.fromkeys(frame_group.tolist())}
    return out


def dataset_errors(model, dataset: Dataset, precision: str = "highest", batch_structures: int = 32) -> dict[str, float]:
    """Errors of a :class:`PaiNNStudent` on every frame of ``dataset``."""
    dtype = np.float64 if model.dtype == "float64" else np.float32
    predictor = Predictor(dataset, model.config, batch_structures, dtype)
    return error_metrics(dataset, *predictor(model.params, precision))


# ---------------------------------------------------------------------------------------------- NVE
def nve_run(model, atoms, temperature_K: float = 300.0, timestep_fs: float = 0.5, duration_ps: float = 10.0,
            seed: int = 0, record_every: int = 100) -> dict:
    """Velocity-Verlet NVE of one structure with the model; returns drift and spread statistics.

    atoms: ase.Atoms (positions Å, masses amu). Units inside: Å, eV, amu, and time in ASE units.
    """
    from ase import units

    steps = int(round(duration_ps * 1000 / timestep_fs))
    chunk = record_every
    n_chunks = max(steps // chunk, 1)
    dtype = jnp.float64 if model.dtype == "float64" else jnp.float32
    z = jnp.asarray(atoms.get_atomic_numbers())
    masses = jnp.asarray(atoms.get_masses(), dtype)[:, None]
    dt = timestep_fs * units.fs
    rng = np.random.default_rng(seed)
    v0 = rng.normal(size=(len(atoms), 3)) * np.sqrt(temperature_K * units.kB / np.asarray(atoms.get_masses()))[:, None]
    v0 -= np.sum(np.asarray(atoms.get_masses())[:, None] * v0, 0) / np.sum(atoms.get_masses())  # no centre-of-mass drift
    force = jax.grad(lambda r: -model.energy_fn(r, z))

    @jax.jit
    def advance(state):
        def step(_, s):
            r, v, f = s
            v_half = v + 0.5 * dt * f / masses
            r = r + dt * v_half
            f = force(r)
            return r, v_half + 0.5 * dt * f / masses, f
        return jax.lax.fori_loop(0, chunk, step, state)

    @jax.jit
    def observe(state):
        r, v, _ = state
        kinetic = 0.5 * jnp.sum(masses * v * v)
        centre = jnp.sum(masses * r, 0) / jnp.sum(masses)
        return model.energy_fn(r, z) + kinetic, kinetic, jnp.max(jnp.linalg.norm(r - centre, axis=1))

    r0 = jnp.asarray(atoms.get_positions(), dtype)
    state = (r0, jnp.asarray(v0, dtype), force(r0))
    totals, temps, radii = [], [], []
    t0 = time.perf_counter()
    for _ in range(n_chunks + 1):
        e, k, radius = (float(x) for x in observe(state))
        totals.append(e)
        temps.append(2 * k / (3 * len(atoms) * units.kB))
        radii.append(radius)
        if len(totals) <= n_chunks:
            state = advance(state)
    totals = np.asarray(totals)
    finite = bool(np.all(np.isfinite(totals)))
    drift = float(np.polyfit(np.arange(len(totals)) * chunk * timestep_fs / 1000, totals, 1)[0]) if finite else float("nan")
    return {
        "atoms": len(atoms),
        "steps": n_chunks * chunk,
        "timestep_fs": timestep_fs,
        "duration_ps": n_chunks * chunk * timestep_fs / 1000,
        "initial_temperature_K": temperature_K,
        "finite": finite,
        "energy_drift_eV_per_ps": drift,
        "energy_drift_meV_per_atom_per_ps": 1000 * drift / len(atoms),
        "max_energy_deviation_eV": float(np.max(np.abs(totals - totals[0]))) if finite else float("nan"),
        "mean_temperature_K": float(np.mean(temps[1:])) if len(temps) > 1 else float(temps[0]),
        "initial_max_radius_A": float(radii[0]),
        "max_radius_A": float(np.max(radii)),
        "stable": finite and float(np.max(radii)) < radii[0] + 3.0,
        "wall_seconds": round(time.perf_counter() - t0, 2),
    }


def relax(model, positions, numbers, steps: int = 300, max_step_A: float = 0.05) -> np.ndarray:
    """A rough minimisation with the model (steepest descent, each atom's step capped): [N, 3] Å."""
    z = jnp.asarray(numbers)
    force = jax.grad(lambda r: -model.energy_fn(r, z))

    @jax.jit
    def run(r):
        def step(_, r):
            f = force(r)
            move = 0.01 * f
            norm = jnp.linalg.norm(move, axis=1, keepdims=True)
            return r + move * jnp.minimum(1.0, max_step_A / jnp.maximum(norm, 1e-12))
        return jax.lax.fori_loop(0, steps, step, r)

    return np.asarray(run(jnp.asarray(positions, model.params["embedding"]["embedding"].dtype)))


def nve_systems():
    """Ethanol (ASE's geometry) and a water hexamer (six waters placed in contact, seeded)."""
    from ase.build import molecule

    from mlff_jax.train.data import build_cluster

    return {"ethanol": molecule("CH3CH2OH"), "water_hexamer": build_cluster([molecule("H2O")] * 6, np.random.default_rng(0))}


def evaluate(model, data: str | None = None, subset: str | None = None, nve_ps: float = 0.0, precision: str = "highest") -> dict:
    """Test-split errors of the full dataset, errors on the committed subset, and NVE runs."""
    out: dict = {"model": repr(model), "precision": precision, "dtype": model.dtype,
                 "jax": jax.__version__, "device": jax.devices()[0].device_kind}
    if data:
        full = Dataset.load(data)
        out["test"] = dataset_errors(model, full.split("test"), precision)
        out["validation"] = dataset_errors(model, full.split("validation"), precision)
    if subset:
        out["subset"] = dataset_errors(model, Dataset.load(subset), precision)
        out["subset_file"] = pathlib.Path(subset).name
    if nve_ps > 0:
        out["nve"] = {}
        for name, atoms in nve_systems().items():
            atoms = atoms.copy()
            atoms.positions = relax(model, atoms.positions, atoms.numbers)  # start near a minimum of the model
            out["nve"][name] = nve_run(model, atoms, duration_ps=nve_ps)
    return out


def main(argv: list[str] | None = None) -> int:
    import mlff_jax

    parser = argparse.ArgumentParser(prog="python3 -m mlff_jax.train.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint path or 'default'")
    parser.add_argument("--data", default=None, help="full dataset (.npz): errors on its test and validation splits")
    parser.add_argument("--subset", default=None, help="small committed subset (.npz): errors on all of its frames")
    parser.add_argument("--nve-ps", type=float, default=0.0, help="length of each NVE run in ps (0: none)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    model = mlff_jax.load(args.model, dtype=args.dtype)
    results = evaluate(model, args.data, args.subset, args.nve_ps)
    results["command"] = "python3 -m mlff_jax.train.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])
    text = json.dumps(results, indent=2)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

