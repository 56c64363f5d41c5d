"""``mlff-jax md`` and ``mlff-jax bench``: compiled MD from the command line, with a progress bar,
an extended-XYZ trajectory and a CSV energy log."""

from __future__ import annotations

import csv
import json
import pathlib
import sys
import time

import numpy as np

from mlff_jax._cli_common import UserError, check_structure, load_model, read_structure

STEPS_PER_CHUNK = 1000  # steps per compiled call: enough to hide the host round trip, frequent enough to show progress


def ns_per_day(steps_per_second: float, timestep_fs: float) -> float:
    return steps_per_second * timestep_fs * 86400.0 / 1e6


class ProgressBar:
    """``[#####-----]  50%  500/1000 steps  1234 steps/s  21.3 ns/day  ETA 0:00:04`` on stderr.

    Redraws in place on a terminal; elsewhere (logs, pipes) prints a line at most every 10%.
    The rate excludes the first chunk, which includes compilation.
    """

    def __init__(self, total: int, timestep_fs: float, stream=None, width: int = 24):
        self.total, self.timestep_fs, self.width = total, timestep_fs, width
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.rate_start: tuple[float, int] | None = None
        self.last_decile = -1
        self.rate = float("nan")

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if self.rate_start is None:
            if done > 0:  # the first chunk compiled: time from its end
                self.rate_start = (now, done)
        elif done > self.rate_start[1]:
            self.rate = (done - self.rate_start[1]) / (now - self.rate_start[0])
        fraction = done / self.total
        filled = int(round(fraction * self.width))
        text = f"[{'#' * filled}{'-' * (self.width - filled)}] {fraction:4.0%}  {done}/{self.total} steps"
        if self.rate == self.rate:  # not NaN
            eta = (self.total - done) / self.rate
            text += f"  {self.rate:,.0f} steps/s  {ns_per_day(self.rate, self.timestep_fs):.2f} ns/day  ETA {int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}"
        else:
            text += "  (compiling)" if done == 0 else "  -- steps/s (first chunk includes compilation)"
        if self.tty:
            self.stream.write("\r" + text + " " * 4)
            if done >= self.total:
                self.stream.write("\n")
        else:
            decile = int(fraction * 10)
            if decile == self.last_decile and done < self.total:
                return
            self.last_decile = decile
            self.stream.write(text + "\n")
        self.stream.flush()


class TrajectoryWriter:
    """Appends frames to an extended-XYZ file (positions, velocities, energy, forces) and a CSV log."""

    COLUMNS = ("step", "time_fs", "potential_energy_eV", "kinetic_energy_eV", "total_energy_eV", "temperature_K")

    def __init__(self, atoms, traj_path, log_path, timestep_fs: float):
        self.atoms, self.timestep_fs = atoms.copy(), timestep_fs
        self.traj_path, self.log_path = pathlib.Path(traj_path), pathlib.Path(log_path)
        for path in (self.traj_path, self.log_path):
            if path.parent and not path.parent.exists():
                raise UserError(f"output directory does not exist: {path.parent}")
        self.traj_path.write_text("")
        self._log = open(self.log_path, "w", newline="")
        self._csv = csv.writer(self._log)
        self._csv.writerow(self.COLUMNS)

    def write(self, frames) -> None:
        import ase.io
        from ase.calculators.singlepoint import SinglePointCalculator

        temperatures = frames.temperature()
        images = []
        for k in range(len(frames.step)):
            step = int(frames.step[k])
            image = self.atoms.copy()
            image.positions = frames.positions[k]
            image.set_velocities(frames.velocities[k])
            image.info = {"step": step, "time_fs": step * self.timestep_fs}
            image.calc = SinglePointCalculator(image, energy=float(frames.potential_energy[k]), forces=frames.forces[k])
            images.append(image)
            epot, ekin = float(frames.potential_energy[k]), float(frames.kinetic_energy[k])
            self._csv.writerow([step, f"{step * self.timestep_fs:.4f}", f"{epot:.8f}", f"{ekin:.8f}", f"{epot + ekin:.8f}", f"{temperatures[k]:.3f}"])
        with open(self.traj_path, "a") as handle:
            ase.io.write(handle, images, format="extxyz")
        self._log.flush()

    def close(self) -> None:
        self._log.close()


def _chunk_plan(steps: int, frame_interval: int) -> tuple[int, int, int]:
    """(frames per full chunk, full chunks, frames in the last, shorter chunk)."""
    if steps % frame_interval:
        raise UserError(f"--steps ({steps}) must be a multiple of --frame-interval ({frame_interval})")
    frames = steps // frame_interval
    per_chunk = max(1, min(frames, STEPS_PER_CHUNK // frame_interval))
    return per_chunk, frames // per_chunk, frames % per_chunk


ALL_PAIRS_MAX_ATOMS = 64  # larger molecules, and every periodic cell, use the neighbour list (O(N))
SKIN = 0.5  # Å, Verlet skin of the neighbour list in MD


BENCH_RELAX_FMAX = 0.05  # eV/Å
RELAX_MAX_STEPS = 2000  # FIRE steps at most; a structure that needs more is reported unconverged


def _integrator(model, atoms, args, thermostat=None):
    from mlff_jax import md

    potential = md.model_potential(model, atoms.numbers)
    if (thermostat or args.thermostat) == "langevin":
        return md.langevin(potential, args.timestep, temperature=args.temperature, friction=args.friction)
    return md.nve(potential, args.timestep)


def relax(model, atoms, fmax: float, max_steps: int = RELAX_MAX_STEPS):
    """Positions relaxed with ASE's FIRE on the model to max |F| <= fmax eV/Å (cell fixed).

    Returns (relaxed atoms, one line that says what happened). Velocities drawn at T on a
    structure far above its minimum would heat it: 0.85 eV above it, the bundled ethanol reaches
    ~570 K on average from 300 K.
    """
    from ase.optimize import FIRE

    from mlff_jax.calculator import MLFFCalculator

    relaxed = atoms.copy()
    relaxed.calc = MLFFCalculator(model)
    e0, f0 = relaxed.get_potential_energy(), float(np.linalg.norm(relaxed.get_forces(), axis=1).max())
    optimizer = FIRE(relaxed, logfile=None)
    converged = bool(optimizer.run(fmax=fmax, steps=max_steps)) if f0 > fmax else True
    e1, f1 = relaxed.get_potential_energy(), float(np.linalg.norm(relaxed.get_forces(), axis=1).max())
    state = "" if converged else f" (NOT converged to {fmax} eV/Å after {max_steps} steps)"
    line = f"relaxed (FIRE): max |F| {f0:.3f} -> {f1:.3f} eV/Å, energy {e0:.4f} -> {e1:.4f} eV in {optimizer.nsteps} steps{state}"
    result = atoms.copy()
    result.positions = relaxed.positions
    return result, line


def _neighbor_list(model, atoms, positions):
    """(neighbor_fn, nbrs) from mlff_jax.neighbors for periodic or large systems, else (None, None)."""
    periodic = bool(np.any(atoms.pbc))
    if not periodic and len(atoms) <= ALL_PAIRS_MAX_ATOMS:
        return None, None
    try:
        from mlff_jax import neighbors
    except ImportError:
        if periodic:
            raise UserError("periodic structures need mlff_jax.neighbors, which this installation lacks") from None
        return None, None
    cell = np.asarray(atoms.cell.array) if periodic else None
    pbc = tuple(bool(p) for p in atoms.pbc) if periodic else None
    neighbor_fn = neighbors.neighbor_list_fn(model.config.cutoff, skin=SKIN, cell=cell, pbc=pbc)
    return neighbor_fn, neighbor_fn.allocate(positions)


class RunStats:
    """Per-frame temperature and total energy of the recorded run, and the guards' per-chunk summaries."""

    def __init__(self):
        self.temperatures, self.total_energies, self.steps, self.guards = [], [], [], []

    def add(self, frames) -> None:
        self.temperatures.extend(frames.temperature().tolist())
        self.total_energies.extend(np.asarray(frames.total_energy, np.float64).tolist())
        self.steps.extend(np.asarray(frames.step).tolist())


def _run_chunks(md, step_fn, state, steps, frame_interval, nbrs, neighbor_fn, guards, on_chunk=None, on_guards=None):
    """``steps`` steps in compiled chunks of <= STEPS_PER_CHUNK, a frame every ``frame_interval``."""
    per_chunk, full_chunks, remainder = _chunk_plan(steps, frame_interval)
    update = None if neighbor_fn is None else neighbor_fn.update
    for frames_per_chunk, num_chunks in ((per_chunk, full_chunks), (remainder, 1 if remainder else 0)):
        if num_chunks:
            chunk = md.trajectory_chunk(step_fn, frame_interval, frames_per_chunk, neighbor_update=update, guards=guards)
            state, _ = md.run(chunk, state, num_chunks, neighbor=nbrs, neighbor_fn=neighbor_fn, on_chunk=on_chunk or (lambda frames: None), on_guards=on_guards)
    return state


def _equilibrate(md, model, atoms, args, state, nbrs, neighbor_fn, guards) -> tuple:
    """Langevin at --temperature for --equilibrate fs; returns (state with step 0, one line)."""
    import dataclasses

    import jax.numpy as jnp

    steps = int(round(args.equilibrate / args.timestep))
    if steps < 1:
        return state, None
    _, step_fn = _integrator(model, atoms, args, thermostat="langevin")
    stats = RunStats()
    interval = max(1, min(steps, 10))
    steps -= steps % interval
    state = _run_chunks(md, step_fn, state, steps, interval, nbrs, neighbor_fn, guards, on_chunk=stats.add)
    tail = stats.temperatures[len(stats.temperatures) // 2:]
    line = (f"equilibrated: {steps} steps ({steps * args.timestep:g} fs) of Langevin at {args.temperature:g} K "
            f"(friction {args.friction:g} /fs), mean temperature over its second half {np.mean(tail):.1f} K")
    return dataclasses.replace(state, step=jnp.zeros_like(state.step)), line  # the recorded run starts at step 0


def _summary_lines(stats: RunStats, num_atoms: int, args, conserves_energy: bool) -> list[str]:
    from mlff_jax import md_guards

    t = np.asarray(stats.temperatures)
    lines = [f"temperature: mean {t.mean():.1f} K, min {t.min():.1f} K, max {t.max():.1f} K over {len(t)} frames (requested {args.temperature:g} K)"]
    e = np.asarray(stats.total_energies)
    change, slope = md_guards.energy_drift(e, np.asarray(stats.steps) * args.timestep, num_atoms)
    text = f"total energy: {e[0]:.6f} -> {e[-1]:.6f} eV ({change:+.2e} eV/atom), drift {slope:+.2e} eV/atom/ps (least-squares slope)"
    lines.append(text + ("" if conserves_energy else "; not conserved under the Langevin thermostat, the drift measures nothing"))
    if stats.guards:
        closest = min(g["min_pair_distance"] for g in stats.guards)
        hottest = max(g["max_temperature"] for g in stats.guards)
        reallocations = sum(g["reallocations"] for g in stats.guards)
        closest_text = f"closest pair {closest:.3f} Å" if np.isfinite(closest) else "closest pair not measured"
        lines.append(f"guards: ok (hottest step {hottest:.1f} K, {closest_text}, {reallocations} neighbour-list reallocations)")
    else:
        lines.append("guards: off (--no-guards)")
    return lines


def run_md(args) -> int:
    import jax

    from mlff_jax import md

    model = load_model(args.model, args.dtype, args.allow_untrained_elements)
    atoms = read_structure(args.structure)
    check_structure(model, atoms)
    per_chunk, _, _ = _chunk_plan(args.steps, args.frame_interval)
    log_path = args.log or str(pathlib.Path(args.output).with_suffix(".csv"))
    if pathlib.Path(log_path).resolve() == pathlib.Path(args.output).resolve():
        raise UserError("--log and --output must be different files")
    guards = None if args.no_guards else md.Guards()
    dtype = np.float64 if args.dtype == "float64" else np.float32
    prepare = not args.keep_velocities  # a given state (positions and velocities) is run as it is
    if prepare and args.relax_fmax > 0:
        atoms, line = relax(model, atoms, args.relax_fmax)
        print(line, flush=True)

    init_fn, step_fn = _integrator(model, atoms, args)
    velocities = atoms.get_velocities().astype(dtype) if args.keep_velocities else None
    neighbor_fn, nbrs = _neighbor_list(model, atoms, atoms.positions.astype(dtype))
    extra = {} if nbrs is None else {"neighbor": nbrs}
    state = init_fn(atoms.positions.astype(dtype), atoms.get_masses().astype(dtype), velocities, key=jax.random.key(args.seed), temperature=args.temperature, **extra)
    if prepare and args.equilibrate > 0:
        state, line = _equilibrate(md, model, atoms, args, state, nbrs, neighbor_fn, guards)
        if line:
            print(line, flush=True)
        if neighbor_fn is not None:
            nbrs = neighbor_fn.allocate(np.asarray(state.positions))
    writer = TrajectoryWriter(atoms, args.output, log_path, args.timestep)
    stats = RunStats()
    first = jax.tree_util.tree_map(lambda x: np.asarray(x)[None], md._frame(state))
    writer.write(first)
    stats.add(first)

    bar = None if args.quiet else ProgressBar(args.steps, args.timestep)
    done = 0
    start = time.perf_counter()
    compile_s = 0.0

    def on_chunk(frames):
        nonlocal done, compile_s
        if done == 0:
            compile_s = time.perf_counter() - start
        writer.write(frames)
        stats.add(frames)
        done = int(frames.step[-1])
        if bar:
            bar.update(done)

    if bar:
        bar.update(0)
    try:
        state = _run_chunks(md, step_fn, state, args.steps, args.frame_interval, nbrs, neighbor_fn, guards, on_chunk=on_chunk, on_guards=stats.guards.append)
    finally:
        writer.close()
    elapsed = time.perf_counter() - start
    steady = (args.steps - min(args.steps, per_chunk * args.frame_interval)) / max(elapsed - compile_s, 1e-9)
    ensemble = "Langevin" if args.thermostat == "langevin" else "NVE"
    print(f"md: {args.steps} steps of {args.timestep} fs ({ensemble}) of {len(atoms)} atoms ({atoms.get_chemical_formula(mode='hill')}) in {elapsed:.2f} s (first chunk, with compilation: {compile_s:.2f} s)")
    if steady > 0:
        print(f"speed: {steady:,.0f} steps/s, {ns_per_day(steady, args.timestep):.3f} ns/day, {steady * len(atoms):,.0f} atom-steps/s (after the first chunk)")
    else:
        overall = args.steps / elapsed
        print(f"speed: {overall:,.0f} steps/s, {ns_per_day(overall, args.timestep):.3f} ns/day including compilation (one chunk only: run more than {per_chunk * args.frame_interval} steps for the steady speed)")
    for line in _summary_lines(stats, len(atoms), args, conserves_energy=ensemble == "NVE"):
        print(line)
    print(f"wrote {args.output} ({args.steps // args.frame_interval + 1} frames) and {log_path}")
    return 0


def run_bench(args) -> int:
    import jax

    from mlff_jax import md

    model = load_model(args.model, args.dtype, args.allow_untrained_elements)
    atoms = read_structure(args.molecule)
    check_structure(model, atoms)
    dtype = np.float64 if args.dtype == "float64" else np.float32
    positions = atoms.positions.astype(dtype)

    def call():
        energy, forces = model.energy_and_forces(positions, atoms.numbers)
        return jax.block_until_ready(forces)

    call()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    ef_us = float(np.median(times) * 1e6)

    # MD: relaxed first (velocities at 300 K on a strained structure would heat it), NVE at 0.5 fs,
    # every timed chunk checked by the guards and recorded (a speed is only quoted with its physics)
    from mlff_jax import md_guards

    relaxed, relax_line = relax(model, atoms, BENCH_RELAX_FMAX)
    init_fn, step_fn = md.nve(md.model_potential(model, atoms.numbers), 0.5)
    state = init_fn(relaxed.positions.astype(dtype), atoms.get_masses().astype(dtype), key=jax.random.key(0), temperature=300.0)
    start_temperature = float(md_guards.temperature(md.kinetic_energy(state.velocities, state.masses), len(atoms)))
    interval = 10 if args.md_steps % 10 == 0 else args.md_steps
    chunk = md.trajectory_chunk(step_fn, interval, args.md_steps // interval)
    stats = RunStats()
    first = jax.tree_util.tree_map(lambda x: np.asarray(x)[None], md._frame(state))
    stats.add(first)
    state, _ = md.run(chunk, state, 1, on_chunk=stats.add, on_guards=stats.guards.append)  # compiles
    md_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        state, _ = md.run(chunk, state, 1, on_chunk=stats.add, on_guards=stats.guards.append)  # one sync: the guards' read-back
        md_times.append(time.perf_counter() - t0)
    step_us = float(np.median(md_times) / args.md_steps * 1e6)
    physics = md_guards.run_record(stats.temperatures, stats.total_energies, np.asarray(stats.steps) * 0.5, len(atoms),
                                   start_temperature=start_temperature, max_temperature=max(g["max_temperature"] for g in stats.guards),
                                   min_pair_distance=min(g["min_pair_distance"] for g in stats.guards))
    device = jax.devices()[0]
    results = {
        "molecule": args.molecule,
        "atoms": len(atoms),
        "model": args.model,
        "dtype": args.dtype,
        "device": f"{device.platform}:{device.device_kind}",
        "jax": jax.__version__,
        "energy_and_forces_us_median": ef_us,
        "md_step_us_median": step_us,
        "md_steps_per_s": 1e6 / step_us,
        "md_ns_per_day_at_0.5fs": ns_per_day(1e6 / step_us, 0.5),
        "md_relax": relax_line,
        "md_physics": physics,
        "valid": physics["valid"],
    }
    print(f"bench: {args.molecule} ({len(atoms)} atoms), model {args.model} ({args.dtype}) on {results['device']}, jax {jax.__version__}")
    print(f"energy+forces, one call from Python: {ef_us:,.0f} µs (median of {args.repeats})")
    print(f"compiled MD (NVE): {step_us:,.1f} µs/step = {1e6 / step_us:,.0f} steps/s = {results['md_ns_per_day_at_0.5fs']:.2f} ns/day at 0.5 fs (median of 3 x {args.md_steps} steps)")
    print(f"  {relax_line}")
    print(f"  temperature: start {physics['temperature_start_K']:.1f} K, mean {physics['temperature_mean_K']:.1f} K, min {physics['temperature_min_K']:.1f} K, max {physics['temperature_max_K']:.1f} K")
    print(f"  total energy: {physics['nve_energy_change_eV_per_atom']:+.2e} eV/atom over {4 * args.md_steps * 0.5 / 1000:g} ps, drift {physics['nve_drift_eV_per_atom_per_ps']:+.2e} eV/atom/ps")
    print("  physics: valid" if physics["valid"] else f"  physics: INVALID ({'; '.join(physics['invalid_reasons'])}): do not quote this speed")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
