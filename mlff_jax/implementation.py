"""Which code runs the message passing: the XLA path or the fused kernels, chosen by measurement.

    model = mlff_jax.load(path, implementation="auto")        # or "xla" | "pallas" | "triton"
    model = model.with_implementation("pallas", interpret=True)   # CPU tests: Pallas interpret mode

``"xla"`` is the model's own code (:mod:`mlff_jax.painn` / :mod:`mlff_jax.analytic`); ``"pallas"`` and
``"triton"`` run every block's message step through the fused kernels of
:mod:`mlff_jax.kernels.message_passing` (update and readout stay XLA; forces come from the kernels'
fused backward), on the dense neighbour layout: all pairs for molecules, the neighbour list's rows
for periodic and large systems. A compressed model (``model.compress()``) keeps its tables inside the
kernels.

``"auto"`` looks the workload up in ``kernels_choice.json`` (next to this file), a table generated
from benchmark results by ``benchmarks/make_kernels_choice.py``: for each device kind (e.g.
"NVIDIA H100 80GB HBM3") and workload class (dtype, precision, exact or compressed, hidden width,
size class of the system) the implementations ranked by measured time. The first one installed
wins; anything not in the table (every CPU, unmeasured GPUs, sizes or models) gets ``"xla"``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "pallas", "triton")
CHOICE_FILE = pathlib.Path(__file__).with_name("kernels_choice.json")
# Size classes of a workload by (padded) atom count: (name, largest atom count). Measured systems
# fall in one class each: molecules (12-192 atoms), water boxes of ~1k, ~10k and ~100k atoms.
SIZE_CLASSES = (("small", 300), ("1k", 3000), ("10k", 30000), ("100k", None))
# The model's float32 matmul precision -> the kernels' mode (mlff_jax.kernels.message_passing.reference.matmul).
KERNEL_PRECISION = {"highest": "highest", "high": "tf32x3", "default": "tf32"}


def check(implementation: str, interpret: bool = False) -> None:
    """Raises ValueError if ``implementation`` is unknown or cannot run here."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "triton":
        if interpret:
            raise ValueError("interpret=True runs the Pallas kernels only: use implementation='pallas'")
        if not triton_available():
            raise ValueError("implementation='triton' needs jax-triton and triton, which install only on a Linux machine with an "
                             "NVIDIA GPU: pip install 'mlff-jax[triton]' (jax-triton 0.3.1 works with triton 3.6)")  # fmt: skip
    if implementation == "pallas" and not interpret and jax.default_backend() != "gpu":
        raise ValueError(f"implementation='pallas' compiles Triton kernels for an NVIDIA GPU, but JAX's backend is "
                         f"{jax.default_backend()!r}: use 'xla', or interpret=True (Pallas interpret mode: slow, for tests)")  # fmt: skip


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("jax_triton") is not None and importlib.util.find_spec("triton") is not None


def size_class(num_atoms: int) -> str:
    for name, largest in SIZE_CLASSES:
        if largest is None or num_atoms <= largest:
            return name
    raise AssertionError  # pragma: no cover


def workload_key(dtype: str, precision: str, compressed: bool, hidden_dim: int, num_atoms: int) -> str:
    """The table's key of one workload, e.g. ``"float32/highest/exact/H128/10k"``."""
    return f"{dtype}/{precision}/{'compressed' if compressed else 'exact'}/H{hidden_dim}/{size_class(num_atoms)}"


@functools.cache
def load_choices(path: str | None = None) -> dict:
    """{device kind: {workload key: [implementations, fastest first]}} from the committed table."""
    path = pathlib.Path(path) if path else CHOICE_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text())["choices"]


def device_kind() -> str:
    device = jax.devices()[0]
    return device.device_kind if device.platform == "gpu" else device.platform


def choose(implementation: str, num_atoms: int, dtype: str, precision: str, compressed: bool, hidden_dim: int, choices: dict | None = None) -> str:
    """The implementation that runs: ``implementation`` itself, or for ``"auto"`` the fastest measured
    one for this device and workload that is installed here ("xla" when nothing was measured)."""
    if implementation != "auto":
        return implementation
    if jax.default_backend() != "gpu":
        return "xla"
    choices = load_choices() if choices is None else choices
    ranking = choices.get(device_kind(), {}).get(workload_key(dtype, precision, compressed, hidden_dim, num_atoms), ["xla"])
    for name in ranking:
        if name == "xla" or name == "pallas" or (name == "triton" and triton_available()):
            return name
    return "xla"


# ----------------------------------------------------------------------------- pure kernel-path energies
def all_pairs_neighbors(atom_mask: jax.Array, batch: jax.Array) -> jax.Array:
    """Dense all-pairs layout [N, N] int32: slot j of row b holds j when b != j are real atoms of the
    same structure, else N (empty). A full list, as the kernels' backward needs."""
    n = atom_mask.shape[0]
    j = jnp.arange(n, dtype=jnp.int32)
    keep = (j[:, None] != j[None, :]) & atom_mask[:, None] & atom_mask[None, :] & (batch[:, None] == batch[None, :])
    return jnp.where(keep, j[None, :], n).astype(jnp.int32)


def kernel_atomic_energies(params, config, positions, atomic_numbers, neighbors, shifts, atom_mask, batch, implementation, interpret, precision):
    """Per-atom energies [N] eV through the fused kernels on dense neighbour rows [N, C] (N: empty
    slot) with Cartesian image shifts [N, C, 3] Å; precision: the model's name ("highest" ...)."""
    from mlff_jax.kernels.message_passing.model import atomic_energies_kernel  # noqa: PLC0415 (Pallas imports only when used)

    return atomic_energies_kernel(params, config, positions, atomic_numbers, neighbors, shifts, atom_mask, batch,
                                  implementation=implementation, interpret=interpret, precision=KERNEL_PRECISION[precision])  # fmt: skip


def all_pairs_structure_energies(params, config, positions, atomic_numbers, atom_mask, batch, num_structures, implementation, interpret, precision):
    """Per-structure energies [B] eV of (padded) molecules, every pair within the cutoff, through the kernels.

    positions: [N, 3] Å; atomic_numbers, atom_mask, batch: [N]; precision: the model's name.
    """
    n = positions.shape[0]
    neighbors = all_pairs_neighbors(atom_mask, batch)
    shifts = jnp.zeros((n, n, 3), positions.dtype)
    per_atom = kernel_atomic_energies(params, config, positions, atomic_numbers, neighbors, shifts, atom_mask, batch, implementation, interpret, precision)
    return jax.ops.segment_sum(per_atom, batch, num_structures)


def neighbor_list_structure_energies(params, config, positions, atomic_numbers, nbrs, cells, atom_mask, num_structures, implementation, interpret, precision):
    """Per-structure energies [B] eV with the slots of a :class:`mlff_jax.neighbors.NeighborList`
    (periodic or not; ``cells`` [B, 3, 3] Å may be strained: the shifts follow them)."""
    shifts = nbrs.cartesian_shifts(cells).astype(positions.dtype)
    per_atom = kernel_atomic_energies(params, config, positions, atomic_numbers, nbrs.idx, shifts, atom_mask, nbrs.batch, implementation, interpret,
                                       precision)  # fmt: skip
    return jax.ops.segment_sum(per_atom, nbrs.batch, num_structures)


def all_pairs_energies_and_forces(params, config, positions, atomic_numbers, atom_mask, batch, num_structures, implementation, interpret, precision):
    """(energies [B] eV, forces [N, 3] eV/Å) of padded molecules through the kernels (forces: the
    kernels' fused backward under ``jax.grad``)."""

    def total(pos):
        energies = all_pairs_structure_energies(params, config, pos, atomic_numbers, atom_mask, batch, num_structures, implementation, interpret, precision)
        return jnp.sum(energies), energies

    grad, energies = jax.grad(total, has_aux=True)(positions)
    return energies, -grad
