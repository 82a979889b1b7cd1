"""The learned feature space (the paper's Fig. 4): pooled features, a 2-D projection, geometry figures, a plot.

The figures say how compact and how separated the classes are, which is what center loss
(compact) and island loss (compact and apart) are meant to change.
"""
from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ferkit.data import FERDataset
from ferkit.data.augment import prepare
from ferkit.engine import modelfile
from ferkit.engine.modelfile import ModelMeta
from ferkit.engine.evaluate import align_classes
from ferkit.fileio import new_figure, save_figure
from ferkit.errors import FerkitError
from ferkit.fileio import write_json

PROJECTIONS = ("auto", "tsne", "umap", "pca")
# Which optional package each non-linear projection needs (ferkit depends on neither).
_PROJECTION_PACKAGES = {"tsne": ("sklearn", "scikit-learn"), "umap": ("umap", "umap-learn")}
# t-SNE and UMAP start from the top principal components: it removes noise and is their usual input.
_PRE_PCA_DIMS = 50


@torch.no_grad()
def extract_features(model: nn.Module, dataset: FERDataset, meta: ModelMeta, batch_size: int = 512,
                     device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled features (N x D float32, on the CPU; D = 512 for ResNet-18) and labels of ``dataset``."""
    if not hasattr(model, "forward_features"):
        raise FerkitError(f"{type(model).__name__} has no forward_features; features need a ferkit ResNet")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(dataset), batch_size):
            x = prepare(dataset.images[start : start + batch_size].to(device), meta.in_chans,
                        meta.input_size, meta.mean, meta.std)
            out.append(model.forward_features(x).float().cpu())
    finally:
        model.train(was_training)
    features = torch.cat(out) if out else torch.zeros(0, getattr(model, "num_features", 0))
    return features, dataset.labels.clone()


def available_projections() -> list[str]:
    """The projection methods usable here, best first: ``tsne``/``umap`` when their package is installed, ``pca``."""
    found = [name for name, (module, _) in _PROJECTION_PACKAGES.items() if importlib.util.find_spec(module)]
    return [*found, "pca"]


def _pca(features: torch.Tensor, dims: int) -> torch.Tensor:
    """The centred features on their top ``dims`` principal axes (exact SVD, float64, signs fixed)."""
    x = features.double()
    x = x - x.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    axes = vh[:dims]
    # An axis' sign is arbitrary; make its largest loading positive so the picture is reproducible.
    signs = torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True)))
    return x @ (axes * signs).t()


def resolve_projection(method: str) -> str:
    """The projection ``method`` names (``auto``: the best available), after checking its package is installed."""
    if method not in PROJECTIONS:
        raise FerkitError(f"unknown projection {method!r}; valid: {', '.join(PROJECTIONS)}")
    if method == "auto":
        return available_projections()[0]
    if method != "pca" and method not in available_projections():
        package = _PROJECTION_PACKAGES[method][1]
        raise FerkitError(f"projection {method!r} needs {package}: pip install {package} (or use pca)")
    return method


def project_2d(features: torch.Tensor, method: str = "auto", seed: int = 0) -> tuple[torch.Tensor, str]:
    """N x 2 float32 points from N x D features, and the method used (``tsne``, ``umap`` or ``pca``).

    ``auto`` takes the first of :func:`available_projections`: t-SNE (scikit-learn), UMAP
    (umap-learn), else PCA, which needs nothing beyond torch and is exactly linear, so distances
    along its axes are the features' own.
    """
    method = resolve_projection(method)
    if features.ndim != 2 or len(features) < 3:
        raise ValueError(f"need an N x D feature matrix with N >= 3, got shape {tuple(features.shape)}")
    if method == "pca":
        return _pca(features, 2).float(), method
    reduced = _pca(features, min(_PRE_PCA_DIMS, *features.shape)).numpy()
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(reduced) - 1) / 3)
        points = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)
    else:
        import umap

        points = umap.UMAP(n_components=2, random_state=seed).fit_transform(reduced)
    return torch.as_tensor(points, dtype=torch.float32), method


def _mean_pair(matrix: torch.Tensor) -> float:
    """The mean of the entries above the diagonal of a square matrix (each unordered pair once)."""
    k = len(matrix)
    upper = torch.triu_indices(k, k, offset=1)
    return float(matrix[upper[0], upper[1]].mean())


def feature_stats(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                  centers: torch.Tensor | None = None) -> dict[str, Any]:
    """How compact and how separated the classes are in feature space.

    - ``intra_distance``: mean distance of each feature to its class mean;
    - ``inter_distance``: mean distance between class means, over pairs of classes;
    - ``intra_inter_ratio``: their quotient (lower = tighter, further-apart classes);
    - ``center_cosine``: mean cosine between class means, over pairs (-1 .. 1; island loss lowers it);
      ReLU features are non-negative, so this stays high even for well-separated classes;
    - ``center_cosine_centred``: the same after subtracting the mean of the class means, which
      removes that shared component and shows whether the classes point different ways;
    - ``learned_center_cosine``: the same for ``centers`` (K x D, a center/island loss's learned
      centers) when given.

    Classes without samples are left out (listed under ``classes_present``); at least two are needed.
    """
    if features.ndim != 2 or labels.shape != (len(features),):
        raise ValueError(f"features must be N x D with N labels, got {tuple(features.shape)} and "
                         f"{tuple(labels.shape)}")
    x = features.double()
    labels = labels.long()
    counts = torch.bincount(labels, minlength=num_classes)
    if len(counts) > num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {int(labels.max())}")
    present = torch.nonzero(counts).flatten()
    if len(present) < 2:
        raise ValueError(f"feature statistics need samples of at least two classes, got {len(present)}")
    sums = torch.zeros(num_classes, x.shape[1], dtype=x.dtype).index_add_(0, labels, x)
    means = sums / counts.clamp(min=1).unsqueeze(1).to(x.dtype)
    intra = float((x - means[labels]).norm(dim=1).mean())
    present_means = means[present]
    inter = _mean_pair(torch.cdist(present_means, present_means))
    unit = torch.nn.functional.normalize(present_means, dim=1)
    centred = torch.nn.functional.normalize(present_means - present_means.mean(dim=0), dim=1)
    stats: dict[str, Any] = {
        "n": len(x),
        "dims": x.shape[1],
        "classes_present": present.tolist(),
        "intra_distance": intra,
        "inter_distance": inter,
        "intra_inter_ratio": intra / inter if inter > 0 else math.inf,
        "center_cosine": _mean_pair(unit @ unit.t()),
        "center_cosine_centred": _mean_pair(centred @ centred.t()),
    }
    if centers is not None:
        if centers.ndim != 2 or centers.shape[1] != x.shape[1] or len(centers) < 2:
            raise ValueError(f"centers must be K x {x.shape[1]} with K >= 2, got {tuple(centers.shape)}")
        learned = torch.nn.functional.normalize(centers.double(), dim=1)
        stats["learned_center_cosine"] = _mean_pair(learned @ learned.t())
    return stats


def _draw_features(ax: Any, points: torch.Tensor, labels: torch.Tensor, classes: list[str] | tuple[str, ...],
                   centers_2d: torch.Tensor | None, title: str | None) -> None:
    """Scatter ``points`` on ``ax`` coloured by class, each class center a large cross, with a legend."""
    from matplotlib import colormaps

    points = torch.as_tensor(points, dtype=torch.float32)
    labels = torch.as_tensor(labels).long()
    if points.ndim != 2 or points.shape[1] != 2 or labels.shape != (len(points),):
        raise ValueError(f"need N x 2 points and N labels, got {tuple(points.shape)} and {tuple(labels.shape)}")
    palette = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    # Small translucent dots so dense clusters stay readable at a few thousand points.
    size = max(2.0, min(12.0, 6000.0 / max(len(points), 1)))
    for k, name in enumerate(classes):
        mine = points[labels == k]
        if len(mine) == 0:
            continue
        colour = palette(k % palette.N)
        ax.scatter(mine[:, 0], mine[:, 1], s=size, color=colour, alpha=0.5, linewidths=0,
                   label=f"{name} ({len(mine)})")
        center = mine.mean(dim=0) if centers_2d is None else torch.as_tensor(centers_2d)[k]
        ax.scatter([float(center[0])], [float(center[1])], s=220, marker="X", color=colour,
                   edgecolors="black", linewidths=1.2, zorder=3)
    legend = ax.legend(markerscale=max(1.0, 8.0 / size), fontsize=8, loc="best", title="class (n); X = center")
    for handle in legend.legend_handles:
        handle.set_alpha(1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)


def plot_features(points_2d: torch.Tensor, labels: torch.Tensor, classes: list[str] | tuple[str, ...],
                  centers_2d: torch.Tensor | None = None, title: str | None = None,
                  path: str | os.PathLike[str] = "features.png") -> Path:
    """Scatter the 2-D points coloured by class, each class center marked by a large cross, with a legend.

    ``centers_2d`` (K x 2) defaults to the mean of each class's points.
    """
    fig = new_figure(figsize=(7.5, 6.5), layout="constrained")
    _draw_features(fig.add_subplot(), points_2d, labels, classes, centers_2d, title)
    return save_figure(fig, path)


def plot_feature_panels(panels: list[tuple[torch.Tensor, torch.Tensor, str]], classes: list[str] | tuple[str, ...],
                        path: str | os.PathLike[str]) -> Path:
    """Several feature spaces side by side, one panel per ``(points_2d, labels, title)`` (the paper's Fig. 4)."""
    if not panels:
        raise ValueError("plot_feature_panels needs at least one panel")
    fig = new_figure(figsize=(6.5 * len(panels), 6.5), layout="constrained")
    for ax, (points, labels, title) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        _draw_features(ax, points, labels, classes, None, title)
    return save_figure(fig, path)


def training_extras(checkpoint: str | os.PathLike[str]) -> tuple[torch.Tensor | None, str | None]:
    """The learned class centers (K x D) and loss name of a training checkpoint; (None, None) for model files.

    Centers exist only for center/island-loss runs; ``.safetensors`` model files keep neither.
    """
    if Path(checkpoint).suffix == ".safetensors":
        return None, None
    state = modelfile.load_checkpoint(checkpoint)
    centers = state.get("criterion", {}).get("aux.centers")
    loss = state.get("config", {}).get("loss")
    return (centers.float() if isinstance(centers, torch.Tensor) else None), loss


def embed_features(checkpoint: str | os.PathLike[str], dataset: FERDataset, max_points: int = 3000,
                   seed: int = 0, method: str = "auto", batch_size: int = 512,
                   device: str = "cpu") -> dict[str, Any]:
    """The feature space of ``checkpoint`` on ``dataset``: its statistics and a 2-D projection.

    At most ``max_points`` images, drawn at random with ``seed``, are embedded; the statistics are
    computed on the same images in the full feature space, not on the projection. Returns the JSON
    payload of :func:`feature_picture` plus ``points`` (N x 2) and ``labels`` (N), which are not JSON.
    """
    method = resolve_projection(method)
    model, meta = modelfile.load(checkpoint, device)
    align_classes(dataset, meta.classes, str(dataset.source))
    if max_points < 3:
        raise FerkitError(f"max_points must be at least 3, got {max_points}")
    if len(dataset) > max_points:
        generator = torch.Generator().manual_seed(seed)
        dataset = dataset.subset(torch.randperm(len(dataset), generator=generator)[:max_points].sort().values)
    if len(dataset) < 3:
        raise FerkitError(f"{dataset.source} ({dataset.split}): {len(dataset)} images; a feature picture needs 3")
    features, labels = extract_features(model, dataset, meta, batch_size, device)
    centers, loss = training_extras(checkpoint)
    stats = feature_stats(features, labels, len(meta.classes), centers)
    points, used = project_2d(features, method, seed)
    return {
        "checkpoint": str(checkpoint), "loss": loss, "data": str(dataset.source), "split": dataset.split,
        "n": len(labels), "max_points": max_points, "seed": seed, "method": used,
        "classes": list(meta.classes), "stats": stats, "points": points, "labels": labels,
    }


def feature_title(info: dict[str, Any], name: str) -> str:
    """A picture's title: what was embedded, and the two figures the picture illustrates."""
    stats = info["stats"]
    loss = f" ({info['loss']} loss)" if info.get("loss") else ""
    return (f"{name}{loss}: {info['split']} features, {info['method'].upper()}, n={info['n']}\n"
            f"intra/inter {stats['intra_inter_ratio']:.3f}, center cosine {stats['center_cosine']:.3f} "
            f"(centred {stats['center_cosine_centred']:.3f})")


def feature_picture(checkpoint: str | os.PathLike[str], dataset: FERDataset, out_prefix: str | os.PathLike[str],
                    max_points: int = 3000, seed: int = 0, method: str = "auto", batch_size: int = 512,
                    device: str = "cpu") -> dict[str, Any]:
    """Write ``<prefix>.png`` (the 2-D feature space) and ``<prefix>.json`` (statistics, method, n); return the JSON.

    The images and statistics are those of :func:`embed_features`.
    """
    info = embed_features(checkpoint, dataset, max_points, seed, method, batch_size, device)
    points, labels = info.pop("points"), info.pop("labels")
    prefix = Path(out_prefix)
    plot_features(points, labels, info["classes"], title=feature_title(info, Path(checkpoint).name),
                  path=prefix.with_suffix(".png"))
    write_json(info, prefix.with_suffix(".json"))
    return info
