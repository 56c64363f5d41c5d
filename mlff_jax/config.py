"""Hyper-parameters of a PaiNN student (static: they decide array shapes)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

DEFAULT_CUTOFF = 5.0  # Å; every trained upstream model uses 5.0, and it cannot be inferred from weights
# Architecture options (docs/model.md). The first entry of each is upstream's behaviour (the default).
FILTER_ENVELOPES = (None, "polynomial")  # None: W(e(d)) as upstream; "polynomial": env(d) W(e(d)), C² zero at rc
VECTOR_MIXINGS = ("cartesian", "channels", "none")  # v's second update term: M v (3 x 3 on xyz), v C (H x H), or none


@dataclasses.dataclass(frozen=True)
class PaiNNConfig:
    """Shape of a PaiNN student.

    Attributes:
      hidden_dim: H, width of scalar and vector features.
      num_interactions: T, number of message + update blocks.
      num_rbf: K, number of Gaussian radial basis functions.
      cutoff: rc in Å; pairs with d <= rc are edges, the cosine cutoff is zero at d >= rc.
      max_z: largest supported atomic number (the embedding has max_z + 1 rows).
      elements: atomic numbers the model was trained on, sorted (``None``: not recorded, nothing is
        refused); host calls refuse any other element (:mod:`mlff_jax.elements`).
      filter_envelope: None (upstream: the filter W(e(d)) is not zero at rc, so the energy steps
        when a pair crosses it) or "polynomial" (W multiplied by env(d) = 1 - 28 x^6 + 48 x^7 - 21 x^8,
        x = d / rc, whose value and first two derivatives vanish at rc: energy and forces continuous).
      vector_mixing: "cartesian" (upstream: v g1 + (M v) g2 with a 3 x 3 matrix M on the xyz axes,
        not rotation invariant), "channels" (v g1 + (v C) g2 with an H x H matrix C on the hidden
        channels, which commutes with rotations) or "none" (v g1).
    """

    hidden_dim: int = 128
    num_interactions: int = 3
    num_rbf: int = 20
    cutoff: float = DEFAULT_CUTOFF
    max_z: int = 100
    elements: tuple[int, ...] | None = None
    filter_envelope: str | None = None
    vector_mixing: str = "cartesian"

    def __post_init__(self):
        for name in ("hidden_dim", "num_interactions", "num_rbf", "max_z"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PaiNNConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_dim % 4:
            raise ValueError(f"PaiNNConfig.hidden_dim must be a multiple of 4 (readout H -> H/2 -> H/4), got {self.hidden_dim}")
        if not (isinstance(self.cutoff, (int, float)) and self.cutoff > 0):
            raise ValueError(f"PaiNNConfig.cutoff must be a positive number of Å, got {self.cutoff!r}")
        object.__setattr__(self, "cutoff", float(self.cutoff))
        if self.elements is not None:
            elements = tuple(self.elements) if isinstance(self.elements, (list, tuple)) else None
            if not elements or any(not isinstance(z, int) or isinstance(z, bool) or not 1 <= z <= self.max_z for z in elements):
                raise ValueError(f"PaiNNConfig.elements must be a non-empty list of atomic numbers in 1..{self.max_z}, got {self.elements!r}")
            object.__setattr__(self, "elements", tuple(sorted(set(elements))))
        if self.filter_envelope not in FILTER_ENVELOPES:
            raise ValueError(f"PaiNNConfig.filter_envelope must be one of {FILTER_ENVELOPES}, got {self.filter_envelope!r}")
        if self.vector_mixing not in VECTOR_MIXINGS:
            raise ValueError(f"PaiNNConfig.vector_mixing must be one of {VECTOR_MIXINGS}, got {self.vector_mixing!r}")

    @property
    def is_upstream_architecture(self) -> bool:
        """True when the options are upstream's (no envelope, Cartesian mixing)."""
        return self.filter_envelope is None and self.vector_mixing == "cartesian"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PaiNNConfig":
        """Builds a config from a mapping, ignoring keys that are not hyper-parameters
        (upstream configs also carry e.g. ``cutoff_fn`` and ``use_torch_cluster``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: values[k] for k in names if k in values}
        for key in ("hidden_dim", "num_interactions", "num_rbf", "max_z"):
            if key in kwargs:
                kwargs[key] = int(kwargs[key])
        return cls(**kwargs)

    @property
    def num_parameters(self) -> int:
        """Trainable parameters, counted as upstream does (rbf buffers excluded)."""
        h, k, t = self.hidden_dim, self.num_rbf, self.num_interactions
        mixing = {"cartesian": 9, "channels": h * h, "none": 0}[self.vector_mixing]
        per_block = (k * h + h) + (h * 3 * h + 3 * h) + (2 * h * h + h) + (h * 3 * h + 3 * h) + mixing
        readout = (h * (h // 2) + h // 2) + ((h // 2) * (h // 4) + h // 4) + (h // 4 + 1)
        return (self.max_z + 1) * h + t * per_block + readout
