"""Systems, parameters and bookkeeping shared by the kernel benchmark and the GPU check.

Run from the repository root (``python benchmarks/<script>.py``): the scripts put the repository on
``sys.path`` themselves, so the working tree's ``mlff_jax`` (and ``kernels/`` as ``mlff_jax.kernels``)
is what runs.
"""

from __future__ import annotations

import os
import pathlib
import platform
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WATER_SPACING = 3.1  # Å per molecule on a cubic lattice: 29.8 Å^3 per molecule, liquid water's density


def upstream_dir() -> pathlib.Path | None:
    """The upstream checkpoints/reference data: $MLFF_JAX_UPSTREAM if set, else the vendored tests/data/upstream."""
    for candidate in (os.environ.get("MLFF_JAX_UPSTREAM"), REPO / "tests" / "data" / "upstream"):
        if candidate and (pathlib.Path(candidate) / "checkpoints").is_dir():
            return pathlib.Path(candidate)
    return None


def water_box(molecules_per_side: int, seed: int = 0):
    """Periodic cubic box of water: positions [3 M, 3] Å (lattice + 0.05 Å noise), Z, cell [3, 3]."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(molecules_per_side)] * 3, indexing="ij"), -1).reshape(-1, 3) * WATER_SPACING
    molecule = np.array([[0.0, 0.0, 0.0], [0.7572, 0.5865, 0.0], [-0.7572, 0.5865, 0.0]])
    pos = (grid[:, None, :] + molecule[None]).reshape(-1, 3) + rng.normal(0.0, 0.05, (len(grid) * 3, 3))
    return pos, np.tile([8, 1, 1], len(grid)), np.eye(3) * WATER_SPACING * molecules_per_side


def water_box_of(num_atoms: int, seed: int = 0):
    """The cubic water box with the number of atoms closest to ``num_atoms``."""
    side = max(2, round((num_atoms / 3) ** (1 / 3)))
    return water_box(side, seed)


def water_cluster(num_molecules: int, seed: int = 0):
    """The ``num_molecules`` lattice waters closest to the centre of a big box (a non-periodic cluster)."""
    side = int(np.ceil(num_molecules ** (1 / 3))) + 2
    pos, z, cell = water_box(side, seed)
    centres = pos[::3]
    order = np.argsort(np.linalg.norm(centres - centres.mean(0), axis=1))[:num_molecules]
    idx = (3 * order[:, None] + np.arange(3)).reshape(-1)
    return pos[idx], z[idx]


def molecule(name: str, seed: int = 0):
    """An ase g2 molecule (or 'C60'), displaced by 0.05 Å noise: positions, Z."""
    from ase.build import molecule as ase_molecule

    atoms = ase_molecule(name)
    rng = np.random.default_rng(seed)
    return atoms.positions + rng.normal(0.0, 0.05, atoms.positions.shape), atoms.numbers


def load_params(name: str, dtype: str = "float32"):
    """(config, params, source) of an upstream model, or random weights of the same shape if the
    checkpoint is not available (speed does not depend on the weights)."""
    import jax

    import mlff_jax
    from mlff_jax import painn
    from mlff_jax.config import PaiNNConfig

    up = upstream_dir()
    if up is not None and (up / "checkpoints" / f"{name}.model.pt").exists():
        model = mlff_jax.load(up / "checkpoints" / f"{name}.model.pt", dtype=dtype)
        return model.config, model.params, f"upstream {name}"
    shapes = {"student-427k": (128, 3, 20), "tiny-77k": (64, 2, 12), "ultra-tiny-21k": (32, 2, 10)}
    h, t, k = shapes[name]
    config = PaiNNConfig(hidden_dim=h, num_interactions=t, num_rbf=k)
    import jax.numpy as jnp

    flat = {}
    key = jax.random.PRNGKey(0)
    for path, shape in painn.param_shapes(config).items():
        key, sub = jax.random.split(key)
        scale = 1.0 / np.sqrt(shape[0]) if len(shape) == 2 and not path.startswith("embedding") else 0.1
        flat[path] = scale * jax.random.normal(sub, shape, jnp.float32)
    flat["rbf/centers"] = jnp.linspace(0.0, config.cutoff, k)
    flat["rbf/widths"] = jnp.full((k,), config.cutoff / k)
    for i in range(t):
        flat[f"interactions_{i}/mixing_matrix"] = jnp.eye(3)
    params = painn.cast_params(painn.unflatten(flat), jnp.float32 if dtype == "float32" else jnp.float64)
    return config, params, f"random weights shaped like {name}"


def environment() -> dict:
    """Device, versions and commit, for every results file."""
    import jax
    import jaxlib

    info = {
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.default_backend(),
        "num_devices": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for package in ("jax_triton", "triton", "jax_cuda13_plugin", "jax_cuda12_plugin"):
        try:
            info[package] = __import__(package).__version__
        except Exception:  # noqa: BLE001 - absent or versionless
            pass
    try:
        from jax._src.lib import cuda_versions  # private; best effort

        if cuda_versions is not None:
            info["cuda_runtime"] = cuda_versions.cuda_runtime_get_version()
            info["cuda_driver"] = cuda_versions.cuda_driver_get_version()
    except Exception:  # noqa: BLE001
        pass
    try:
        info["git_commit"] = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=REPO, text=True).strip()
        info["git_dirty"] = bool(subprocess.check_output(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, text=True).strip())
    except Exception:  # noqa: BLE001 - not a git checkout
        info["git_commit"] = None
    return info


def timed(fn, *args, repeats: int = 10, warmup: int = 2):
    """Median and spread (seconds) of ``fn(*args)`` after ``warmup`` calls, each call blocked until ready."""
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    times = np.array(times)
    return {
        "median_s": float(np.median(times)),
        "min_s": float(times.min()),
        "max_s": float(times.max()),
        "iqr_s": float(np.subtract(*np.percentile(times, [75, 25]))),
        "repeats": repeats,
    }
