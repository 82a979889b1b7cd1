"""Calibration fitted on validation logits: temperature scaling (Guo et al. 2017) and a per-class logit bias."""
from __future__ import annotations


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


def balanced_score(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Accuracy and mean per-class accuracy (over the classes present) of argmax predictions."""
    names = [str(k) for k in range(logits.shape[1])]
    report = ClassificationReport.from_predictions(logits.argmax(1).cpu(), targets.cpu(), names)
    return report.accuracy, report.mean_class_accuracy


MIN_MEAN_CLASS_ACC = 0.65
"""Mean per-class accuracy a rare-class adjustment must keep on validation (the shipped model's goal)."""
MIN_CLASS_ACC = 0.5
"""Accuracy every class must keep on validation (the shipped model's goal: no class below 50 %)."""


def fit_class_bias(logits: torch.Tensor, targets: torch.Tensor, prior: torch.Tensor,
                   taus: tuple[float, ...] = tuple(i / 10 for i in range(16)),
                   min_mean_class: float = MIN_MEAN_CLASS_ACC,
                   min_class: float = MIN_CLASS_ACC) -> tuple[float, list[float]]:
    """Post-hoc logit adjustment (Menon et al. 2021): the bias ``-tau * log(prior)`` that lifts rare classes.

    ``tau`` is chosen among ``taus`` on (``logits``, ``targets``), validation data: the most accurate
    adjustment whose mean per-class accuracy is at least ``min_mean_class`` and whose every class is at
    least ``min_class`` (the first of equal accuracies, so tau = 0 is kept when it meets both). A floor
    that no tau meets is one the adjustment cannot reach (a common class read badly is not lifted by a
    bias toward rare ones), so it is dropped and the most accurate tau meeting the other is taken; when
    no tau meets either, the one with the best mean per-class accuracy. Returns tau and the bias per class.
    """
    logits, targets = logits.detach().float().cpu(), targets.detach().cpu()
    log_prior = torch.as_tensor(prior, dtype=torch.float32).clamp_min(1e-12)
    log_prior = (log_prior / log_prior.sum()).log()
    names = [str(k) for k in range(logits.shape[1])]
    scored = []
    for tau in taus:
        report = ClassificationReport.from_predictions((logits - tau * log_prior).argmax(1), targets, names)
        worst = min(acc for acc in report.per_class_accuracy.values() if acc is not None)
        scored.append({"tau": tau, "accuracy": report.accuracy, "mean_class": report.mean_class_accuracy,
                       "mean_ok": report.mean_class_accuracy >= min_mean_class, "class_ok": worst >= min_class})
    pool = ([s for s in scored if s["mean_ok"] and s["class_ok"]] or [s for s in scored if s["mean_ok"]]
            or [s for s in scored if s["class_ok"]])
    score = "accuracy" if pool else "mean_class"
    best = max(pool or scored, key=lambda s: s[score])  # max keeps the first of equal scores
    bias = -best["tau"] * log_prior
    return best["tau"], (bias - bias.mean()).tolist()
