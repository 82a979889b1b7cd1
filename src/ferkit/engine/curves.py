"""Pictures of training runs: loss and accuracy curves.

Figures are bare matplotlib ``Figure`` objects rendered through Agg, never pyplot, so plotting
works headless and leaves the user's chosen backend alone; matplotlib is imported inside the
functions so ``import ferkit`` stays fast.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from ferkit.errors import FerkitError
from ferkit.fileio import new_figure, save_figure

METRICS_FILE = "metrics.jsonl"
CURVE_FIELDS = ("epoch", "loss", "train_acc", "val_acc")
"""Fields every metrics.jsonl line must hold for :func:`plot_curves`."""


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, float]]:
    """The per-epoch records of a run folder's metrics.jsonl, one per epoch, in epoch order.

    Raises FerkitError naming the file when it is missing, empty, not JSON lines, or lacks a
    field of :data:`CURVE_FIELDS`. A repeated epoch keeps its last record.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FerkitError(f"{path}: no such file; give a run folder written by `ferkit train`")
    by_epoch: dict[int, dict[str, float]] = {}
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise FerkitError(f"{path}, line {number}: not JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise FerkitError(f"{path}, line {number}: expected a JSON object per line")
            missing = [key for key in CURVE_FIELDS if not isinstance(record.get(key), (int, float))]
            if missing:
                raise FerkitError(f"{path}, line {number}: missing or non-numeric {', '.join(missing)}")
            by_epoch[int(record["epoch"])] = record
    if not by_epoch:
        raise FerkitError(f"{path}: holds no epochs")
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def plot_curves(run_dirs: Sequence[str | os.PathLike[str]], out_path: str | os.PathLike[str],
                title: str | None = None) -> Path:
    """Loss and accuracy (train solid, val dashed) against epoch for each run, labelled by folder name.

    The left panel shows the training objective (for center/island runs it includes the auxiliary
    term, so it is not comparable across losses) and, where recorded, the validation NLL, which is.
    Every run folder is read before anything is drawn, so a bad one fails without writing a file.
    """
    if not run_dirs:
        raise FerkitError("plot_curves needs at least one run folder")
    runs = [(Path(d).resolve().name or str(d), read_metrics(d)) for d in run_dirs]
    fig = new_figure(figsize=(11.0, 4.2), layout="constrained")
    from matplotlib import colormaps  # there once new_figure found matplotlib
    from matplotlib.ticker import MaxNLocator

    palette = colormaps["tab10"]
    loss_ax, acc_ax = fig.subplots(1, 2)
    for i, (name, records) in enumerate(runs):
        colour = palette(i % 10)
        epochs = [r["epoch"] for r in records]
        loss_ax.plot(epochs, [r["loss"] for r in records], color=colour, label=f"{name} train")
        val_nll = [r.get("val_nll", math.nan) for r in records]
        if any(isinstance(v, (int, float)) and math.isfinite(v) for v in val_nll):
            loss_ax.plot(epochs, val_nll, color=colour, linestyle="--", label=f"{name} val NLL")
        acc_ax.plot(epochs, [100 * r["train_acc"] for r in records], color=colour, label=f"{name} train")
        best = max(records, key=lambda r: r["val_acc"])
        acc_ax.plot(epochs, [100 * r["val_acc"] for r in records], color=colour, linestyle="--",
                    label=f"{name} val (best {100 * best['val_acc']:.2f} @ {best['epoch']})")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="training objective / val NLL")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_path)
