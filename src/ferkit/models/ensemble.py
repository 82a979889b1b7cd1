"""Several models of one architecture read as one: their logits averaged."""
from __future__ import annotations

import torch
from torch import nn


class Ensemble(nn.Module):
    """``members`` (same input, same classes) as one model whose logits are the mean of theirs.

    The mean of the logits is the mean of the members' log-probabilities up to a constant per image, so
    the ensemble's softmax is the normalised geometric mean of the members' probabilities.
    ``forward_features`` joins the members' pooled features end to end.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.num_features = sum(getattr(m, "num_features", 0) for m in members)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's pooled feature, joined: N x sum of their num_features."""
        return torch.cat([m.forward_features(x) for m in self.members], dim=1)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        outputs = [m(x, return_features=True) for m in self.members]
        logits = torch.stack([out[1] for out in outputs]).mean(dim=0)
        if return_features:
            return torch.cat([out[0] for out in outputs], dim=1), logits
        return logits
