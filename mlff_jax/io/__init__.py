"""Checkpoint reading (every upstream layout) and writing (our safetensors format)."""

from mlff_jax.io.checkpoint import read_checkpoint, write_checkpoint
from mlff_jax.io.torch_pickle import read_torch_checkpoint

__all__ = ["read_checkpoint", "write_checkpoint", "read_torch_checkpoint"]
