"""Guards of a compiled MD run: cheap reductions inside the compiled chunk, checked once per chunk.

A simulation that explodes (a timestep too long, a model outside its domain, atoms fused together)
can stay finite for thousands of steps while its temperature reaches 10⁴–10⁵ K. These guards turn
such a run into an error instead of a trajectory:

================================  ==============================================  ================
quantity                          default bound                                   ``Guards`` field
================================  ==============================================  ================
non-finite positions, energies,   always an error                                 ``check_finite``
velocities or forces
temperature                       max(5 × reference, 5000 K)                      ``max_temperature``
NVE total-energy change per atom  0.02 eV/atom (|E(t) − E(start of the run)|)     ``max_energy_change_per_atom``
closest pair                      0.5 Å                                           ``min_pair_distance``
neighbour-list overflow           8 reallocations per chunk (``md.run``)          ``max_reallocations``
================================  ==============================================  ================

The reference temperature is the thermostat's target (Langevin), else the temperature of the
state :func:`mlff_jax.md.run` starts from. The energy guard applies only to integrators that
conserve the total energy (``md.nve``). The closest pair is measured once per frame (at the
positions recorded in the frame) over the pairs of a :mod:`mlff_jax.neighbors` list, or over all
pairs of a system without a list (up to :data:`ALL_PAIRS_MAX_ATOMS` atoms; beyond that, or with a
JAX-MD list, it is not measured). Temperature, energy change and finiteness are reduced over every
step. A tripped guard raises :class:`SimulationError`, naming the chunk, the step range, the
quantity and its value.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from ase import units

ALL_PAIRS_MAX_ATOMS = 4096  # closest pair over all N² pairs (no neighbour list) up to this size
DEFAULT_MIN_TEMPERATURE_BOUND = 5000.0  # K
TEMPERATURE_BOUND_FACTOR = 5.0  # × the reference temperature


class SimulationError(RuntimeError):
    """An MD run left the physical regime (or the neighbour list could not be grown).

    Attributes: chunk (0-based index in the run), steps ``(first, last)`` of that chunk, quantity
    (what tripped), value (its value), bound (the limit it crossed, or None).
    """

    def __init__(self, chunk: int, steps: tuple[int, int], quantity: str, value, bound=None, hint: str = ""):
        self.chunk, self.steps, self.quantity, self.value, self.bound = chunk, steps, quantity, value, bound
        limit = "" if bound is None else f" (bound {bound:g})"
        value_text = f"{value:.6g}" if isinstance(value, (int, float)) else str(value)
        super().__init__(f"simulation guard tripped in chunk {chunk} (steps {steps[0]}-{steps[1]}): {quantity} = {value_text}{limit}{'; ' + hint if hint else ''}")


def _optional_positive(name: str, value) -> None:
    if value is not None and not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise ValueError(f"Guards.{name} must be a finite number > 0 or None (off), got {value!r}")


@dataclasses.dataclass(frozen=True)
class Guards:
    """Bounds checked once per chunk by :func:`mlff_jax.md.run` (``None`` turns one off).

    Attributes:
      max_temperature: K; None: max(5 × the reference temperature, 5000 K).
      max_energy_change_per_atom: eV/atom, largest |E_total(t) − E_total(start of the run)| / N in
        NVE (ignored by integrators that do not conserve energy).
      min_pair_distance: Å, the closest pair allowed.
      check_finite: raise on non-finite positions, velocities, energies or forces.
      max_reallocations: neighbour-list reallocations allowed per chunk before giving up.
    """

    max_temperature: float | None = None
    max_energy_change_per_atom: float | None = 0.02
    min_pair_distance: float | None = 0.5
    check_finite: bool = True
    max_reallocations: int = 8

    def __post_init__(self):
        _optional_positive("max_temperature", self.max_temperature)
        _optional_positive("max_energy_change_per_atom", self.max_energy_change_per_atom)
        _optional_positive("min_pair_distance", self.min_pair_distance)
        if not (isinstance(self.max_reallocations, int) and self.max_reallocations >= 0):
            raise ValueError(f"Guards.max_reallocations must be an int >= 0, got {self.max_reallocations!r}")

    def temperature_bound(self, reference_temperature: float) -> float:
        """K: the temperature bound for a run whose reference temperature is given."""
        if self.max_temperature is not None:
            return float(self.max_temperature)
        return max(TEMPERATURE_BOUND_FACTOR * float(reference_temperature), DEFAULT_MIN_TEMPERATURE_BOUND)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GuardStats:
    """Per-frame reductions over the steps since the previous frame (arrays [F] in :class:`Frames`).

    max_temperature: K. max_energy_change: eV, max |E_total − reference|. min_pair_distance: Å at
    the frame's positions (inf when not measured). finite: all quantities finite at every step.
    """

    max_temperature: jax.Array
    max_energy_change: jax.Array
    min_pair_distance: jax.Array
    finite: jax.Array


def temperature(kinetic_energy, num_atoms: int):
    """K, 3N degrees of freedom (as ``Atoms.get_temperature``)."""
    return 2.0 * kinetic_energy / (3 * num_atoms * units.kB)


def empty_stats(dtype) -> GuardStats:
    return GuardStats(jnp.zeros((), dtype), jnp.zeros((), dtype), jnp.full((), jnp.inf, dtype), jnp.ones((), bool))


def accumulate(stats: GuardStats, state, kinetic_energy, reference_energy) -> GuardStats:
    """Folds one step's state into the running reductions (scalars only: a few O(N) sums)."""
    total = state.potential_energy + kinetic_energy
    # A non-finite array has a non-finite sum (inf - inf is NaN): one reduction per array.
    finite = jnp.isfinite(total) & jnp.isfinite(jnp.sum(state.positions)) & jnp.isfinite(jnp.sum(state.forces))
    return GuardStats(
        jnp.maximum(stats.max_temperature, temperature(kinetic_energy, state.positions.shape[0]).astype(stats.max_temperature.dtype)),
        jnp.maximum(stats.max_energy_change, jnp.abs(total - reference_energy).astype(stats.max_energy_change.dtype)),
        stats.min_pair_distance,
        stats.finite & finite,
    )


def closest_pair(positions, neighbor=None):
    """[] Å, the closest pair at ``positions`` [N, 3]: over a :mod:`mlff_jax.neighbors` list's pairs,
    or over all pairs without a list (N ≤ ALL_PAIRS_MAX_ATOMS); inf where not measurable."""
    n = positions.shape[0]
    if neighbor is not None:
        if not hasattr(neighbor, "cartesian_shifts"):  # e.g. a JAX-MD list: no displacement function here
            return jnp.full((), jnp.inf, positions.dtype)
        j = jnp.minimum(neighbor.idx, n - 1)
        vectors = positions[j] - positions[:, None, :] + neighbor.cartesian_shifts().astype(positions.dtype)
        squared = jnp.sum(vectors * vectors, axis=-1)
        return jnp.sqrt(jnp.min(jnp.where(neighbor.mask, squared, jnp.inf), initial=jnp.inf))
    if n < 2 or n > ALL_PAIRS_MAX_ATOMS:
        return jnp.full((), jnp.inf, positions.dtype)
    vectors = positions[:, None, :] - positions[None, :, :]
    squared = jnp.sum(vectors * vectors, axis=-1)
    squared = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, squared)  # the diagonal's 0 is no pair
    return jnp.sqrt(jnp.min(squared))


def check(stats, guards: Guards, *, chunk: int, steps: tuple[int, int], num_atoms: int, reference_temperature: float,
          conserves_energy: bool) -> dict:
    """Raises :class:`SimulationError` if a frame of the chunk crossed a bound; returns the chunk's
    summary ``{max_temperature, max_energy_change_per_atom, min_pair_distance}`` (host numbers).

    stats: the chunk's :class:`GuardStats` as host arrays [F].
    """
    finite = np.asarray(stats.finite)
    max_t = np.asarray(stats.max_temperature, np.float64)
    de = np.asarray(stats.max_energy_change, np.float64) / num_atoms
    d_min = np.asarray(stats.min_pair_distance, np.float64)
    if guards.check_finite and not finite.all():
        raise SimulationError(chunk, steps, "non-finite positions, energy or forces", float("nan"),
                              hint="the integration diverged; try a shorter timestep")
    bound = guards.temperature_bound(reference_temperature)
    if not max_t.max() <= bound:
        raise SimulationError(chunk, steps, "temperature (K)", float(max_t.max()), bound,
                              hint="the simulation is heating up; try a shorter timestep, a relaxed start or another model")
    if conserves_energy and guards.max_energy_change_per_atom is not None and not de.max() <= guards.max_energy_change_per_atom:
        raise SimulationError(chunk, steps, "NVE total-energy change per atom (eV)", float(de.max()), guards.max_energy_change_per_atom,
                              hint="energy is not conserved; try a shorter timestep")
    if guards.min_pair_distance is not None and not d_min.min() >= guards.min_pair_distance:
        raise SimulationError(chunk, steps, "closest pair distance (Å)", float(d_min.min()), guards.min_pair_distance,
                              hint="atoms collapsed onto each other")
    return {"max_temperature": float(max_t.max()), "max_energy_change_per_atom": float(de.max()), "min_pair_distance": float(d_min.min())}


# ----------------------------------------------------------------------------- run records
def energy_drift(total_energy, time_fs, num_atoms: int) -> tuple[float, float]:
    """(E_last − E_first per atom in eV, least-squares slope per atom in eV/ps) of a total-energy
    series [F] eV at times [F] fs (F ≥ 2; NaN otherwise)."""
    e = np.asarray(total_energy, np.float64) / num_atoms
    t = np.asarray(time_fs, np.float64) / 1000.0
    if e.size < 2 or np.ptp(t) == 0:
        return float("nan"), float("nan")
    return float(e[-1] - e[0]), float(np.polyfit(t, e, 1)[0])


HOT_FACTOR = 2.0  # a run whose temperature exceeds twice its start is not a valid benchmark


def validity(record: dict) -> tuple[bool, list[str]]:
    """The benchmark rule: (valid, reasons) of a run record with ``overflow_during_timing``,
    ``guard`` (None or the tripped guard's message), ``temperature_start_K`` and
    ``temperature_max_K``. A record missing any of them is not valid ("not checked")."""
    reasons = []
    needed = ("overflow_during_timing", "guard", "temperature_start_K", "temperature_max_K")
    missing = [k for k in needed if k not in record]
    if missing:
        return False, [f"physics not checked (no {', '.join(missing)})"]
    if record["overflow_during_timing"]:
        reasons.append("neighbour list overflowed during timing (pairs were dropped)")
    if record["guard"]:
        reasons.append(f"guard tripped: {record['guard']}")
    start, hottest = record["temperature_start_K"], record["temperature_max_K"]
    if not (hottest is not None and start is not None and hottest <= HOT_FACTOR * start):
        reasons.append(f"temperature reached {hottest} K, more than {HOT_FACTOR:g} x the start ({start} K)")
    return not reasons, reasons


def run_record(temperatures, total_energies, times_fs, num_atoms: int, *, start_temperature: float, max_temperature=None,
               min_pair_distance=None, overflow_events: int = 0, overflow_during_timing: bool = False, guard: str | None = None,
               conserves_energy: bool = True) -> dict:
    """The physics of a (timed) run as a JSON-ready dict, with ``valid`` and ``invalid_reasons``.

    temperatures, total_energies, times_fs: [F] per recorded frame (K, eV, fs); max_temperature:
    the guards' per-step maximum if known (else the frames' maximum).
    """
    temperatures = np.asarray(temperatures, np.float64)
    hottest = float(np.max(temperatures)) if temperatures.size else float("nan")
    if max_temperature is not None:
        hottest = max(hottest, float(max_temperature))
    change, slope = energy_drift(total_energies, times_fs, num_atoms) if conserves_energy else (None, None)
    record = {
        "temperature_start_K": float(start_temperature),
        "temperature_mean_K": float(np.mean(temperatures)) if temperatures.size else None,
        "temperature_min_K": float(np.min(temperatures)) if temperatures.size else None,
        "temperature_max_K": hottest if np.isfinite(hottest) else None,
        "nve_energy_change_eV_per_atom": change,
        "nve_drift_eV_per_atom_per_ps": slope,
        "closest_pair_A": None if min_pair_distance is None or not np.isfinite(min_pair_distance) else float(min_pair_distance),
        "overflow_events": int(overflow_events),
        "overflow_during_timing": bool(overflow_during_timing),
        "guard": guard,
    }
    record["valid"], record["invalid_reasons"] = validity(record)
    return record
