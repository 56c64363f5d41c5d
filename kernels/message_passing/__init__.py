"""Fused PaiNN message passing: one block's radial filter network, neighbour gather and
accumulation, and its backward (``api.message_block``); a full model on top (``model``)."""

from .api import IMPLEMENTATIONS, message_block
from .layout import all_pairs_dense, dense_to_edges, pairs_to_dense, periodic_dense, reverse_slots, slot_geometry
from .reference import PRECISIONS, message_block_reference

__all__ = [
    "IMPLEMENTATIONS",
    "PRECISIONS",
    "message_block",
    "message_block_reference",
    "all_pairs_dense",
    "dense_to_edges",
    "pairs_to_dense",
    "periodic_dense",
    "reverse_slots",
    "slot_geometry",
]
