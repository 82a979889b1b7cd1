"""The training objective ``L = L_S + lambda * L_aux`` and the factory that builds it by name."""
from __future__ import annotations

from typing import Callable, NamedTuple

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
    (N x K) and int64 class targets (N) -- or soft targets (N x K) that sum to 1 per row. ``aux`` is
    called as ``aux(features, hard_targets)`` and returns a scalar; its parameters (the centers) are
    trained with the model. ``class_weights`` (K) weigh each target class's cross-entropy, e.g. by the inverse
    of its frequency so that rare classes count as much as common ones.
    """

    def __init__(self, aux: nn.Module | None = None, lam: float = 0.5, label_smoothing: float = 0.0,
                 class_weights: torch.Tensor | None = None):
        super().__init__()
        self.aux = aux
        self.lam = lam
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", None if class_weights is None else class_weights.float())

    def forward(self, features: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> LossParts:
        ce = F.cross_entropy(logits.float(), targets, weight=self.class_weights, label_smoothing=self.label_smoothing)
        if self.aux is None:
            return LossParts(ce, ce.detach(), torch.zeros((), device=ce.device))
        hard = targets if targets.ndim == 1 else targets.argmax(dim=1)
        aux = self.aux(features, hard)
        return LossParts(ce + self.lam * aux, ce.detach(), aux.detach())


AuxBuilder = Callable[[int, int, float, bool], nn.Module | None]
"""``(num_classes, feat_dim, lambda1, normalize) -> auxiliary term``, or None for softmax alone."""
_LOSSES: dict[str, AuxBuilder] = {}


def register_loss(name: str) -> Callable[[AuxBuilder], AuxBuilder]:
    """Make a builder of the auxiliary term ``L_aux`` usable as ``create_loss(name)``."""

    def add(fn: AuxBuilder) -> AuxBuilder:
        _LOSSES[name] = fn
        return fn

    return add


def list_losses() -> list[str]:
    """Names accepted by ``create_loss`` (and the ``loss`` config key), in the order they were registered."""
    return list(_LOSSES)


def describe_losses() -> dict[str, str]:
    """Each registered loss's name with the first line of its builder's docstring, for help and docs."""
    return {name: ((fn.__doc__ or "").strip().splitlines() or [""])[0] for name, fn in _LOSSES.items()}


@register_loss("softmax")
def _softmax(num_classes: int, feat_dim: int, lambda1: float, normalize: bool) -> None:
    """Cross-entropy alone: no auxiliary term."""
    return None


@register_loss("center")
def _center(num_classes: int, feat_dim: int, lambda1: float, normalize: bool) -> CenterLoss:
    """Center loss (Wen et al. 2016): pulls each feature to its class center."""
    return CenterLoss(num_classes, feat_dim, normalize)


@register_loss("island")
def _island(num_classes: int, feat_dim: int, lambda1: float, normalize: bool) -> IslandLoss:
    """Island loss (Cai et al. 2018): center loss plus ``lambda1`` times the pairwise center cosines."""
    return IslandLoss(num_classes, feat_dim, lambda1, normalize)


def create_loss(
    name: str,
    num_classes: int = 7,
    feat_dim: int = 512,
    lam: float = 0.5,
    lambda1: float = 10.0,
    label_smoothing: float = 0.0,
    normalize: bool = False,
    class_weights: torch.Tensor | None = None,
) -> FERLoss:
    """Build the registered objective ``name`` (``softmax``, ``center`` or ``island``; see :func:`list_losses`);
    ``normalize`` puts the center term on unit-length features and centers (see :class:`CenterLoss`);
    ``class_weights`` weigh the cross-entropy per class (see :class:`FERLoss`)."""
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(list_losses())}")
    return FERLoss(_LOSSES[name](num_classes, feat_dim, lambda1, normalize), lam, label_smoothing, class_weights)


def balanced_weights(counts: torch.Tensor) -> torch.Tensor:
    """Per-class weights ``N / (K' x count)`` from class counts, K' the classes present: each present class
    weighs as much in total; a class with no images gets 0. Weights of equal counts are all 1."""
    counts = counts.float()
    present = counts > 0
    weights = torch.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights
