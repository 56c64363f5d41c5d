"""Physics checks of benchmark rows: a speed is only quoted for a simulation that stayed physical.

The rule (``mlff_jax.md_guards.validity``): an MD row is valid only if it records its physics and
no neighbour-list overflow happened during timing, no guard tripped, and the temperature stayed at
or below twice its start. Invalid rows stay in the JSON (marked ``"valid": false`` with reasons) and
are never quoted in the README, docs/performance.md or used by ``make_kernels_choice.py``.

``TimedRun`` runs chunks of :func:`mlff_jax.md.trajectory_chunk` the way ``md.run`` does (an
overflowed chunk is reallocated and redone, so no timed step drops pairs) while keeping each chunk a
single call to time, and records the physics of the timed chunks.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from mlff_jax.md_guards import run_record, validity  # noqa: F401  (the one rule, shared with `mlff-jax bench`)

MD_ROW_KEYS = ("one_frame_per_call_us_per_step", "atom_steps_per_s")


def is_md_row(row: dict) -> bool:
    return any(key in row for key in MD_ROW_KEYS)


def quotable(rows):
    """The rows a document may quote: valid ones (an MD row without physics is not checked: out)."""
    return [row for row in rows if not is_md_row(row) or validity(row)[0]]


def invalid_rows(path) -> list[tuple[str, list[str]]]:
    """(system, reasons) of every invalid MD row of a benchmark JSON."""
    data = json.loads(pathlib.Path(path).read_text())
    out = []
    for row in data.get("rows", []):
        if is_md_row(row):
            valid, reasons = validity(row)
            if not valid:
                out.append((str(row.get("system", "?")), reasons))
    return out


class TimedRun:
    """One chunk per call, overflow handled as ``md.run`` handles it, physics of every call kept.

    chunk: from ``md.trajectory_chunk`` (guards on); state: MDState; neighbor / neighbor_fn: as for
    ``md.run`` (or None). ``call()`` runs one chunk (redone after a reallocation if the list
    overflowed: its time then includes the redo) and returns the new state.
    """

    def __init__(self, md, chunk, state, neighbor=None, neighbor_fn=None, max_reallocations: int = 8, target_temperature: float = 300.0):
        """target_temperature: K, the temperature the run was prepared at (velocities drawn,
        thermostat): the rule's "start", so a run that arrives hot from its preparation is not excused."""
        self.md, self.chunk, self.state, self.neighbor, self.neighbor_fn = md, chunk, state, neighbor, neighbor_fn
        self.max_reallocations = max_reallocations
        self.target_temperature = float(target_temperature)
        self.reset_record()
        self.frames = []  # device-side per-call frames, read back after timing

    def reset_record(self):
        """Forget what the warm-up calls recorded: the record covers the timed calls only."""
        import jax

        self.frames, self.overflow_events = [], 0
        self.reference_energy = self.md.total_energy(self.state)
        self.timed_start_temperature = float(jax.device_get(self.md.md_guards.temperature(self.md.kinetic_energy(self.state.velocities, self.state.masses), self.state.positions.shape[0])))

    def call(self):
        for attempt in range(self.max_reallocations + 1):
            state, neighbor, frames, overflow = self.chunk(self.state, self.neighbor, self.reference_energy)
            if not bool(overflow):  # waits for the chunk: the timing's own sync
                break
            self.overflow_events += 1
            if self.neighbor_fn is None or attempt == self.max_reallocations:
                raise RuntimeError("neighbour list overflow that could not be reallocated away")
            self.neighbor = self.neighbor_fn.allocate(self.state.positions)
        self.state, self.neighbor = state, neighbor
        self.frames.append(frames)
        return state

    def record(self, timestep_fs: float, conserves_energy: bool = True) -> dict:
        """The physics of the calls since the last :meth:`reset_record` (``md_guards.run_record``)."""
        import jax

        from mlff_jax import md_guards

        frames = [jax.device_get(f) for f in self.frames]
        num_atoms = int(self.state.positions.shape[0])
        temperatures = np.concatenate([f.temperature() for f in frames])
        total = np.concatenate([np.asarray(f.total_energy, np.float64) for f in frames])
        steps = np.concatenate([np.asarray(f.step) for f in frames])
        guard = None
        try:
            for k, f in enumerate(frames):
                last = int(f.step[-1])
                md_guards.check(f.guards, self.chunk.guards, chunk=k, steps=(last - self.chunk.steps_per_chunk + 1, last), num_atoms=num_atoms,
                                reference_temperature=self.target_temperature, conserves_energy=conserves_energy)
        except md_guards.SimulationError as error:
            guard = str(error)
        stats = [f.guards for f in frames]
        record = md_guards.run_record(
            temperatures, total, steps * timestep_fs, num_atoms, start_temperature=self.target_temperature,
            max_temperature=max(float(np.max(s.max_temperature)) for s in stats),
            min_pair_distance=min(float(np.min(s.min_pair_distance)) for s in stats),
            overflow_events=self.overflow_events, overflow_during_timing=False, guard=guard, conserves_energy=conserves_energy)
        record["temperature_at_timing_start_K"] = self.timed_start_temperature
        return record
