"""Classification metrics: confusion matrix, accuracy, macro-F1, calibration, and their reports."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ferkit.errors import FerkitError

_REPORT_KEYS = ("accuracy", "per_class_accuracy", "macro_f1", "confusion", "classes", "n")


def _check_labels(name: str, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Return `labels` as a 1-D int64 tensor after checking it holds class indices."""
    if labels.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"{name} must hold integer class indices, got {labels.dtype}")
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}), "
            f"got values from {int(labels.min())} to {int(labels.max())}"
        )
    return labels


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Count (true, predicted) pairs: an int64 `num_classes` x `num_classes` matrix, rows = true class."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    preds = _check_labels("preds", preds, num_classes)
    targets = _check_labels("targets", targets, num_classes)
    if preds.shape != targets.shape:
        raise ValueError(f"preds and targets differ in length: {preds.numel()} vs {targets.numel()}")
    # Each (true, predicted) pair gets its own flat index, so one bincount counts every cell.
    flat = targets.to(preds.device) * num_classes + preds
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _macro_f1(confusion: torch.Tensor) -> float:
    """Mean F1 over the classes that occur as a target or a prediction."""
    tp = confusion.diagonal().double()
    support = confusion.sum(dim=1).double()
    predicted = confusion.sum(dim=0).double()
    # F1 = 2tp / (2tp + fp + fn) = 2tp / (support + predicted); the denominator is zero exactly
    # for classes that never occur, whose F1 is undefined rather than 0.
    denom = support + predicted
    present = denom > 0
    return float((2 * tp[present] / denom[present]).mean())


@dataclass
class ClassificationReport:
    """Accuracy, per-class accuracy, macro-F1 and confusion counts of one evaluation."""

    accuracy: float
    per_class_accuracy: dict[str, float | None]
    macro_f1: float
    confusion: list[list[int]]
    classes: list[str]
    n: int
    reliability: list[dict[str, float]] | None = None  # reliability_bins of the probabilities, where known

    @property
    def ece(self) -> float | None:
        """Expected calibration error of the top-1 confidence, where the probabilities were known."""
        return None if not self.reliability else calibration_error(self.reliability)

    @classmethod
    def from_predictions(
        cls, preds: torch.Tensor, targets: torch.Tensor, classes: Sequence[str]
    ) -> ClassificationReport:
        """Build the report of predicted against true class indices."""
        classes = list(classes)
        confusion = confusion_matrix(preds, targets, len(classes)).cpu()
        n = int(confusion.sum())
        if n == 0:
            raise ValueError("cannot report on zero predictions")
        support = confusion.sum(dim=1)
        diagonal = confusion.diagonal()
        per_class: dict[str, float | None] = {
            name: (int(diagonal[i]) / int(support[i]) if support[i] > 0 else None)
            for i, name in enumerate(classes)
        }
        return cls(
            accuracy=int(diagonal.sum()) / n,
            per_class_accuracy=per_class,
            macro_f1=_macro_f1(confusion),
            confusion=confusion.tolist(),
            classes=classes,
            n=n,
        )

    @property
    def mean_class_accuracy(self) -> float:
        """Mean of the per-class accuracies over the classes that occur (balanced accuracy)."""
        present = [acc for acc in self.per_class_accuracy.values() if acc is not None]
        return sum(present) / len(present)

    def confusion_percent(self) -> list[list[float]]:
        """The confusion matrix with each row as percent of that true class (empty rows are 0.0)."""
        rows = []
        for row in self.confusion:
            total = sum(row)
            rows.append([100.0 * count / total if total else 0.0 for count in row])
        return rows

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict holding the report and its confusion matrix in percent."""
        return {
            "accuracy": self.accuracy,
            "per_class_accuracy": dict(self.per_class_accuracy),
            "mean_class_accuracy": self.mean_class_accuracy,
            "macro_f1": self.macro_f1,
            "confusion": [list(row) for row in self.confusion],
            "confusion_percent": self.confusion_percent(),
            "classes": list(self.classes),
            "n": self.n,
            **({"ece": self.ece, "reliability": self.reliability} if self.reliability else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassificationReport:
        """Rebuild a report written by `to_dict` (derived keys such as the percent matrix are ignored)."""
        missing = [key for key in _REPORT_KEYS if key not in d]
        if missing:
            raise FerkitError(
                f"classification report is missing {', '.join(missing)}; "
                "expected a dict written by ClassificationReport.to_dict"
            )
        return cls(
            accuracy=float(d["accuracy"]),
            per_class_accuracy={
                str(name): (None if value is None else float(value))
                for name, value in d["per_class_accuracy"].items()
            },
            macro_f1=float(d["macro_f1"]),
            confusion=[[int(count) for count in row] for row in d["confusion"]],
            classes=[str(name) for name in d["classes"]],
            n=int(d["n"]),
            reliability=d.get("reliability") or None,
        )

    def to_markdown(self, title: str | None = None) -> str:
        """Markdown: a summary line, a per-class accuracy table and the confusion matrix in percent."""
        lines = [f"### {title}", ""] if title else []
        lines += [
            f"accuracy {100 * self.accuracy:.2f} %, mean per-class accuracy {100 * self.mean_class_accuracy:.2f} %, "
            f"macro-F1 {self.macro_f1:.4f}, n = {self.n}" + (f", ECE {self.ece:.4f}" if self.reliability else ""),
            "",
            "| class | accuracy (%) | n |",
            "|---|---:|---:|",
        ]
        for name, row in zip(self.classes, self.confusion):
            acc = self.per_class_accuracy.get(name)
            shown = "n/a" if acc is None else f"{100 * acc:.1f}"
            lines.append(f"| {_md_cell(name)} | {shown} | {sum(row)} |")
        lines += [
            "",
            "Confusion matrix (%), rows = true class, columns = predicted:",
            "",
            "| true \\ predicted | " + " | ".join(_md_cell(c) for c in self.classes) + " |",
            "|---|" + "---:|" * len(self.classes),
        ]
        for name, row in zip(self.classes, self.confusion_percent()):
            lines.append(f"| {_md_cell(name)} | " + " | ".join(f"{v:.1f}" for v in row) + " |")
        return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    """Escape a pipe so a class name cannot split a markdown table cell."""
    return text.replace("|", "\\|")


def save_confusion_png(
    report: ClassificationReport, path: str | os.PathLike[str], title: str | None = None
) -> None:
    """Write the confusion matrix in percent as an annotated heat map PNG at `path`."""
    from ferkit.fileio import new_figure, save_figure

    percent = report.confusion_percent()
    k = len(report.classes)
    side = max(4.0, 0.9 * k + 2.0)
    fig = new_figure(figsize=(side + 1.0, side), layout="tight")
    ax = fig.add_subplot()
    image = ax.imshow(percent, cmap="Blues", vmin=0.0, vmax=100.0)
    fig.colorbar(image, ax=ax, label="% of true class")
    ax.set_xticks(range(k), labels=report.classes, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=report.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    for i, row in enumerate(percent):
        for j, value in enumerate(row):
            # Dark text on light cells, light text on dark ones, so every number stays readable.
            colour = "white" if value > 50.0 else "black"
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", color=colour, fontsize=8)

    save_figure(fig, path, dpi=150)


def reliability_bins(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> list[dict[str, float]]:
    """The top-1 confidence in ``n_bins`` equal-width bins ``(lo, hi]``: per bin its count ``n``, mean
    ``confidence`` and ``accuracy`` (both 0 for an empty bin): what a reliability diagram draws."""
    if probs.dim() != 2:
        raise ValueError(f"probs must be N x C, got shape {tuple(probs.shape)}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    n = probs.shape[0]
    if n == 0:
        raise ValueError("cannot compute calibration of zero predictions")
    targets = _check_labels("targets", targets, probs.shape[1])
    if targets.numel() != n:
        raise ValueError(f"probs and targets differ in length: {n} vs {targets.numel()}")

    confidence, pred = probs.detach().max(dim=1)
    correct = (pred == targets.to(pred.device)).double()
    # Bins are (lo, hi]; edges in the probabilities' own dtype so a confidence that equals an
    # edge lands in the lower bin instead of jumping bins through rounding.
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=confidence.dtype, device=confidence.device)
    bins = torch.bucketize(confidence, edges[1:-1])
    count = torch.zeros(n_bins, dtype=torch.float64, device=confidence.device).index_add_(
        0, bins, torch.ones_like(correct))
    sum_conf = torch.zeros_like(count).index_add_(0, bins, confidence.double())
    sum_acc = torch.zeros_like(count).index_add_(0, bins, correct)
    seen = count.clamp(min=1)
    return [{"lo": float(edges[i]), "hi": float(edges[i + 1]), "n": int(count[i]),
             "confidence": float(sum_conf[i] / seen[i]), "accuracy": float(sum_acc[i] / seen[i])}
            for i in range(n_bins)]


def calibration_error(bins: Sequence[dict[str, float]]) -> float:
    """Expected calibration error of :func:`reliability_bins`: ``sum_b (n_b / N) |accuracy_b - confidence_b|``."""
    total = sum(b["n"] for b in bins)
    return sum(b["n"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / total


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error of the top-1 confidence over `n_bins` equal-width bins."""
    return calibration_error(reliability_bins(probs, targets, n_bins))


def save_reliability_png(report: ClassificationReport, path: str | os.PathLike[str], title: str | None = None) -> None:
    """Write the report's reliability diagram at `path`: accuracy against confidence per bin, the diagonal
    where they agree, and the share of images in each bin below."""
    from ferkit.fileio import new_figure, save_figure

    if not report.reliability:
        raise ValueError("the report holds no reliability bins (made from predictions without probabilities)")
    bins = report.reliability
    centers = [(b["lo"] + b["hi"]) / 2 for b in bins]
    width = bins[0]["hi"] - bins[0]["lo"]
    fig = new_figure(figsize=(5.0, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    top.bar(centers, [b["accuracy"] if b["n"] else 0.0 for b in bins], width=width * 0.95, color="#4c72b0",
            label="accuracy")
    gaps = [(c, b["confidence"] - b["accuracy"]) for c, b in zip(centers, bins) if b["n"]]
    top.bar([c for c, _ in gaps], [g for _, g in gaps], bottom=[b["accuracy"] for b in bins if b["n"]],
            width=width * 0.95, color="#dd8452", alpha=0.6, label="gap to confidence")
    top.plot([0, 1], [0, 1], color="black", linewidth=1, linestyle="--", label="calibrated")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    top.legend(loc="upper left", fontsize=8)
    top.set_title((f"{title}\n" if title else "") + f"ECE {report.ece:.4f}", fontsize=9)
    total = sum(b["n"] for b in bins)
    bottom.bar(centers, [b["n"] / total for b in bins], width=width * 0.95, color="#8c8c8c")
    bottom.set(xlabel="top-1 confidence", ylabel="share of images")
    save_figure(fig, path, dpi=150)
