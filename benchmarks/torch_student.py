"""A PyTorch implementation of the PaiNN student: the upstream-style baseline for benchmarks.

Written from the model specification (shared/design/painn-student.md), not copied from upstream. It
loads the same checkpoints (``torch.load`` of a model save or bare state_dict) and computes energy
and autograd forces, eagerly or through ``torch.compile``. Only the benchmarks use it; the package
never imports torch.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TorchPaiNN(nn.Module):
    def __init__(self, hidden: int, num_interactions: int, num_rbf: int, cutoff: float = 5.0, max_z: int = 100):
        super().__init__()
        self.hidden, self.cutoff = hidden, cutoff
        self.embedding = nn.Embedding(max_z + 1, hidden)
        self.register_buffer("centers", torch.linspace(0, cutoff, num_rbf))
        self.register_buffer("widths", torch.full((num_rbf,), cutoff / num_rbf))
        self.filters = nn.ModuleList(
            nn.Sequential(nn.Linear(num_rbf, hidden), nn.SiLU(), nn.Linear(hidden, 3 * hidden)) for _ in range(num_interactions)
        )
        self.updates = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, 3 * hidden)) for _ in range(num_interactions)
        )
        self.mixing = nn.ParameterList(nn.Parameter(torch.eye(3)) for _ in range(num_interactions))
        self.head = nn.Sequential(
            nn.Linear(hidden, hidden // 2), nn.SiLU(), nn.Linear(hidden // 2, hidden // 4), nn.SiLU(), nn.Linear(hidden // 4, 1)
        )

    @classmethod
    def from_checkpoint(cls, path: str) -> "TorchPaiNN":
        obj = torch.load(path, map_location="cpu", weights_only=False)
        state = obj.get("model_state_dict", obj)
        state = {k.removeprefix("model."): v for k, v in state.items()}
        hidden = state["embedding.weight"].shape[1]
        blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("interactions."))
        model = cls(hidden, blocks, state["rbf.centers"].shape[0], max_z=state["embedding.weight"].shape[0] - 1)
        ours = {"embedding.weight": state["embedding.weight"], "centers": state["rbf.centers"], "widths": state["rbf.widths"]}
        for t in range(blocks):
            for i in (0, 2):
                for leaf in ("weight", "bias"):
                    ours[f"filters.{t}.{i}.{leaf}"] = state[f"interactions.{t}.message.rbf_to_scalar.{i}.{leaf}"]
                    ours[f"updates.{t}.{i}.{leaf}"] = state[f"interactions.{t}.update.update_mlp.{i}.{leaf}"]
            ours[f"mixing.{t}"] = state.get(f"interactions.{t}.update.mixing_matrix", torch.eye(3))
        for i in (0, 2, 4):
            for leaf in ("weight", "bias"):
                ours[f"head.{i}.{leaf}"] = state[f"energy_head.{i}.{leaf}"]
        model.load_state_dict(ours)
        return model

    def forward(self, positions, atomic_numbers, senders, receivers):
        """Energy (scalar) of one structure; edges (senders -> receivers) already within the cutoff."""
        n, h = positions.shape[0], self.hidden
        vec = positions[senders] - positions[receivers]
        d = vec.norm(dim=-1)
        direction = vec / (d + 1e-8).unsqueeze(-1)
        phi = torch.exp(-((d.unsqueeze(-1) - self.centers) ** 2) / self.widths**2)
        fc = torch.where(d < self.cutoff, 0.5 * (torch.cos(math.pi * d / self.cutoff) + 1), torch.zeros_like(d))
        rbf = phi * fc.unsqueeze(-1)
        s = self.embedding(atomic_numbers)
        v = torch.zeros(n, 3, h, dtype=s.dtype, device=s.device)
        for filt, upd, mix in zip(self.filters, self.updates, self.mixing):
            ws, wv1, wv2 = filt(rbf).split(h, dim=-1)
            ds = torch.zeros_like(s).index_add_(0, receivers, s[senders] * ws)
            dv_edge = v[senders] * wv1.unsqueeze(1) + direction.unsqueeze(-1) * wv2.unsqueeze(1)
            dv = torch.zeros_like(v).index_add_(0, receivers, dv_edge)
            s, v = s + ds, v + dv
            sq = torch.sum(v * v, dim=1)
            norm = torch.where(sq > 0, sq.clamp_min(1e-30).sqrt(), torch.zeros_like(sq))  # zero-safe, as the spec
            a, g1, g2 = upd(torch.cat([s, norm], dim=-1)).split(h, dim=-1)
            s = s + a
            v = v * g1.unsqueeze(1) + torch.einsum("ij,njh->nih", mix, v) * g2.unsqueeze(1)
        return self.head(s).sum()


def radius_graph(positions: torch.Tensor, cutoff: float):
    """All ordered pairs within the cutoff (dense distance matrix, as upstream's fallback did)."""
    d = torch.cdist(positions, positions)
    mask = (d <= cutoff) & ~torch.eye(positions.shape[0], dtype=torch.bool, device=positions.device)
    senders, receivers = mask.nonzero(as_tuple=True)
    return senders, receivers


def energy_and_forces(model: TorchPaiNN, positions: torch.Tensor, atomic_numbers: torch.Tensor):
    positions = positions.detach().requires_grad_(True)
    senders, receivers = radius_graph(positions.detach(), model.cutoff)
    energy = model(positions, atomic_numbers, senders, receivers)
    (grad,) = torch.autograd.grad(energy, positions)
    return energy.detach(), -grad
