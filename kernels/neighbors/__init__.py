"""Cell-list neighbour gather: plain-XLA reference and a fused Pallas kernel (see ``api``)."""

from .api import IMPLEMENTATIONS, gather_neighbors

__all__ = ["IMPLEMENTATIONS", "gather_neighbors"]
