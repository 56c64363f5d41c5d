"""Writes the notebooks in notebooks/ from the cells below and executes them in place (outputs saved).

Run from the repository root, after changing a notebook's cells or the library:
``PYTHONPATH=$PWD python3 tools/make_notebooks.py [NAME ...]``. CI executes the committed notebooks
again (tests/test_notebooks.py); they must run on a CPU in well under a minute each.
"""

from __future__ import annotations

import pathlib
import sys

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

FIND_UPSTREAM = '''import pathlib
# Upstream MLFF-Distiller checkpoints (MIT) ship with this repository's tests; for your own copies
# see docs/getting-started.md ("Where checkpoints come from").
UPSTREAM = pathlib.Path.cwd().resolve().parent / "tests" / "data" / "upstream"
assert UPSTREAM.exists(), f"upstream checkpoints not found at {UPSTREAM}: run this notebook from notebooks/ of a clone"
'''

QUICKSTART = [
    ("md", "# Quick start\n\nLoad a PaiNN student checkpoint, compute energies and forces, use it from ASE, evaluate a batch, and compare analytic with autodiff forces. Units: Å, eV, eV/Å."),
    ("code", "import jax\njax.config.update(\"jax_enable_x64\", True)  # only needed for float64 models\nimport numpy as np\nimport mlff_jax\nfrom mlff_jax.data import example\n" + FIND_UPSTREAM),
    ("md", "`mlff_jax.load` reads every upstream layout (PyTorch `.pt` without PyTorch, ONNX initializers) and our safetensors."),
    ("code", "model = mlff_jax.load(UPSTREAM / \"checkpoints\" / \"student-427k.model.pt\")  # float32 by default\nmodel"),
    ("code", "atoms = example(\"ethanol\")  # a bundled molecule (ase.Atoms)\nenergy, forces = model.energy_and_forces(atoms.positions, atoms.numbers)\nprint(f\"energy: {float(energy):.5f} eV\")\nprint(\"forces (eV/Å):\\n\", np.round(np.asarray(forces), 4))\nprint(\"sum of forces:\", np.abs(np.asarray(forces).sum(axis=0)).max())"),
    ("md", "## From ASE\n\n`MLFFCalculator` gives energy, forces and per-atom energies, and works with ASE's optimisers and integrators."),
    ("code", "from ase.optimize import BFGS\n\natoms.calc = mlff_jax.MLFFCalculator(model)\nprint(\"E =\", atoms.get_potential_energy(), \"eV; per-atom energies sum to\", atoms.get_potential_energies().sum())\nBFGS(atoms, logfile=None).run(fmax=0.02)\nprint(\"relaxed: E =\", atoms.get_potential_energy(), \"eV, max |F| =\", np.abs(atoms.get_forces()).max())"),
    ("md", "## Many molecules in one call\n\nA `batch` index (structure of each atom) evaluates structures of different sizes together; `calculate_batch` does it for a list of `Atoms`."),
    ("code", "molecules = [example(name) for name in (\"ethanol\", \"benzene\", \"water10\")]\nfor atoms_i, result in zip(molecules, atoms.calc.calculate_batch(molecules)):\n    print(f\"{atoms_i.get_chemical_formula():>8}: {result['energy']:10.4f} eV, max |F| {np.abs(result['forces']).max():.3f} eV/Å\")"),
    ("md", "## Analytic and autodiff forces\n\nIn float64 both ways of computing forces agree to round-off."),
    (
        "code",
        "import inspect\nmodel64 = mlff_jax.load(UPSTREAM / \"checkpoints\" / \"student-427k.model.pt\", dtype=\"float64\")\n"
        "water = example(\"water10\")\n"
        "if \"method\" in inspect.signature(model64.energy_and_forces).parameters:\n"
        "    _, f_autodiff = model64.energy_and_forces(water.positions, water.numbers, method=\"autodiff\")\n"
        "    _, f_analytic = model64.energy_and_forces(water.positions, water.numbers, method=\"analytic\")\n"
        "    print(\"max |F_analytic - F_autodiff| =\", float(np.abs(np.asarray(f_analytic) - np.asarray(f_autodiff)).max()), \"eV/Å\")\n"
        "else:\n"
        "    print(\"this version of mlff_jax has autodiff forces only (analytic forces: method='analytic', not installed)\")\n"
        "_, f32 = model.energy_and_forces(water.positions, water.numbers)\n_, f64 = model64.energy_and_forces(water.positions, water.numbers)\n"
        "print(\"float32 vs float64 forces: max difference\", float(np.abs(np.asarray(f32) - np.asarray(f64)).max()), \"eV/Å\")",
    ),
]

MD_JAX_MD = [
    ("md", "# Molecular dynamics with JAX-MD\n\n`mlff_jax.jax_md.energy_neighbor_list` turns a model into a JAX-MD energy with JAX-MD's own neighbour lists. Units are ASE's: Å, eV, amu, and time in `ase.units.fs`. We run NVE for ethanol in float64 and plot the total energy."),
    ("code", "import warnings\nwarnings.filterwarnings(\"ignore\", message=\"scatter inputs have incompatible types\")  # raised inside jax_md.partition with jax 0.10\nimport jax\njax.config.update(\"jax_enable_x64\", True)\nimport jax.numpy as jnp\nimport numpy as np\nimport matplotlib.pyplot as plt\nfrom ase import units\nfrom jax_md import space, simulate, quantity\nimport mlff_jax\nfrom mlff_jax.data import example\nfrom mlff_jax.jax_md import energy_neighbor_list\n" + FIND_UPSTREAM),
    ("code", "model = mlff_jax.load(UPSTREAM / \"checkpoints\" / \"student-427k.model.pt\", dtype=\"float64\")\natoms = example(\"ethanol\")\n\ndisplacement_fn, shift_fn = space.free()\nneighbor_fn, energy_fn = energy_neighbor_list(model, displacement_fn, 100.0, atoms.numbers, disable_cell_list=True)\npositions = jnp.asarray(atoms.positions)\nnbrs = neighbor_fn.allocate(positions)\nprint(\"energy:\", float(energy_fn(positions, neighbor=nbrs)), \"eV; neighbour list\", nbrs.idx.shape)"),
    ("md", "The loop below runs 20 steps per compiled call, updates the neighbour list at every step, and keeps track of overflow (a list that got too small must be reallocated and the steps redone)."),
    (
        "code",
        "timestep_fs, steps_per_call, calls = 0.25, 20, 100\n"
        "init_fn, apply_fn = simulate.nve(energy_fn, shift_fn, timestep_fs * units.fs)\n"
        "state = init_fn(jax.random.key(0), positions, kT=units.kB * 300.0, mass=jnp.asarray(atoms.get_masses())[:, None], neighbor=nbrs)\n\n"
        "@jax.jit\n"
        "def advance(state, nbrs):\n"
        "    def step(_, carry):\n"
        "        state, nbrs, overflow = carry\n"
        "        nbrs = nbrs.update(state.position)\n"
        "        return apply_fn(state, neighbor=nbrs), nbrs, overflow | nbrs.did_buffer_overflow.astype(bool)\n"
        "    state, nbrs, overflow = jax.lax.fori_loop(0, steps_per_call, step, (state, nbrs, jnp.zeros((), bool)))\n"
        "    kinetic = quantity.kinetic_energy(momentum=state.momentum, mass=state.mass)\n"
        "    return state, nbrs, overflow, energy_fn(state.position, neighbor=nbrs), kinetic\n\n"
        "potential, kinetic = [], []\n"
        "for _ in range(calls):\n"
        "    new_state, new_nbrs, overflow, e_pot, e_kin = advance(state, nbrs)\n"
        "    if overflow:  # grow the list and redo these steps\n"
        "        nbrs = neighbor_fn.allocate(state.position)\n"
        "        new_state, new_nbrs, overflow, e_pot, e_kin = advance(state, nbrs)\n"
        "    state, nbrs = new_state, new_nbrs\n"
        "    potential.append(float(e_pot)); kinetic.append(float(e_kin))\n"
        "potential, kinetic = np.array(potential), np.array(kinetic)\n"
        "total = potential + kinetic\n"
        "print(f\"{calls * steps_per_call} steps; total energy drift {(total[-1] - total[0]) / len(atoms):+.2e} eV/atom, \"\n"
        "      f\"largest deviation {np.abs(total - total[0]).max() / len(atoms):.2e} eV/atom\")",
    ),
    (
        "code",
        "time_fs = np.arange(1, calls + 1) * steps_per_call * timestep_fs\n"
        "fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)\n"
        "top.plot(time_fs, potential - potential[0], label=\"potential\")\n"
        "top.plot(time_fs, kinetic - kinetic[0], label=\"kinetic\")\n"
        "top.set_ylabel(\"energy change (eV)\"); top.legend()\n"
        "bottom.plot(time_fs, (total - total[0]) * 1e3 / len(atoms), color=\"k\")\n"
        "bottom.set_ylabel(\"total energy change\\n(meV/atom)\"); bottom.set_xlabel(\"time (fs)\")\n"
        "fig.suptitle(\"ethanol, NVE, float64, 0.25 fs (student-427k)\"); fig.tight_layout()",
    ),
    ("md", "## The same with `mlff_jax.md`\n\nOur own compiled loop (no JAX-MD needed) records frames every k steps; `mlff-jax md` on the command line uses it."),
    (
        "code",
        "from mlff_jax import md\n\n"
        "init_fn, step_fn = md.nve(md.model_potential(model, atoms.numbers), timestep=0.25)\n"
        "state = init_fn(atoms.positions, atoms.get_masses(), key=jax.random.key(0), temperature=300.0)\n"
        "state, frames = md.run(md.trajectory_chunk(step_fn, frame_interval=20, frames_per_chunk=50), state, num_chunks=1)\n"
        "e = frames.total_energy\n"
        "print(f\"{int(state.step)} steps, {len(e)} frames; largest deviation of the total energy {np.abs(e - e[0]).max() / len(atoms):.2e} eV/atom, \"\n"
        "      f\"mean temperature {frames.temperature().mean():.0f} K\")",
    ),
]

PERFORMANCE = [
    ("md", "# Performance\n\nPlots the benchmark results committed under `benchmarks/results/` (JSON written by the scripts in `benchmarks/`, with the device, versions and command of each run). Nothing here is measured on the machine that runs the notebook."),
    (
        "code",
        "import json, pathlib\nimport matplotlib.pyplot as plt\n\n"
        "results_dir = pathlib.Path.cwd().resolve().parent / \"benchmarks\" / \"results\"\n"
        "files = sorted(results_dir.glob(\"*.json\")) if results_dir.exists() else []\n"
        "if not files:\n"
        "    print(f\"No benchmark results committed yet (looked in {results_dir}). Run the benchmarks (see docs/performance.md) and commit their JSON.\")\n"
        "results = {f.name: json.loads(f.read_text()) for f in files}\n"
        "for name, r in results.items():\n"
        "    env = r.get(\"environment\", {})\n"
        "    print(f\"{name}: device {env.get('gpu') or env.get('devices')}, jax {env.get('jax')}, commit {str(env.get('git_commit', '?'))[:10]}\")",
    ),
    (
        "code",
        "# Time per call against molecule size, for every result file with per-system rows (µs, medians).\n"
        "plotted = 0\n"
        "for name, r in results.items():\n"
        "    rows = r.get(\"rows\") if isinstance(r, dict) else None\n"
        "    if not rows or not all(isinstance(row, dict) and \"atoms\" in row for row in rows):\n"
        "        continue\n"
        "    rows = sorted(rows, key=lambda row: row[\"atoms\"])\n"
        "    methods = sorted({k for row in rows for k, v in row.items() if k not in (\"atoms\", \"system\") and isinstance(v, (int, float))})\n"
        "    fig, ax = plt.subplots(figsize=(6, 4))\n"
        "    for method in methods:\n"
        "        points = [(row[\"atoms\"], row[method]) for row in rows if isinstance(row.get(method), (int, float))]\n"
        "        ax.plot(*zip(*points), marker=\"o\", label=method)\n"
        "    ax.set_xscale(\"log\"); ax.set_yscale(\"log\"); ax.set_xlabel(\"atoms\"); ax.set_ylabel(\"µs per call (median)\")\n"
        "    ax.set_title(name); ax.legend(fontsize=8); fig.tight_layout(); plt.show()\n"
        "    plotted += 1\n"
        "print(f\"{plotted} plot(s) from {len(results)} result file(s)\")",
    ),
]

NOTEBOOK_CELLS = {"01_quickstart": QUICKSTART, "02_md_with_jax_md": MD_JAX_MD, "03_performance": PERFORMANCE}


def build(name: str) -> pathlib.Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src) for kind, src in NOTEBOOK_CELLS[name]]
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    path = NOTEBOOKS / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


if __name__ == "__main__":
    NOTEBOOKS.mkdir(exist_ok=True)
    for name in sys.argv[1:] or NOTEBOOK_CELLS:
        print("wrote", build(name))
