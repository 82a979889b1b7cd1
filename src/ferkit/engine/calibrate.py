"""Calibration fitted on validation logits: temperature scaling (Guo et al. 2017) and a per-class logit bias."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ferkit.engine.metrics import ClassificationReport


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature T > 0 that minimises the NLL of ``softmax(logits / T)`` on (logits, targets)."""
    logits, targets = logits.detach().float().cpu(), targets.detach().cpu()
    log_t = torch.zeros((), requires_grad=True)  # optimise log T so T stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)``."""
    return F.cross_entropy(logits.float() / temperature, targets).item()


def adjusted_logits(logits: torch.Tensor, class_bias: Sequence[float] | None = None,
                    temperature: float = 1.0) -> torch.Tensor:
    """Logits as a model file asks them read: plus its per-class ``class_bias`` (if any), over its ``temperature``."""
    if class_bias is not None:
        logits = logits + torch.as_tensor(class_bias, dtype=logits.dtype, device=logits.device)
    return logits / temperature


def balanced_score(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Accuracy and mean per-class accuracy (over the classes present) of argmax predictions."""
    names = [str(k) for k in range(logits.shape[1])]
    report = ClassificationReport.from_predictions(logits.argmax(1).cpu(), targets.cpu(), names)
    return report.accuracy, report.mean_class_accuracy


def fit_class_bias(logits: torch.Tensor, targets: torch.Tensor, prior: torch.Tensor,
                   taus: tuple[float, ...] = tuple(i / 10 for i in range(16))) -> tuple[float, list[float]]:
    """Post-hoc logit adjustment (Menon et al. 2021): the bias ``-tau * log(prior)`` that lifts rare classes.

    ``tau`` is chosen among ``taus`` to maximise the mean of accuracy and mean per-class accuracy on
    (``logits``, ``targets``), validation data; the first of equal scores wins, so tau = 0 (no change)
    is kept unless an adjustment helps. Returns tau and the bias per class.
    """
    logits, targets = logits.detach().float().cpu(), targets.detach().cpu()
    log_prior = torch.as_tensor(prior, dtype=torch.float32).clamp_min(1e-12)
    log_prior = (log_prior / log_prior.sum()).log()
    best_tau, best_score = 0.0, -1.0
    for tau in taus:
        score = sum(balanced_score(logits - tau * log_prior, targets)) / 2
        if score > best_score + 1e-12:
            best_tau, best_score = tau, score
    bias = -best_tau * log_prior
    return best_tau, (bias - bias.mean()).tolist()
