"""Liquid-water and vacuum MD validation of a model: the MD targets of a default model, one process, one JSON.

    python3 benchmarks/liquid_md_validation.py --model default --out benchmarks/results/liquid_md_default_h100.json
    python3 benchmarks/liquid_md_validation.py --model PATH/best.safetensors --out benchmarks/results/liquid_md_<name>_h100.json
    # --compress: tabulated filters (forces within 1e-4 eV/A of the exact model in float32): faster MD on a GPU (docs/performance.md)
    # CPU smoke run (minutes): a 32-molecule box, float64, tiny lengths
    python3 benchmarks/liquid_md_validation.py --model default --dtype float64 --water-molecules 32 --equil-ps 0.05 \\
        --nve-ps 0.05 --nvt-ps 0.1 --rdf-last-ps 0.05 --frame-ps 0.01 --nve-frame-ps 0.005 --vacuum-thermalise-ps 0.01 \\
        --vacuum-ps 0.05 --relax-steps 20 --out /tmp/liquid_md_smoke.json

Targets (PASS/FAIL per target in the JSON's ``targets`` and in the table printed last):

1. ``water_nve_drift``: periodic liquid water (216 molecules, 648 atoms, 1.0 g/cm³, packed at random
   by ``mlff_jax.train.condensed.liquid_box``, relaxed by ``--relax-steps`` capped steepest-descent
   steps with the model), 5 ps of Langevin at 300 K (0.5 fs, friction 0.01 /fs), then 10 ps of NVE at
   0.5 fs: |drift| <= 0.1 meV/atom/ps (least-squares slope of E_total / N against time) and no guard
   tripped (``md.Guards()`` defaults) in the equilibration or the NVE run. The largest |E - E0| is
   reported too, over every step (from the guards' in-loop reduction) and over the frames.
2. ``water_nvt_stable``: then 100 ps of Langevin at 300 K with no guard tripped; temperature mean
   and standard deviation reported, and the structure at the end (intact molecules, closest O-O,
   atoms within 5.5 Å).
3. ``water_rdf_first_peak``: the O-O radial distribution (minimum image) from the frames every 0.1 ps
   of the last 50 ps: first peak between 2.6 and 3.0 Å; position, height and g(r) are saved.
4. ``ethanol_vacuum_stable``, ``water_hexamer_vacuum_stable``: the two systems of the model card's
   NVE runs (``mlff_jax.train.evaluate.nve_systems``, relaxed by ``evaluate.relax``), 1 ps of
   Langevin at 300 K, then 10 ps of NVE at 0.5 fs: no guard tripped and no atom more than 3 Å farther
   from the centre of mass than at the start of the NVE run (``evaluate.nve_run``'s criterion); drift
   reported.

The periodic runs use the neighbour list of :mod:`mlff_jax.neighbors` updated inside the compiled
loop (skin 0.5 Å, 1.5x the measured capacity); an overflowed chunk is reallocated and redone by
``md.run``, and every allocation and reallocation is recorded. A tripped guard does not stop the
script: the guard, its chunk and its time are recorded, the target fails and the next one runs (a
liquid target whose preceding stage tripped is not run and fails). Float32 with matmul precision
"highest" (``--dtype float64`` for CPU checks).

Cost: ~230k MD steps of 648 atoms plus ~44k steps of the two molecules. One compiled call per
``--chunk-ps`` (5 ps: 10,000 steps) of simulated time, frames kept every 0.1 ps (0.01 ps in NVE, for
the drift fit), so the host is visited ~35 times in all; the Langevin equilibration and production
share one compiled program. At 100-200 µs/step that is 25-50 s of MD plus compilation.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, write_json  # noqa: E402
from liquid_analysis import drift_meV, first_peak, radial_distribution, water_structure  # noqa: E402

TIMESTEP_FS = 0.5
TEMPERATURE_K = 300.0
SKIN_A = 0.5
CAPACITY_MULTIPLIER = 1.5  # neighbour slots over the measured need: a liquid's fluctuations stay inside
DRIFT_TARGET = 0.1  # meV/atom/ps
RDF_PEAK_RANGE = (2.6, 3.0)  # Å
VACUUM_RADIUS_GROWTH_A = 3.0  # evaluate.nve_run's stability criterion


# ----------------------------------------------------------------------------- settings
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help="a bundled model name (default) or a .safetensors checkpoint")
    p.add_argument("--out", required=True, help="JSON output path")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--implementation", default="auto", help="message passing: auto, xla, pallas, triton")
    p.add_argument("--compress", action="store_true",
                   help="tabulated radial filters (model.compress(), default spacing; float32 forces within 1e-4 eV/A of the exact model): faster on a GPU, see docs/performance.md")
    p.add_argument("--water-molecules", type=int, default=216)
    p.add_argument("--density", type=float, default=1.0, help="g/cm³")
    p.add_argument("--relax-steps", type=int, default=300, help="capped steepest-descent steps on the packed box")
    p.add_argument("--equil-ps", type=float, default=5.0, help="Langevin equilibration at 300 K")
    p.add_argument("--nve-ps", type=float, default=10.0)
    p.add_argument("--nvt-ps", type=float, default=100.0, help="Langevin production at 300 K")
    p.add_argument("--rdf-last-ps", type=float, default=50.0, help="g(r) from the frames of the last this-many ps of the production")
    p.add_argument("--frame-ps", type=float, default=0.1, help="frame interval of the Langevin runs (the g(r) frames)")
    p.add_argument("--nve-frame-ps", type=float, default=0.01, help="frame interval of the NVE runs (the drift fit)")
    p.add_argument("--chunk-ps", type=float, default=5.0, help="simulated time per compiled call (one host visit)")
    p.add_argument("--friction", type=float, default=0.01, help="1/fs, Langevin friction")
    p.add_argument("--rdf-bin", type=float, default=0.02, help="Å")
    p.add_argument("--vacuum-thermalise-ps", type=float, default=1.0)
    p.add_argument("--vacuum-ps", type=float, default=10.0, help="NVE of ethanol and the water hexamer")
    p.add_argument("--skip-vacuum", action="store_true", help="liquid water only (the vacuum targets then fail as not run)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def steps_of(name: str, ps: float) -> int:
    """MD steps of ``ps`` picoseconds at 0.5 fs; ValueError unless a positive whole number of steps."""
    steps = round(ps * 1000.0 / TIMESTEP_FS)
    if not (np.isfinite(ps) and ps > 0 and steps >= 1 and abs(steps * TIMESTEP_FS / 1000.0 - ps) < 1e-9):
        raise ValueError(f"--{name} must be a positive multiple of the {TIMESTEP_FS} fs timestep (in ps), got {ps!r}")
    return steps


def chunk_plan(name: str, ps: float, frame_ps: float, chunk_ps: float) -> tuple[int, int, int]:
    """(steps per frame, frames per compiled call, calls) for a run of ``ps`` with frames every
    ``frame_ps`` and calls of about ``chunk_ps`` (the largest whole number of frames that divides the run)."""
    steps, interval = steps_of(name, ps), steps_of("frame interval of " + name, frame_ps)
    if steps % interval:
        raise ValueError(f"--{name} ({ps} ps) must be a whole number of frame intervals ({frame_ps} ps)")
    frames = steps // interval
    wanted = max(1, min(frames, round(chunk_ps / frame_ps)))
    per_call = max(d for d in range(1, wanted + 1) if frames % d == 0)
    return interval, per_call, frames // per_call


def check_settings(args) -> None:
    if args.water_molecules < 2:
        raise ValueError(f"--water-molecules must be >= 2, got {args.water_molecules}")
    if not args.density > 0 or args.relax_steps < 0 or not args.rdf_bin > 0 or not args.chunk_ps > 0 or not args.friction >= 0:
        raise ValueError("--density, --rdf-bin and --chunk-ps must be > 0, --relax-steps and --friction >= 0")
    for name, ps, frame in (("equil-ps", args.equil_ps, args.frame_ps), ("nvt-ps", args.nvt_ps, args.frame_ps),
                            ("nve-ps", args.nve_ps, args.nve_frame_ps), ("vacuum-thermalise-ps", args.vacuum_thermalise_ps, args.frame_ps),
                            ("vacuum-ps", args.vacuum_ps, args.nve_frame_ps)):
        chunk_plan(name, ps, frame, args.chunk_ps)
    if not args.frame_ps <= args.rdf_last_ps <= args.nvt_ps:
        raise ValueError(f"--rdf-last-ps must lie between --frame-ps ({args.frame_ps}) and --nvt-ps ({args.nvt_ps}), got {args.rdf_last_ps}")


# ----------------------------------------------------------------------------- running stages
class NeighborLog:
    """A :mod:`mlff_jax.neighbors` list factory that records every allocation (``md.run``
    reallocates through it after an overflow) and keeps the latest list.

    Stages start from the latest list rather than a fresh one: its shapes (capacity, bins) are
    part of the compiled program, so a new allocation per stage could compile the same chunk again.
    A list from earlier positions is still correct: ``update`` rebuilds it once an atom has moved
    more than skin / 2 from where it was built.
    """

    def __init__(self, fns):
        self.fns, self.allocations, self.latest = fns, [], None

    def allocate(self, positions, **kwargs):
        self.latest = self.fns.allocate(positions, **kwargs)
        self.allocations.append({"capacity": int(self.latest.capacity), "max_neighbors": int(self.latest.max_neighbors)})
        return self.latest

    def update(self, positions, nbrs):
        return self.fns.update(positions, nbrs)


def make_chunk(cache: dict, step_fn, interval: int, per_call: int, neighbors=None, guards=None):
    """md.trajectory_chunk, memoised: stages with the same integrator and shapes share one compiled program."""
    from mlff_jax import md

    key = (id(step_fn), interval, per_call, id(neighbors), guards)
    if key not in cache:
        cache[key] = md.trajectory_chunk(step_fn, interval, per_call, neighbor_update=None if neighbors is None else neighbors.update,
                                         guards=md.Guards() if guards is None else guards)
    return cache[key]


def guard_record(error, start_step: int) -> dict:
    """A tripped guard (``md.SimulationError``) as JSON, its steps and times relative to the stage start."""
    first, last = (int(s) - start_step for s in error.steps)
    value = error.value if isinstance(error.value, (int, float)) else str(error.value)
    return {"quantity": error.quantity, "value": value, "bound": error.bound, "chunk": int(error.chunk), "steps": [first, last],
            "time_ps": [first * TIMESTEP_FS / 1000.0, last * TIMESTEP_FS / 1000.0], "message": str(error)}


def run_stage(chunk, state, num_calls: int, neighbors: NeighborLog | None = None, keep_atoms=None):
    """Runs ``num_calls`` compiled calls of ``chunk`` with ``md.run`` (from ``neighbors``' latest
    list, if any); a tripped guard ends the stage and is recorded. Returns (state, record, series):
    the state at the end of the stage (its start if a guard tripped), a JSON-ready record, and the
    per-frame series (step relative to the stage start,
    time_fs, potential and kinetic energy eV, temperature K, and positions [F, len(keep_atoms), 3] Å
    if ``keep_atoms`` is given; ``last_positions`` [N, 3] Å of the last frame)."""
    import jax

    from mlff_jax import md, md_guards

    num_atoms = int(state.positions.shape[0])
    start_step = int(state.step)
    series = {k: [] for k in ("step", "potential", "kinetic", "max_temperature", "max_energy_change", "min_pair", "positions")}
    series["last_positions"] = np.asarray(state.positions, np.float64)
    marks, summaries = [], []

    def on_chunk(frames):
        marks.append(time.perf_counter())
        series["step"].append(np.asarray(frames.step) - start_step)
        series["potential"].append(np.asarray(frames.potential_energy, np.float64))
        series["kinetic"].append(np.asarray(frames.kinetic_energy, np.float64))
        for name, field in (("max_temperature", "max_temperature"), ("max_energy_change", "max_energy_change"), ("min_pair", "min_pair_distance")):
            series[name].append(np.asarray(getattr(frames.guards, field), np.float64))
        if keep_atoms is not None:
            series["positions"].append(np.asarray(frames.positions[:, keep_atoms], np.float64))
        series["last_positions"] = np.asarray(frames.positions[-1], np.float64)

    start_energy = float(jax.device_get(md.total_energy(state)))
    start_temperature = float(jax.device_get(md_guards.temperature(md.kinetic_energy(state.velocities, state.masses), num_atoms)))
    allocations = len(neighbors.allocations) if neighbors is not None else 0
    neighbor = None if neighbors is None else (neighbors.latest if neighbors.latest is not None else neighbors.allocate(state.positions))
    guard, t0 = None, time.perf_counter()
    try:
        state, _ = md.run(chunk, state, num_calls, neighbor=neighbor, neighbor_fn=neighbors, on_chunk=on_chunk, on_guards=summaries.append)
    except md.SimulationError as error:
        guard = guard_record(error, start_step)
        print(f"  guard tripped: {error}", flush=True)
    wall = time.perf_counter() - t0
    series = {k: (np.concatenate(v) if isinstance(v, list) and v else (np.zeros(0) if isinstance(v, list) else v)) for k, v in series.items()}
    series["time_fs"] = series["step"] * TIMESTEP_FS
    series["temperature"] = md_guards.temperature(series["kinetic"], num_atoms)
    series["start_energy"] = start_energy
    steps_done = int(series["step"][-1]) if len(series["step"]) else 0
    per_step = (marks[-1] - marks[0]) / (steps_done - chunk.steps_per_chunk) * 1e6 if len(marks) > 1 else None
    record = {
        "steps_asked": int(num_calls * chunk.steps_per_chunk), "steps_done": steps_done, "simulated_ps": steps_done * TIMESTEP_FS / 1000.0,
        "frames": int(len(series["step"])),
        "guard": guard, "temperature_start_K": start_temperature,
        "temperature_mean_K": float(np.mean(series["temperature"])) if steps_done else None,
        "temperature_std_K": float(np.std(series["temperature"])) if steps_done else None,
        "temperature_max_K_every_step": float(np.max(series["max_temperature"])) if steps_done else None,
        "closest_pair_A": float(np.min(series["min_pair"])) if steps_done else None,
        "reallocations": int(sum(s["reallocations"] for s in summaries)),
        "neighbor_capacity": int(neighbor.capacity) if neighbors is not None else None,  # of the list the stage started with
        "neighbor_allocations": neighbors.allocations[allocations:] if neighbors is not None else None,  # reallocations in the stage
        "wall_s": round(wall, 3), "us_per_step_after_first_call": per_step,
    }
    if chunk.conserves_energy:
        record["max_abs_energy_change_meV_per_atom_every_step"] = 1000.0 * float(np.max(series["max_energy_change"])) / num_atoms if steps_done else None
    return state, record, series


def nve_drift(series, num_atoms: int) -> dict:
    """Drift of an NVE stage's series, the start state included at t = 0."""
    total = np.concatenate([[series["start_energy"]], series["potential"] + series["kinetic"]])
    return drift_meV(total, np.concatenate([[0.0], series["time_fs"]]), num_atoms)


# ----------------------------------------------------------------------------- liquid water
def packed_water(molecules: int, density: float, seed: int):
    """A random periodic box of ASE's H2O at ``density`` g/cm³ (condensed.liquid_box, seeded)."""
    from ase.build import molecule

    from mlff_jax.train.condensed import liquid_box

    return liquid_box([molecule("H2O")], [molecules], density, np.random.default_rng(seed))


def relax_periodic(potential, positions, neighbors: NeighborLog, steps: int, step_size: float = 0.01, max_step: float = 0.05):
    """Capped steepest descent (as ``evaluate.relax``: 0.01 Å²/eV × F, at most 0.05 Å per atom and
    step) under the neighbour list, compiled as one call. Returns (positions [N, 3] Å, record with
    the energy and largest force at the first and the last step, before their moves)."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def descend(r, nbrs):
        def body(i, carry):
            r, nbrs, overflow, first, _ = carry
            nbrs = neighbors.update(r, nbrs)
            energy, forces = potential(r, neighbor=nbrs)
            now = jnp.stack([energy, jnp.max(jnp.linalg.norm(forces, axis=1))])  # measured on the way: no separate program to compile
            move = step_size * forces
            norm = jnp.linalg.norm(move, axis=1, keepdims=True)
            r = r + move * jnp.minimum(1.0, max_step / jnp.maximum(norm, 1e-12))
            return r, nbrs, overflow | nbrs.did_buffer_overflow, jnp.where(i == 0, now, first), now

        nan = jnp.full(2, jnp.nan, r.dtype)
        return jax.lax.fori_loop(0, steps, body, (r, nbrs, jnp.zeros((), bool), nan, nan))

    nbrs = neighbors.allocate(positions)
    for _ in range(5):  # an overflow drops pairs: reallocate where the descent went, then redo it
        relaxed, _, overflow, first, last = descend(positions, nbrs)
        if not bool(overflow):
            break
        nbrs = neighbors.allocate(np.asarray(relaxed))
    else:
        raise RuntimeError("the relaxation's neighbour list kept overflowing")
    (e0, f0), (e1, f1) = np.asarray(first, np.float64), np.asarray(last, np.float64)
    return relaxed, {"steps": steps, "energy_first_step_eV": e0, "energy_last_step_eV": e1, "max_force_first_step_eV_A": f0,
                     "max_force_last_step_eV_A": f1}


def liquid_water(model, args, dtype, cache: dict) -> dict:
    """The three liquid-water stages; returns their records (and the g(r))."""
    import jax
    from ase.data import atomic_masses

    from mlff_jax import md, neighbors

    box = packed_water(args.water_molecules, args.density, args.seed)
    z, cell = box.numbers, np.asarray(box.cell.array)
    out: dict = {"atoms": len(box), "molecules": args.water_molecules, "density_g_cm3": args.density, "box_A": float(cell[0, 0]),
                 "cutoff_A": model.config.cutoff, "skin_A": SKIN_A, "capacity_multiplier": CAPACITY_MULTIPLIER, "structure": {}}
    out["message_implementation"] = model.message_implementation(len(box))
    log = NeighborLog(neighbors.neighbor_list_fn(model.config.cutoff, skin=SKIN_A, cell=cell, capacity_multiplier=CAPACITY_MULTIPLIER))
    out["neighbor_allocations"] = log.allocations  # every one, relaxation included (filled in as they happen)
    # jitted: its first (host) call, for the initial state, compiles one program instead of dispatching
    # each operation; inside the compiled MD it is inlined as before
    potential = jax.jit(md.model_potential(model, z))
    out["structure"]["packed"] = water_structure(box.positions, z, cell)
    positions, out["relax"] = relax_periodic(potential, box.positions.astype(dtype), log, args.relax_steps)
    out["structure"]["relaxed"] = water_structure(positions, z, cell)
    init_fn, langevin_step = md.langevin(potential, TIMESTEP_FS, TEMPERATURE_K, args.friction)
    _, nve_step = md.nve(potential, TIMESTEP_FS)
    state = init_fn(positions, atomic_masses[z].astype(dtype), key=jax.random.key(args.seed), temperature=TEMPERATURE_K,
                    neighbor=log.allocate(positions))

    interval, per_call, calls = chunk_plan("equil-ps", args.equil_ps, args.frame_ps, args.chunk_ps)
    state, out["equilibration"], series = run_stage(make_chunk(cache, langevin_step, interval, per_call, log), state, calls, log)
    out["structure"]["equilibrated"] = water_structure(series["last_positions"], z, cell)
    if out["equilibration"]["guard"]:
        out["nve"] = out["nvt"] = {"not_run": "the equilibration tripped a guard"}
        return out
    equilibrated = state

    interval, per_call, calls = chunk_plan("nve-ps", args.nve_ps, args.nve_frame_ps, args.chunk_ps)
    state, out["nve"], series = run_stage(make_chunk(cache, nve_step, interval, per_call, log), state, calls, log)
    out["nve"].update(nve_drift(series, len(z)))
    out["structure"]["after_nve"] = water_structure(series["last_positions"], z, cell)
    if out["nve"]["guard"]:
        state = equilibrated  # the production starts from the equilibrated liquid instead
        out["nvt_starts_from"] = "the end of the equilibration (the NVE run tripped a guard)"

    interval, per_call, calls = chunk_plan("nvt-ps", args.nvt_ps, args.frame_ps, args.chunk_ps)
    oxygens = np.flatnonzero(z == 8)
    state, out["nvt"], series = run_stage(make_chunk(cache, langevin_step, interval, per_call, log), state, calls, log, keep_atoms=oxygens)
    out["structure"]["after_nvt"] = water_structure(series["last_positions"], z, cell)
    window = series["time_fs"] > (args.nvt_ps - args.rdf_last_ps) * 1000.0 + 1e-6
    rdf = {"frames": int(np.sum(window)), "window_ps": [args.nvt_ps - args.rdf_last_ps, args.nvt_ps], "bin_A": args.rdf_bin}
    if rdf["frames"]:
        r, g, _ = radial_distribution(series["positions"][window], cell, 0.5 * float(np.min(np.diag(cell))), args.rdf_bin)
        rdf["first_peak_A"], rdf["first_peak_height"] = first_peak(r, g)
        rdf["r_A"], rdf["g"] = r.round(4).tolist(), g.round(5).tolist()
    out["rdf_OO"] = rdf
    return out


# ----------------------------------------------------------------------------- vacuum
def vacuum_molecule(model, atoms, args, dtype, cache: dict) -> dict:
    """Relax (evaluate.relax), thermalise with Langevin at 300 K, then NVE; stability as evaluate.nve_run."""
    import jax

    from mlff_jax import md
    from mlff_jax.train.evaluate import relax

    z, masses = atoms.numbers, atoms.get_masses()
    positions = relax(model, atoms.positions, z)
    potential = md.model_potential(model, z)
    init_fn, langevin_step = md.langevin(potential, TIMESTEP_FS, TEMPERATURE_K, args.friction)
    _, nve_step = md.nve(potential, TIMESTEP_FS)
    state = init_fn(positions.astype(dtype), masses.astype(dtype), key=jax.random.key(args.seed), temperature=TEMPERATURE_K)
    out = {"atoms": len(z)}
    interval, per_call, calls = chunk_plan("vacuum-thermalise-ps", args.vacuum_thermalise_ps, args.frame_ps, args.chunk_ps)
    state, out["thermalisation"], _ = run_stage(make_chunk(cache, langevin_step, interval, per_call), state, calls)
    if out["thermalisation"]["guard"]:
        out["nve"] = {"not_run": "the thermalisation tripped a guard"}
        return out
    interval, per_call, calls = chunk_plan("vacuum-ps", args.vacuum_ps, args.nve_frame_ps, args.chunk_ps)
    start = np.asarray(state.positions, np.float64)
    state, out["nve"], series = run_stage(make_chunk(cache, nve_step, interval, per_call), state, calls, keep_atoms=np.arange(len(z)))
    out["nve"].update(nve_drift(series, len(z)))
    weights = masses / masses.sum()

    def radius(r):  # [..., N, 3] -> [...] largest distance of an atom from the centre of mass
        centre = np.einsum("n,...nk->...k", weights, r)
        return np.max(np.linalg.norm(r - centre[..., None, :], axis=-1), axis=-1)

    out["nve"]["initial_max_radius_A"] = float(radius(start))
    out["nve"]["max_radius_A"] = float(np.max(radius(series["positions"]))) if len(series["positions"]) else None
    return out


# ----------------------------------------------------------------------------- targets, output
def targets(results: dict) -> dict:
    """PASS/FAIL of every target from the records (a stage that did not run fails its target)."""
    water = results.get("water", {})
    equil, nve, nvt = water.get("equilibration", {}), water.get("nve", {}), water.get("nvt", {})
    # a stage that ran to its end without a guard trip (a stage that did not run has no "steps_done")
    complete = lambda stage: "steps_done" in stage and stage["guard"] is None and stage["steps_done"] == stage["steps_asked"]  # noqa: E731
    drift = nve.get("drift_meV_per_atom_per_ps")
    peak = water.get("rdf_OO", {}).get("first_peak_A")
    out = {
        "water_nve_drift": {"criterion": f"|drift| <= {DRIFT_TARGET} meV/atom/ps, no guard tripped (equilibration, NVE)", "value": drift,
                            "unit": "meV/atom/ps",
                            "pass": bool(complete(equil) and complete(nve) and drift is not None and np.isfinite(drift) and abs(drift) <= DRIFT_TARGET)},
        "water_nvt_stable": {"criterion": "Langevin production at 300 K, no guard tripped", "value": nvt.get("simulated_ps"), "unit": "ps",
                             "pass": bool(complete(equil) and complete(nvt))},
        "water_rdf_first_peak": {"criterion": f"{RDF_PEAK_RANGE[0]} <= first O-O peak <= {RDF_PEAK_RANGE[1]} A, production complete", "value": peak,
                                 "unit": "A", "pass": bool(complete(nvt) and peak is not None and RDF_PEAK_RANGE[0] <= peak <= RDF_PEAK_RANGE[1])},
    }
    for name, record in results.get("vacuum", {}).items():
        stage = record.get("nve", {})
        fine = complete(record.get("thermalisation", {})) and complete(stage) and stage.get("max_radius_A") is not None
        grew = None if not fine else stage["max_radius_A"] - stage["initial_max_radius_A"]
        out[f"{name}_vacuum_stable"] = {"criterion": f"NVE without a guard trip, no atom > {VACUUM_RADIUS_GROWTH_A} A farther from the centre of mass",
                                        "value": stage.get("drift_meV_per_atom_per_ps"), "unit": "meV/atom/ps (drift)",
                                        "pass": bool(fine and grew < VACUUM_RADIUS_GROWTH_A)}
    return out


def jsonable(value):
    """NumPy scalars to Python, non-finite floats to None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def model_file(name: str):
    from mlff_jax.api import BUNDLED_MODELS, bundled_model_path

    path = bundled_model_path(name) if name in BUNDLED_MODELS else name
    return str(path), hashlib.sha256(open(path, "rb").read()).hexdigest()


def print_table(results: dict) -> None:
    print(f"\n{'target':30s} {'value':>12s}  {'unit':22s} result")
    for name, target in results["targets"].items():
        value = target["value"]
        text = f"{value:12.4g}" if isinstance(value, (int, float)) else f"{'-':>12s}"
        print(f"{name:30s} {text}  {target['unit']:22s} {'PASS' if target['pass'] else 'FAIL'}")
    water = results.get("water", {})
    nvt, nve = water.get("nvt", {}), water.get("nve", {})
    if "temperature_mean_K" in nvt and nvt["temperature_mean_K"] is not None:
        print(f"water production: T {nvt['temperature_mean_K']:.1f} +- {nvt['temperature_std_K']:.1f} K; "
              f"g_OO first peak height {water['rdf_OO'].get('first_peak_height')}; NVE max |E - E0| "
              f"{nve.get('max_abs_energy_change_meV_per_atom_every_step')} meV/atom")


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    check_settings(args)
    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    with jax.default_matmul_precision("highest"):  # the model's own matmuls are "highest" already; this covers the rest
        return _run(args, argv)


def _run(args, argv) -> dict:
    import jax

    import mlff_jax
    from mlff_jax.train.evaluate import nve_systems

    started = time.perf_counter()
    path, sha256 = model_file(args.model)
    model = mlff_jax.load(path, dtype=args.dtype, precision="highest", implementation=args.implementation)
    if args.compress:
        model = model.compress()
    dtype = np.float64 if args.dtype == "float64" else np.float32
    results = {"benchmark": "liquid_md_validation", "device": jax.devices()[0].device_kind, "jax": jax.__version__,
               "command": "python3 benchmarks/liquid_md_validation.py " + " ".join(argv), "environment": environment(),
               "model": {"name": args.model, "file": os.path.basename(path), "sha256": sha256, "repr": repr(model), "dtype": args.dtype,
                         "precision": "highest", "compressed": bool(args.compress)},
               "settings": vars(args), "timestep_fs": TIMESTEP_FS, "temperature_K": TEMPERATURE_K}
    cache: dict = {}
    try:
        print("liquid water ...", flush=True)
        results["water"] = liquid_water(model, args, dtype, cache)
    except Exception as error:  # recorded, the targets fail, the vacuum runs still go
        traceback.print_exc()
        results["water"] = {"error": f"{type(error).__name__}: {error}"}
    write_json(args.out, jsonable({**results, "partial": "written after the water stages; the vacuum runs follow"}))
    results["vacuum"] = {}
    for name, atoms in ({} if args.skip_vacuum else nve_systems()).items():
        print(f"{name} in vacuum ...", flush=True)
        try:
            results["vacuum"][name] = vacuum_molecule(model, atoms, args, dtype, cache)
        except Exception as error:
            traceback.print_exc()
            results["vacuum"][name] = {"error": f"{type(error).__name__}: {error}"}
    results["targets"] = targets(results)
    if args.skip_vacuum:  # not run is not passed
        results["targets"]["vacuum_not_run"] = {"criterion": "ethanol and the water hexamer in vacuum (skipped: --skip-vacuum)",
                                                "value": None, "unit": "", "pass": False}
    results["all_pass"] = all(t["pass"] for t in results["targets"].values())
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results = jsonable(results)
    write_json(args.out, results)
    print_table(results)
    return results


if __name__ == "__main__":
    main()
