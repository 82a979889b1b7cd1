"""k-fold cross-validation: subject-independent folds where the data knows subjects, one training run per
fold, scores pooled over folds; a rerun continues where the last one stopped."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ferkit.config import TrainConfig, config_to_dict
from ferkit.data import (FERDataset, PhotoDataset, load_dataset, stratified_folds, stratified_split, subject_folds,
                         subject_split)
from ferkit.engine.modelfile import load_checkpoint
from ferkit.engine.evaluate import write_report
from ferkit.engine.metrics import ClassificationReport
from ferkit.engine.runtime import git_commit, hardware
from ferkit.engine.train import Trainer
from ferkit.errors import FerkitError
from ferkit.fileio import write_json

FOLD_FILE = "fold.json"
"""Written in a fold's folder once the fold is scored; a rerun skips folds that have it."""
PLAN_FILE = "plan.json"
SUMMARY_FILE = "cv.json"


@dataclass
class FoldResult:
    """The held-out score of one fold's run."""

    fold: int  # 1-based
    n: int  # held-out images
    accuracy: float
    best_epoch: int
    val_acc: float  # best validation accuracy, on the val images carved from the training folds
    report: ClassificationReport
    subjects: list[str]  # held-out subjects; empty when the data has none

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "report": self.report.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FoldResult:
        """Rebuild a result written by :meth:`to_dict`."""
        return cls(**{**d, "report": ClassificationReport.from_dict(d["report"])})


@dataclass
class CVResult:
    """Every fold's score, their mean and spread, and the confusion counts summed over folds."""

    out_dir: Path
    folding: str  # "subject" or "stratified"
    folds: list[FoldResult]
    pooled: ClassificationReport

    @property
    def mean_acc(self) -> float:
        """Mean of the folds' accuracies."""
        return float(torch.tensor([f.accuracy for f in self.folds], dtype=torch.float64).mean())

    @property
    def std_acc(self) -> float:
        """Sample standard deviation (n - 1) of the folds' accuracies."""
        return float(torch.tensor([f.accuracy for f in self.folds], dtype=torch.float64).std())

    def summary(self) -> str:
        """Per-fold accuracy, mean +/- std, and the pooled confusion matrix in counts and percent."""
        lines = [f"{len(self.folds)}-fold cross-validation ({self.folding} folds):", ""]
        lines += [f"fold {f.fold:2d}: {f.accuracy:7.2%} of {f.n} images"
                  + (f" ({len(f.subjects)} subjects)" if f.subjects else "") for f in self.folds]
        lines += ["", f"accuracy {self.mean_acc:.2%} +/- {self.std_acc:.2%} (mean +/- std over folds); "
                      f"pooled {self.pooled.accuracy:.2%} of {self.pooled.n} images", ""]
        width = max(len(c) for c in self.pooled.classes)
        lines.append("pooled confusion (counts), rows = true class, columns = predicted:")
        lines.append(" " * width + " " + " ".join(f"{c[:8]:>8}" for c in self.pooled.classes))
        for name, row in zip(self.pooled.classes, self.pooled.confusion):
            lines.append(f"{name:>{width}} " + " ".join(f"{v:8d}" for v in row))
        return "\n".join(lines) + "\n\n" + self.pooled.to_markdown("pooled over folds")


def load_pool(cfg: TrainConfig, data: str | Path, log: Callable[[str], None] = print, progress: bool = True,
              **reader_options: Any) -> FERDataset:
    """Every image of the data set at ``data``, its splits pooled, for cross-validation.

    ``reader_options`` go to :func:`ferkit.data.load_dataset` (e.g. ``format``, ``detect``).
    """
    splits = load_dataset(data, skip_bad=cfg.skip_bad, val_fraction=cfg.val_fraction, seed=cfg.seed,
                          progress=progress, **reader_options)
    for name, split in splits.items():
        if split.skipped:
            log(f"{name}: skipped {split.skipped} unreadable images")
        if isinstance(split, PhotoDataset) and split.rejected:
            log(f"{name}: left out {len(split.rejected)} photos: " + "; ".join(split.rejected))
    pooled = pool_splits(splits)
    log(f"pooled {' + '.join(f'{name} {len(s)}' for name, s in splits.items())} = {len(pooled)} images "
        f"from {pooled.source}")
    return pooled


def pool_splits(splits: dict[str, FERDataset]) -> FERDataset:
    """One dataset (split 'train') holding the images of all ``splits``, in their order."""
    parts = list(splits.values())
    first = parts[0]
    for part in parts[1:]:
        if part.classes != first.classes or part.group_names != first.group_names:
            raise FerkitError(f"{part.source}: splits disagree on classes or subjects and cannot be pooled")
    grouped = all(p.groups is not None for p in parts)
    soft = all(p.soft_labels is not None for p in parts)
    return FERDataset(
        images=torch.cat([p.images for p in parts]),
        labels=torch.cat([p.labels for p in parts]),
        classes=first.classes,
        split="train",
        source=first.source,
        groups=torch.cat([p.groups for p in parts]) if grouped else None,
        group_names=first.group_names if grouped else (),
        soft_labels=torch.cat([p.soft_labels for p in parts]) if soft else None,
    )


def make_folds(data: FERDataset, k: int, seed: int) -> tuple[list[torch.Tensor], str]:
    """``k`` folds of ``data``'s indices: by subject when it has groups, else stratified by class."""
    if data.groups is not None:
        return subject_folds(data.groups, k, seed), "subject"
    return stratified_folds(data.labels, k, seed), "stratified"


def fold_splits(data: FERDataset, folds: list[torch.Tensor], index: int, val_fraction: float,
                seed: int) -> dict[str, FERDataset]:
    """Train, val and test of fold ``index`` (0-based): test is the fold, val is carved from the others.

    Val holds whole subjects when the data has groups, else a stratified share of the training folds.
    """
    rest = torch.sort(torch.cat([f for i, f in enumerate(folds) if i != index])).values
    if data.groups is not None:
        train, val = subject_split(data.groups[rest], val_fraction, seed)
    else:
        train, val = stratified_split(data.labels[rest], val_fraction, seed)
    if len(val) == 0 or len(train) == 0:
        raise FerkitError(f"val_fraction={val_fraction} leaves fold {index + 1} without validation or training "
                          "images; choose a val_fraction in (0, 1) that holds out some of them")
    source = f"{data.source} (fold {index + 1} of {len(folds)})"
    return {name: dataclasses.replace(data.subset(picked), split=name, source=source)
            for name, picked in (("train", rest[train]), ("val", rest[val]), ("test", folds[index]))}


def cross_validate(cfg: TrainConfig, data: str | Path | FERDataset, out_dir: str | Path, folds: int = 10, *,
                   command: str | None = None, log: Callable[[str], None] = print,
                   progress: bool = True) -> CVResult:
    """Train one model per fold of ``data`` (a path or a pooled dataset) and score it on its held-out fold.

    Each fold's run lives in ``out_dir/fold_NN`` and is selected on val carved from the training
    folds (``cfg.val_fraction``, subject-disjoint where the data has subjects). Folds already scored
    are skipped and an interrupted fold resumes from its last.pt, so rerunning the same call
    finishes the job. Writes ``cv.json`` (every fold, the pooled report, config, seed, command)
    and the pooled report as ``pooled.md`` / ``pooled.png``.
    """
    out_dir = Path(out_dir)
    pool = data if isinstance(data, FERDataset) else load_pool(cfg, data, log, progress)
    indices, folding = make_folds(pool, folds, cfg.seed)
    _check_plan(out_dir, {
        "data": pool.source, "n": len(pool), "classes": list(pool.classes), "folds": folds, "folding": folding,
        "fold_sizes": [len(f) for f in indices], "config": config_to_dict(cfg),
    })
    log(f"{folds} {folding} folds of {len(pool)} images: {', '.join(str(len(f)) for f in indices)}")
    results = [_run_fold(cfg, pool, indices, i, out_dir, log, progress) for i in range(folds)]
    pooled = _report_from_confusion(
        torch.stack([torch.tensor(r.report.confusion) for r in results]).sum(0), list(pool.classes))
    result = CVResult(out_dir, folding, results, pooled)
    write_json({
        "command": command, "data": pool.source, "n": len(pool), "folds": folds, "folding": folding,
        "seed": cfg.seed, "mean_acc": result.mean_acc, "std_acc": result.std_acc, "std": "sample (n - 1)",
        "per_fold": [r.to_dict() for r in results], "pooled": pooled.to_dict(), "config": config_to_dict(cfg),
        "git_commit": git_commit(), "hardware": hardware(),
    }, out_dir / SUMMARY_FILE)
    write_report(pooled, out_dir / "pooled", f"{pool.source}: {folds}-fold cross-validation, pooled",
                 {"folds": folds, "folding": folding, "mean_acc": result.mean_acc, "std_acc": result.std_acc})
    return result


def _run_fold(cfg: TrainConfig, pool: FERDataset, indices: list[torch.Tensor], index: int, out_dir: Path,
              log: Callable[[str], None], progress: bool) -> FoldResult:
    """Fold ``index``'s result: read back when it was scored before, else trained (or resumed) and scored."""
    fold_dir = out_dir / f"fold_{index + 1:02d}"
    done = fold_dir / FOLD_FILE
    name = f"fold {index + 1}/{len(indices)}"
    if done.is_file():
        result = FoldResult.from_dict(json.loads(done.read_text()))
        log(f"{name}: scored before ({result.accuracy:.2%}), skipped")
        return result
    splits = fold_splits(pool, indices, index, cfg.val_fraction, cfg.seed)
    trainer = Trainer(cfg, splits, fold_dir, log, progress)
    if (fold_dir / "last.pt").is_file():
        trainer.load_state(load_checkpoint(fold_dir / "last.pt"))
        log(f"{name}: resuming after epoch {trainer.epoch}")
    run = trainer.fit()
    report, _ = trainer.score("test")
    test = splits["test"]
    subjects = [] if test.groups is None else [pool.group_names[g] for g in torch.unique(test.groups).tolist()]
    result = FoldResult(index + 1, len(test), report.accuracy, run.best_epoch, run.best_val_acc, report, subjects)
    write_json(result.to_dict(), done)
    log(f"{name}: {result.accuracy:.2%} of {result.n} held-out images"
        + (f" ({len(subjects)} subjects)" if subjects else "") + f", best epoch {run.best_epoch}")
    return result


def _check_plan(out_dir: Path, plan: dict[str, Any]) -> None:
    """Record the folds and config in ``out_dir``, or check a rerun there has the same ones."""
    path = out_dir / PLAN_FILE
    if path.is_file():
        before = json.loads(path.read_text())
        changed = [key for key in plan if before.get(key) != plan[key]]
        if changed == ["config"]:
            changed = [f"config key {key!r}" for key in plan["config"]
                       if before["config"].get(key) != plan["config"][key]]
        if changed:
            raise FerkitError(f"{out_dir}: holds a cross-validation with another {', '.join(changed)}; "
                              "rerun it as it was to continue, or choose another output folder")
        return
    write_json(plan, path)


def _report_from_confusion(confusion: torch.Tensor, classes: list[str]) -> ClassificationReport:
    """The report whose confusion matrix is ``confusion`` (rows = true class)."""
    k = len(classes)
    cells = torch.arange(k * k).repeat_interleave(confusion.flatten())
    return ClassificationReport.from_predictions(cells % k, cells // k, classes)
