"""Several devices (GPUs of a host, or of several hosts): batches and large systems.

    from mlff_jax import parallel
    energies, forces = model.energy_and_forces(R, Z, batch=b)              # all visible devices (data parallel)
    energy, forces = parallel.decomposed_energy_and_forces(model, R, Z, cell)  # one large periodic system in slabs
    sim = parallel.domain_nve(model, cell, timestep=0.5, skin=0.5)             # compiled MD, atoms migrate between slabs

Built on ``jax.sharding`` (a 1-D mesh of the devices) and ``shard_map``; multi-host runs call
``jax.distributed.initialize()`` first and run the same code (see docs/multi-gpu.md).
"""

import numpy as np

from mlff_jax.parallel.batch import PreparedBatch, balance_by_atoms, plan_shards, prepare_batch, sharded_energy_and_forces
from mlff_jax.parallel.domain import DomainLayout, DomainSpec
from mlff_jax.parallel.domain_md import DomainNVE, DomainState, assemble, decomposed_energy_and_forces, domain_nve
from mlff_jax.parallel.mesh import AXIS, device_mesh, resolve_devices, shard_map

__all__ = [
    "AXIS",
    "DomainLayout",
    "DomainNVE",
    "DomainSpec",
    "DomainState",
    "assemble",
    "balance_by_atoms",
    "decomposed_energy_and_forces",
    "device_mesh",
    "dispatch",
    "domain_nve",
    "plan_shards",
    "prepare_batch",
    "PreparedBatch",
    "resolve_devices",
    "shard_map",
    "sharded_energy_and_forces",
]


def dispatch(model, positions, atomic_numbers, batch, num_structures, single, cell, pbc, method, devices):
    """The multi-device path of ``PaiNNStudent.energy_and_forces``, or None for the one-device path.

    devices=None: all visible devices, used for batches of >= 2 structures when more than one is
    visible. devices=n or a device list: batches are sharded; a single periodic structure is
    decomposed in slabs. One device (or a single non-periodic structure): None.
    """
    import jax

    if devices is None and (single or num_structures < 2 or jax.device_count() < 2):
        return None
    devs = resolve_devices(devices)
    if len(devs) < 2:
        return None
    if not single and num_structures >= 2:
        return sharded_energy_and_forces(model, positions, atomic_numbers, batch, num_structures, cell, pbc, method, devs)
    if cell is not None and num_structures == 1:
        energy, forces = decomposed_energy_and_forces(model, positions, atomic_numbers, cell, pbc, devs, method)
        return (energy, forces) if single else (np.asarray([energy]), forces)
    return None

