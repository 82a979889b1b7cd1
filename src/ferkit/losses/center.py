"""Center loss (Wen et al. 2016) and island loss (Cai et al. 2018) on the pooled features."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CenterLoss(nn.Module):
    """``L_C = 1/2 * mean_i ||x_i - c_{y_i}||^2``: pulls each feature to its class center.

    With ``normalize`` the features and centers are scaled to unit length first, so
    ``L_C = mean_i (1 - cos(x_i, c_{y_i}))`` lies in [0, 2], the scale of the softmax loss. On raw
    512-d features (Wen et al.'s form) the term is in the hundreds and is met most cheaply by
    shrinking every feature, which stalled training at the paper's lambda = 0.5.

    The centers are parameters of this module, so the trainer can give them their own
    optimizer group and learning rate (Wen et al.'s alpha).
    """

    def __init__(self, num_classes: int, feat_dim: int, normalize: bool = False):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim) * 0.1)
        self.normalize = normalize

    def center_term(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The center-loss value for a batch, averaged over the batch."""
        centers = self.centers[targets]
        if self.normalize:
            features, centers = F.normalize(features, dim=1), F.normalize(centers, dim=1)
        return 0.5 * (features - centers).pow(2).sum(dim=1).mean()

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.center_term(features, targets)


class IslandLoss(CenterLoss):
    """``L_island = L_C + lambda1 * sum_{j != k} (cos(c_j, c_k) + 1)`` over ordered pairs of centers.

    Each pair term lies in [0, 2]; lowering it pushes the class centers apart.
    """

    def __init__(self, num_classes: int, feat_dim: int, lambda1: float = 10.0, normalize: bool = False):
        super().__init__(num_classes, feat_dim, normalize)
        self.lambda1 = lambda1

    def pair_term(self) -> torch.Tensor:
        """``sum_{j != k} (cos(c_j, c_k) + 1)`` over ordered pairs."""
        unit = F.normalize(self.centers, dim=1)
        cos = unit @ unit.t()
        off_diagonal = ~torch.eye(len(cos), dtype=torch.bool, device=cos.device)
        return (cos[off_diagonal] + 1).sum()

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.center_term(features, targets) + self.lambda1 * self.pair_term()
