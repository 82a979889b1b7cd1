"""The training objective ``L = L_S + lambda * L_aux`` and the factory that builds it by name."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ferkit.losses.center import CenterLoss, IslandLoss


class LossParts(NamedTuple):
    """The total loss to minimise and its two parts (softmax cross-entropy, auxiliary)."""

    total: torch.Tensor
    softmax: torch.Tensor
    aux: torch.Tensor


class FERLoss(nn.Module):
    """Softmax cross-entropy plus ``lam`` times an optional feature-space loss.

    Called as ``loss(features, logits, targets)`` with the pooled features (N x D), the logits
    (N x K) and int64 class targets (N) -- or soft targets (N x K) that sum to 1 per row.
    """

    def __init__(self, aux: CenterLoss | None = None, lam: float = 0.5, label_smoothing: float = 0.0):
        super().__init__()
        self.aux = aux
        self.lam = lam
        self.label_smoothing = label_smoothing

    def forward(self, features: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> LossParts:
        ce = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        if self.aux is None:
            return LossParts(ce, ce.detach(), torch.zeros((), device=ce.device))
        hard = targets if targets.ndim == 1 else targets.argmax(dim=1)
        aux = self.aux(features, hard)
        return LossParts(ce + self.lam * aux, ce.detach(), aux.detach())


LOSSES = ("softmax", "center", "island")


def create_loss(
    name: str,
    num_classes: int = 7,
    feat_dim: int = 512,
    lam: float = 0.5,
    lambda1: float = 10.0,
    label_smoothing: float = 0.0,
    normalize: bool = False,
) -> FERLoss:
    """Build the objective ``name`` (``softmax``, ``center`` or ``island``); ``normalize`` puts the
    center term on unit-length features and centers (see :class:`CenterLoss`)."""
    if name == "softmax":
        aux = None
    elif name == "center":
        aux = CenterLoss(num_classes, feat_dim, normalize)
    elif name == "island":
        aux = IslandLoss(num_classes, feat_dim, lambda1, normalize)
    else:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    return FERLoss(aux, lam, label_smoothing)
