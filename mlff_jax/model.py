"""The user-facing model: validated, padded, jit-compiled energy and forces.

``PaiNNStudent`` holds a config and a parameter pytree; ``mlff_jax.load`` builds one from any
checkpoint. Host calls validate their input and pad it to size buckets so that molecules of many
sizes share a few compiled programs; calls made under ``jax.jit``/``vmap`` skip both (shapes are
already static there) and run the same pure function.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mlff_jax import analytic, evaluation, painn, periodic
from mlff_jax import elements as elements_lib
from mlff_jax import implementation as implementation_lib
from mlff_jax.analytic_graph import all_pairs_graph, default_accumulation
from mlff_jax.config import PaiNNConfig
# Re-exported: the padding sizes and the all-pairs switch point live in the evaluation layer.
from mlff_jax.evaluation import ALL_PAIRS_MAX_ATOMS, ALL_PAIRS_MAX_ATOMS_BY_PLATFORM, DTYPES, PRECISIONS, all_pairs_max_atoms, bucket_size

__all__ = ["ALL_PAIRS_MAX_ATOMS", "ALL_PAIRS_MAX_ATOMS_BY_PLATFORM", "PaiNNStudent", "all_pairs_max_atoms", "bucket_size"]


def _is_traced(*arrays) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


class _HostProgramCache(dict):
    """A dict of compiled programs that ``jax.clear_caches()`` empties too, like jit's own caches
    (a long process, e.g. a test session, frees compiled programs that way)."""

    def __init__(self):
        super().__init__()
        try:  # JAX's registry of caches is private: without it, the cache simply lives with its model.
            from jax._src import util as jax_util

            jax_util.register_cache(self, "mlff_jax host programs")
        except (ImportError, AttributeError):
            pass

    __hash__ = object.__hash__  # registered in a WeakKeyDictionary: hashed by identity
    __eq__ = object.__eq__

    def cache_clear(self) -> None:
        self.clear()

    def cache_info(self) -> str:
        return f"{len(self)} compiled host programs"

    def cache_keys(self) -> list:
        return list(self.keys())


class _MoleculePlan(NamedTuple):
    """What a host call of one molecule of N atoms reuses: the compiled program, the packed input
    [num_padded, 5] with padding and atomic numbers written (only x, y, z change per call), and the
    atomic numbers it holds (dtype and bytes), checked once when they were new."""

    executable: Any
    packed: np.ndarray
    num_padded: int
    z_dtype: np.dtype
    z_bytes: bytes


def _params_signature(params) -> tuple:
    """Structure, shapes and dtypes of a params pytree: what a compiled program is specific to."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return treedef, tuple((np.shape(x), x.dtype if hasattr(x, "dtype") else np.result_type(x)) for x in leaves)


class PaiNNStudent:
    """A PaiNN student force field.

    Attributes:
      config: :class:`PaiNNConfig` (hidden width, blocks, radial functions, cutoff, max_z).
      params: parameter pytree (layout in :mod:`mlff_jax.painn`), in ``dtype``.
      dtype: ``"float32"`` or ``"float64"`` (float64 needs ``jax_enable_x64``).
      precision: matmul precision, ``"highest"`` by default (float32 on GPU would otherwise use
        TF32, with force errors near 1e-3 eV/Å); ``"high"``/``"default"`` are faster opt-ins.
      implementation: message passing by ``"xla"``, the fused kernels (``"pallas"``, ``"triton"``), or
        ``"auto"`` (default: the fastest measured for this device and workload, else ``"xla"``;
        see :mod:`mlff_jax.implementation`). ``interpret``: Pallas interpret mode (CPU tests).
      name: how error messages name the model (``load`` sets the file or bundled model name).
      allow_untrained_elements: host calls accept elements outside ``config.elements`` (the
        trained set; :mod:`mlff_jax.elements`); by default they raise ValueError.
    """

    def __init__(self, config: PaiNNConfig, params: Any, dtype: str = "float32", precision: str = "highest",
                 implementation: str = "auto", interpret: bool = False, name: str | None = None,
                 allow_untrained_elements: bool = False):  # fmt: skip
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if dtype == "float64" and not jax.config.jax_enable_x64:
            raise ValueError(
                "dtype='float64' needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) "
                "before loading the model"
            )
        self.config = config
        self.name = name
        self.dtype = dtype
        self.precision = precision
        implementation_lib.check(implementation, interpret)
        self.implementation, self.interpret = implementation, bool(interpret)
        self.params = painn.cast_params(params, DTYPES[dtype])
        self._jitted = jax.jit(self._packed_energy_and_forces, static_argnames=("num_structures", "method"))
        # Ahead-of-time compiled host programs, by (atoms bucket, structures bucket, method), called
        # positionally: the store is the model's own, so a plan can hold its program and the store
        # can be emptied when the params change layout. dtype, precision and implementation are
        # fixed per model, so they need no place in the key.
        self._executables = _HostProgramCache()
        # Structure and dtypes of the params they were compiled for: assigning params of another
        # layout (e.g. compressed tables) drops them all, and the next call compiles anew.
        self._compiled_params_signature = None
        # One molecule of N atoms (the latency-bound case), by (N, method): _MoleculePlan, or None
        # where the neighbour-list path applies.
        self._molecule_plans = _HostProgramCache()
        self.allow_untrained_elements = allow_untrained_elements  # also sets the host path's element table
        self._neighbor_specs = periodic.SpecCache()

    def __repr__(self) -> str:
        c = self.config
        return (
            f"PaiNNStudent(hidden_dim={c.hidden_dim}, num_interactions={c.num_interactions}, num_rbf={c.num_rbf}, "
            f"cutoff={c.cutoff}, filter_envelope={c.filter_envelope!r}, vector_mixing={c.vector_mixing!r}, "
            f"parameters={c.num_parameters}, dtype={self.dtype}, elements={self._elements_text()})"
        )

    def _elements_text(self) -> str:
        if self.config.elements is None:
            return "not recorded"
        return elements_lib.describe(self.config.elements) + (" (others allowed)" if self.allow_untrained_elements else "")

    def _same_model(self, params, **changes) -> "PaiNNStudent":
        options = dict(dtype=self.dtype, precision=self.precision, implementation=self.implementation, interpret=self.interpret,
                       name=self.name, allow_untrained_elements=self.allow_untrained_elements)  # fmt: skip
        return PaiNNStudent(self.config, params, **(options | changes))

    def with_untrained_elements(self, allowed: bool = True) -> "PaiNNStudent":
        """The same model, whose host calls accept (``allowed``) or refuse elements it was not trained on."""
        return self._same_model(self.params, allow_untrained_elements=allowed)

    def check_elements(self, atomic_numbers) -> None:
        """Raises ValueError if ``atomic_numbers`` [N] holds an element this model was not trained on
        (unless ``allow_untrained_elements``). Host calls do this themselves; code under ``jax.jit``
        is never checked, so call this once on the host before."""
        if not self.allow_untrained_elements:
            elements_lib.check_trained_elements(atomic_numbers, self.config.elements, self._display_name())

    @property
    def allow_untrained_elements(self) -> bool:
        return self._allow_untrained_elements

    @allow_untrained_elements.setter
    def allow_untrained_elements(self, allowed: bool) -> None:
        # The host path's table of allowed elements, and the atomic numbers its plans checked, follow.
        self._allow_untrained_elements = bool(allowed)
        self._allowed_z = self._allowed_elements_table()
        self._molecule_plans.clear()

    def _allowed_elements_table(self) -> np.ndarray:
        """[max_z + 2] bool: which atomic numbers a host call accepts (1..max_z, and trained unless
        allow_untrained_elements). Index 0 and the last entry are False, so a lookup with
        ``mode="clip"`` also refuses Z < 1 and Z > max_z: the whole element check is one ``take``."""
        table = np.zeros(self.config.max_z + 2, bool)
        table[1 : self.config.max_z + 1] = True
        if not self.allow_untrained_elements and self.config.elements is not None:
            trained = np.zeros_like(table)
            trained[[z for z in self.config.elements if 0 < z <= self.config.max_z]] = True
            table &= trained
        return table

    def _display_name(self) -> str:
        return repr(self.name) if self.name else f"PaiNNStudent(hidden_dim={self.config.hidden_dim}, num_interactions={self.config.num_interactions})"

    def compress(self, spacing: float | None = None) -> "PaiNNStudent":
        """A copy whose radial filter networks are replaced by exact-derivative cubic Hermite tables
        (see :mod:`mlff_jax.compress`; default spacing from the measured error curve). The tables are
        built in float64 whatever the model's dtype and JAX's 64-bit setting, then cast to the dtype."""
        from mlff_jax.compress import DEFAULT_SPACING, compress_params

        tables = compress_params(self.params, self.config, DEFAULT_SPACING if spacing is None else spacing)
        return self._same_model(tables)

    # ----------------------------------------------------------------- message-passing implementation
    def with_implementation(self, implementation: str, interpret: bool = False) -> "PaiNNStudent":
        """The same model whose message passing runs on ``implementation`` ("auto" | "xla" | "pallas" |
        "triton"; ``interpret``: Pallas interpret mode). See :mod:`mlff_jax.implementation`."""
        return self._same_model(self.params, implementation=implementation, interpret=interpret)

    def message_implementation(self, num_atoms: int) -> str:
        """What runs the message passing for a system of ``num_atoms`` (padded) atoms: "xla" | "pallas" | "triton"."""
        from mlff_jax.compress import is_compressed

        return implementation_lib.choose(self.implementation, num_atoms, self.dtype, self.precision, is_compressed(self.params), self.config.hidden_dim)

    # ----------------------------------------------------------------- pure functions
    def _batched_energy_and_forces(self, params, positions, atomic_numbers, atom_mask, batch, num_structures, method="analytic"):
        implementation = self.message_implementation(positions.shape[0])
        return evaluation.batched_energy_and_forces(params, self.config, self.precision, implementation, self.interpret, positions, atomic_numbers,
                                                    atom_mask, batch, num_structures, method)  # fmt: skip

    def _packed_energy_and_forces(self, params, packed, num_structures, method="analytic"):
        """The host call's program: one input array, one output array (each host<->device transfer
        costs tens of µs, as much as a small molecule's evaluation).

        packed: [N, 5] in the model's dtype: x, y, z (Å), atomic number, structure index (-1 for
        padding atoms). Returns [B + 3N]: energies, then forces flattened.
        """
        structure = packed[:, 4]
        atom_mask = structure >= 0
        batch = jnp.where(atom_mask, structure, 0).astype(jnp.int32)
        energies, forces = self._batched_energy_and_forces(params, packed[:, :3], packed[:, 3].astype(jnp.int32), atom_mask, batch, num_structures, method)
        return jnp.concatenate([energies.astype(forces.dtype), jnp.reshape(forces, (-1,))])

    def energy_fn(self, positions: jax.Array, atomic_numbers: jax.Array, neighbors=None, cell=None) -> jax.Array:
        """Energy (eV, scalar) of one structure as a pure JAX function, for ``jax.grad``/``vmap``/``jit``.

        positions: [N, 3] Å; atomic_numbers: [N] int. No validation or padding happens here (no
        untrained-element check either: see :meth:`check_elements`).
        Wrapped in ``jax.custom_vjp`` (:func:`mlff_jax.analytic.structure_energies`): ``jax.grad``
        of it runs the analytic sweep and returns minus the analytic forces.
        neighbors: optional :class:`mlff_jax.neighbors.NeighborList` (periodic systems, MD with a
        Verlet skin): edges come from it; ``cell`` ([3, 3] Å) overrides its cell, e.g. strained.
        With a batched list, the energies of all structures are summed.
        """
        positions = jnp.asarray(positions, DTYPES[self.dtype])
        n = positions.shape[0]
        kernel = self.message_implementation(n)
        if neighbors is not None:
            cells = neighbors.cells if cell is None else jnp.broadcast_to(jnp.asarray(cell), neighbors.cells.shape)
            energies = periodic.structure_energies(self.params, self.config, PRECISIONS[self.precision], positions, jnp.asarray(atomic_numbers),
                                                   neighbors, cells.astype(positions.dtype), neighbors.atom_mask, neighbors.spec.num_structures,
                                                   implementation=kernel, interpret=self.interpret)  # fmt: skip
            return jnp.sum(energies)
        mask = jnp.ones(n, bool)
        batch = jnp.zeros(n, jnp.int32)
        if kernel != "xla":
            return implementation_lib.all_pairs_structure_energies(self.params, self.config, positions, jnp.asarray(atomic_numbers), mask, batch, 1,
                                                                   kernel, self.interpret, self.precision)[0]  # fmt: skip
        graph = all_pairs_graph(mask, batch, positions.dtype, default_accumulation())
        return analytic.structure_energies(
            self.params, self.config, positions, jnp.asarray(atomic_numbers), graph, mask, batch, 1, PRECISIONS[self.precision]
        )[0]

    # ----------------------------------------------------------------- host API
    def energy_and_forces(self, positions, atomic_numbers, batch=None, cell=None, pbc=None, method: str = "analytic", devices=None):
        """Energy and forces of one structure, or of a batch of structures.

        Args:
          positions: [N, 3] Å, anywhere: each structure is moved near the origin (periodic ones
            wrapped into their cell) in float64 before the cast to the model's dtype, so float32
            results do not depend on where it sits (:func:`mlff_jax.evaluation.prepare_positions`).
            Under ``jax.jit`` the positions arrive as they are: keep traced float32 coordinates
            within ~1e3 Å of the origin (their rounding, ~6e-8 x |x|, enters every edge vector).
          atomic_numbers: [N] int, 1 <= Z <= config.max_z, and among ``config.elements`` (the
            elements the model was trained on) unless ``allow_untrained_elements``.
          batch: optional [N] int, structure index of each atom (0 .. B-1); structures never interact.
          cell: optional [3, 3] Å (rows are cell vectors, ASE's convention), or [B, 3, 3] with a batch.
          pbc: three bools (shared by the batch); default: periodic in every direction iff a cell
            is given. Periodic images within the cutoff interact; atoms may lie outside the cell.
          method: ``"analytic"`` (default: one forward and one hand-derived backward sweep, see
            docs/analytic-forces.md) or ``"autodiff"`` (``jax.grad`` of the energy).
          devices: several devices (docs/multi-gpu.md): None (default) spreads batches of >= 2
            structures over all visible devices when there are several; an int n (the first n) or
            a list of devices also decomposes a single periodic structure in slabs.
        Returns:
          (energy, forces): energy in eV, a scalar, or [B] per-structure energies when ``batch`` is
          given; forces [N, 3] eV/Å. NumPy values from a host call; JAX arrays under ``jax.jit``.

        Compilation: on the host, N is padded to ``bucket_size(N)`` (8, 12, 16, 24, 32, 48, ...) and B
        to a power of two; one program is compiled per (atoms bucket, structures bucket) and reused.
        Padding atoms have no edges and zero energy, so they change nothing. Under ``jax.jit`` the
        call is traced at the given shapes instead, and neither validated nor checked for untrained
        elements (call :meth:`check_elements` on the host first).
        """
        if batch is None and cell is None and pbc is None and devices is None:
            result = self._molecule_fast_path(positions, atomic_numbers, method)
            if result is not None:
                return result
        evaluation.check_method(method)
        if _is_traced(positions, atomic_numbers, batch):
            if cell is not None or pbc is not None:
                raise ValueError("periodic cells need a neighbour list under jax.jit: use energy_fn(positions, Z, neighbors=nbrs) "
                                 "with mlff_jax.neighbors.neighbor_list_fn")
            return self._traced_energy_and_forces(positions, atomic_numbers, batch, method)
        single = batch is None
        positions, atomic_numbers, batch, num_structures = self._validate(positions, atomic_numbers, batch)
        # Near the origin (and into the cell) in float64 before any cast: see evaluation.prepare_positions.
        positions = evaluation.prepare_positions(positions, batch, num_structures, cell, pbc)
        # --- several devices (mlff_jax.parallel): None when the one-device path below applies ---
        if evaluation.uses_devices(devices, single, num_structures):
            from mlff_jax import parallel

            result = parallel.dispatch(self, positions, atomic_numbers, batch, num_structures, single, cell, pbc, method, devices)
            if result is not None:
                return result
        # --- end of the multi-device branch ---
        n = positions.shape[0]
        if evaluation.uses_neighbor_list(n, cell, pbc):
            energies, forces, _ = self._neighbor_evaluate(positions, atomic_numbers, batch, num_structures, cell, pbc, False, method)
            return (energies[0], forces) if single else (energies, forces)
        n_pad = bucket_size(n)
        b_pad = evaluation.structures_bucket(num_structures)
        # Structure indices travel as floats: exact below 2^24 (float32).
        if num_structures > 2**24:
            raise ValueError(f"at most 2^24 structures per call, got {num_structures}: split the batch")
        packed = evaluation.pack_molecules(positions, atomic_numbers, batch, n_pad, DTYPES[self.dtype], self.config.cutoff)
        # One host->device and one device->host transfer; slicing off the padding happens in NumPy.
        out = self._run_program(self._executable(n_pad, b_pad, method), packed)
        if out is None:  # the params changed layout since compiling: compiled again for them
            out = self._run_program(self._executable(n_pad, b_pad, method), packed)
        energies, forces = out[:b_pad], out[b_pad:].reshape(n_pad, 3)
        if single:
            return energies[0], forces[:n]
        return energies[:num_structures], forces[:n]

    def _executable(self, num_padded: int, structures_padded: int, method: str):
        """The compiled all-pairs host program for packed input [num_padded, 5] and
        ``structures_padded`` structures, compiled ahead of time on first use, then reused."""
        key = (num_padded, structures_padded, method)
        executable = self._executables.get(key)
        if executable is None:
            signature = _params_signature(self.params)
            if signature != self._compiled_params_signature:  # every cached program is for the same params layout
                self._forget_programs()
                self._compiled_params_signature = signature
            packed = jax.ShapeDtypeStruct((num_padded, 5), DTYPES[self.dtype])
            executable = self._jitted.lower(self.params, packed, num_structures=structures_padded, method=method).compile()
            self._executables[key] = executable
        return executable

    def _forget_programs(self) -> None:
        self._executables.clear()
        self._molecule_plans.clear()

    def _run_program(self, executable, packed: np.ndarray) -> np.ndarray | None:
        """The program's output [B + 3N] on ``self.params`` as NumPy, or None (and every cached
        program dropped) when ``self.params`` no longer has the structure and dtypes the program
        was compiled for: a compiled program refuses them, where jit would have traced anew."""
        try:
            return np.asarray(executable(self.params, packed))
        except TypeError:
            if _params_signature(self.params) == self._compiled_params_signature:
                raise  # not the params: a genuine error
            self._forget_programs()
            return None

    def _molecule_fast_path(self, positions, atomic_numbers, method):
        """``energy_and_forces(R, Z)`` of one molecule, or None to take the general path.

        The same computation as the general path (validation, float64 centring, padding, the
        same compiled program), with every per-call decision made once per (N, method) and the
        checks vectorised; the element check runs once per new atomic-numbers array (compared by
        dtype and bytes: exact). Anything unusual (other types or dtypes, NaN, an unknown or
        untrained element, a periodic-size molecule) returns None: the general path then raises
        its own clear error or handles the case, so errors and results are the same either way.
        """
        if type(positions) is not np.ndarray or type(atomic_numbers) is not np.ndarray or method not in evaluation.METHODS:
            return None
        shape = positions.shape
        if len(shape) != 2 or shape[1] != 3 or positions.dtype != np.float64 or atomic_numbers.shape != shape[:1]:
            return None
        n = shape[0]
        plan = self._molecule_plans.get((n, method))
        if plan is None or atomic_numbers.dtype != plan.z_dtype or atomic_numbers.tobytes() != plan.z_bytes:
            plan = self._molecule_plan(n, method, atomic_numbers)
            if plan is None:
                return None
        # Column sums: their total is finite iff every coordinate is (a NaN or inf anywhere reaches
        # it; a sum of finite values that overflows only sends the call to the general path).
        sums = np.add.reduce(positions, axis=0)
        if not math.isfinite(sum(sums.tolist())):
            return None
        packed = plan.packed.copy()  # a fresh buffer: another thread's call may be using the previous one
        # Centroid at the origin in float64, then the cast on writing: bit for bit evaluation.prepare_positions.
        np.subtract(positions, sums / n, out=packed[:n, :3])
        out = self._run_program(plan.executable, packed)
        if out is None:
            return None
        return out[0], out[1:].reshape(plan.num_padded, 3)[:n]

    def _molecule_plan(self, n: int, method: str, atomic_numbers: np.ndarray):
        """The fast path's plan for n atoms and these (integer, allowed) atomic numbers, made and
        cached, or None: not an all-pairs size, or atomic numbers the general path must judge."""
        key = (n, method)
        plan = self._molecule_plans.get(key)
        if plan is None and (key in self._molecule_plans or n == 0 or evaluation.uses_neighbor_list(n, None, None)):
            self._molecule_plans.setdefault(key, None)
            return None
        if atomic_numbers.dtype.kind != "i" or not self._allowed_z.take(atomic_numbers, mode="clip").all():
            return None
        if plan is None:
            n_pad = bucket_size(n)
            executable = self._executable(n_pad, 1, method)
            template = evaluation.packed_template(n, n_pad, DTYPES[self.dtype], self.config.cutoff)
        else:
            executable, template, n_pad = plan.executable, plan.packed, plan.num_padded
        packed = template.copy()
        packed[:n, 3] = atomic_numbers
        # One immutable record, replaced whole: a thread never sees a half-updated plan.
        plan = self._molecule_plans[key] = _MoleculePlan(executable, packed, n_pad, atomic_numbers.dtype, atomic_numbers.tobytes())
        return plan

    def energy_forces_stress(self, positions, atomic_numbers, batch=None, cell=None, pbc=None, method: str = "analytic"):
        """Energy, forces and stress of a periodic structure (or a batch), host call.

        Arguments as :meth:`energy_and_forces` (a cell is required). Returns (energy eV, forces
        [N, 3] eV/Å, stress [3, 3] eV/Å^3), or [B], [N, 3], [B, 3, 3] with a batch. The stress is
        ASE's: (1 / V) dE/d(strain), symmetrised (see :mod:`mlff_jax.periodic`).
        """
        if cell is None:
            raise ValueError("stress needs a cell")
        single = batch is None
        positions, atomic_numbers, batch, num_structures = self._validate(positions, atomic_numbers, batch)
        positions = evaluation.prepare_positions(positions, batch, num_structures, cell, pbc)
        energies, forces, stress = self._neighbor_evaluate(positions, atomic_numbers, batch, num_structures, cell, pbc, True, method)
        return (energies[0], forces, stress[0]) if single else (energies, forces, stress)

    def _neighbor_evaluate(self, positions, atomic_numbers, batch, num_structures, cell, pbc, compute_stress, method="analytic"):
        """Padded evaluation with edges from a neighbour list; returns unpadded energies, forces, stress."""
        n = positions.shape[0]
        n_pad = bucket_size(n)
        b_pad = evaluation.structures_bucket(num_structures)
        pos = np.zeros((n_pad, 3))
        pos[:n] = positions
        z = np.ones(n_pad, np.int32)
        z[:n] = atomic_numbers
        mask = np.arange(n_pad) < n
        b = np.zeros(n_pad, np.int64)
        b[:n] = batch
        energies, forces, stress = periodic.evaluate(self, PRECISIONS[self.precision], pos, z, mask, b, b_pad, cell, pbc, compute_stress,
                                                     self._neighbor_specs, method, implementation=self.message_implementation(n_pad))
        return energies[:num_structures], forces[:n], stress

    def _traced_energy_and_forces(self, positions, atomic_numbers, batch, method="analytic"):
        positions = jnp.asarray(positions, DTYPES[self.dtype])
        n = positions.shape[0]
        if positions.shape != (n, 3) or jnp.shape(atomic_numbers) != (n,):
            raise ValueError(f"positions must be [N, 3] and atomic_numbers [N]; got {positions.shape} and {jnp.shape(atomic_numbers)}")
        mask = jnp.ones(n, bool)
        if batch is None:
            energies, forces = self._batched_energy_and_forces(self.params, positions, atomic_numbers, mask, jnp.zeros(n, jnp.int32), 1, method)
            return energies[0], forces
        raise ValueError("a batch index cannot be traced: the number of structures must be static; call outside jax.jit")

    def _validate(self, positions, atomic_numbers, batch):
        positions = np.asarray(positions, dtype=np.float64)
        if positions.ndim != 2 or positions.shape[1] != 3 or positions.shape[0] == 0:
            raise ValueError(f"positions must have shape [N, 3] with N >= 1, got {list(positions.shape)}")
        n = positions.shape[0]
        if not np.all(np.isfinite(positions)):
            bad = np.unique(np.nonzero(~np.isfinite(positions))[0])
            raise ValueError(f"positions contain NaN or inf (atoms {bad[:10].tolist()})")
        z = np.asarray(atomic_numbers)
        if z.shape != (n,):
            raise ValueError(f"atomic_numbers must have shape [N] = [{n}] to match positions, got {list(z.shape)}")
        if z.dtype.kind == "f":
            if not np.all(np.isfinite(z)) or np.any(z != np.round(z)):
                raise ValueError("atomic_numbers must be integers")
        elif z.dtype.kind not in "iu":
            raise ValueError(f"atomic_numbers must be integers, got dtype {z.dtype}")
        z = z.astype(np.int64)
        unknown = (z < 1) | (z > self.config.max_z)
        if np.any(unknown):
            raise ValueError(
                f"unknown element: atomic number(s) {sorted(set(z[unknown].tolist()))} outside 1..{self.config.max_z} "
                f"(atoms {np.nonzero(unknown)[0][:10].tolist()})"
            )
        self.check_elements(z)
        if batch is None:
            return positions, z, np.zeros(n, np.int64), 1
        batch = np.asarray(batch)
        if batch.shape != (n,) or batch.dtype.kind not in "iu":
            raise ValueError(f"batch must be an integer array of shape [N] = [{n}], got {list(batch.shape)} {batch.dtype}")
        if np.any(batch < 0):
            raise ValueError("batch indices must be >= 0")
        return positions, z, batch.astype(np.int64), int(batch.max()) + 1
