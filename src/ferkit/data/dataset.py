"""The one in-memory form every reader produces: a uint8 image tensor plus int64 labels."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ferkit.errors import FerkitError

FER_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""FER2013 class names in label order 0..6."""

SPLITS: tuple[str, ...] = ("train", "val", "test")
ALL = "all"  # a split name standing for every image of a data set, whatever split its source gave it
"""The split names a dataset may carry."""


@dataclass
class FERDataset:
    """Images and labels of one split, held in memory.

    `note` says how the split was made when that is not obvious (e.g. val carved from train);
    `skipped` counts files of this split left out as unreadable (``skip_bad=True``).
    `groups` (optional) gives each image's group, e.g. its subject, as an index into `group_names`,
    so folds can keep a person's images together; `soft_labels` (optional) gives each image's
    target distribution over `classes`, e.g. FER+ annotator votes.
    """

    images: torch.Tensor  # uint8, N x C x H x W, C = 1 (grayscale) or 3 (RGB)
    labels: torch.Tensor  # int64, N, indices into `classes`
    classes: tuple[str, ...]
    split: str  # one of SPLITS
    source: str  # the path it was read from, for messages
    note: str = ""
    skipped: int = 0
    groups: torch.Tensor | None = None  # int64, N, indices into `group_names`
    group_names: tuple[str, ...] = ()
    soft_labels: torch.Tensor | None = None  # float32, N x len(classes), rows sum to 1

    def __post_init__(self) -> None:
        where = f"dataset {self.split!r} from {self.source}"
        if self.images.dtype != torch.uint8:
            raise FerkitError(f"{where}: images must be uint8, got {self.images.dtype}")
        if self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise FerkitError(
                f"{where}: images must be N x C x H x W with C = 1 or 3, got shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.ndim != 1:
            raise FerkitError(
                f"{where}: labels must be a 1-D int64 tensor, got {self.labels.dtype} "
                f"with shape {tuple(self.labels.shape)}"
            )
        if len(self.images) != len(self.labels):
            raise FerkitError(f"{where}: {len(self.images)} images but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise FerkitError(
                f"{where}: labels must lie in 0..{len(self.classes) - 1} ({len(self.classes)} classes), "
                f"got {int(self.labels.min())}..{int(self.labels.max())}"
            )
        if self.split not in (*SPLITS, ALL):
            raise FerkitError(f"{where}: split must be one of {', '.join(SPLITS)} or {ALL}")
        if self.groups is not None:
            if self.groups.dtype != torch.int64 or self.groups.shape != self.labels.shape:
                raise FerkitError(
                    f"{where}: groups must be int64 with shape ({len(self.labels)},), got {self.groups.dtype} "
                    f"with shape {tuple(self.groups.shape)}"
                )
            if len(self.groups) and (self.groups.min() < 0 or self.groups.max() >= len(self.group_names)):
                raise FerkitError(f"{where}: groups must index group_names ({len(self.group_names)} names)")
        if self.soft_labels is not None:
            expected = (len(self.labels), len(self.classes))
            if self.soft_labels.dtype != torch.float32 or tuple(self.soft_labels.shape) != expected:
                raise FerkitError(
                    f"{where}: soft_labels must be float32 with shape {expected}, got "
                    f"{self.soft_labels.dtype} with shape {tuple(self.soft_labels.shape)}"
                )
        self.classes = tuple(self.classes)
        self.group_names = tuple(self.group_names)

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> dict[str, int]:
        """Number of images per class, in class order, zeros included."""
        counts = torch.bincount(self.labels, minlength=len(self.classes))
        return dict(zip(self.classes, counts.tolist()))

    def subset(self, index: torch.Tensor) -> FERDataset:
        """The images selected by `index` (integer indices or a boolean mask), other fields kept."""
        return dataclasses.replace(
            self,
            images=self.images[index],
            labels=self.labels[index],
            groups=None if self.groups is None else self.groups[index],
            soft_labels=None if self.soft_labels is None else self.soft_labels[index],
        )


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices 0..N-1 into (rest, held_out), holding out `fraction` of every class.

    Each class gives round(fraction * its count) images, so class proportions are kept;
    the same labels, fraction and seed always give the same split. Both index tensors are sorted.
    """
    if not 0.0 <= fraction < 1.0:
        raise FerkitError(f"the held-out fraction must be in [0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    held_out = []
    for label in torch.unique(labels, sorted=True):
        members = torch.nonzero(labels == label).flatten()
        take = round(fraction * len(members))
        held_out.append(members[torch.randperm(len(members), generator=generator)[:take]])
    mask = torch.zeros(len(labels), dtype=torch.bool)
    if held_out:
        mask[torch.cat(held_out)] = True
    return torch.nonzero(~mask).flatten(), torch.nonzero(mask).flatten()
