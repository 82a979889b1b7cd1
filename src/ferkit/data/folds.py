"""Index folds for cross-validation and held-out sets that keep each subject's images together."""
from __future__ import annotations

import torch

from ferkit.errors import FerkitError


def subject_folds(groups: torch.Tensor, k: int, seed: int = 0) -> list[torch.Tensor]:
    """Split indices 0..N-1 into `k` folds so that no group (subject) lies in two folds.

    Folds are balanced by image count: subjects go, largest first, to the fold with the fewest
    images so far (the seed orders subjects of equal size). Each fold's indices are sorted.
    """
    subjects, counts = torch.unique(groups, return_counts=True)
    if not 2 <= k <= len(subjects):
        raise FerkitError(f"subject folds need 2 <= k <= the number of subjects ({len(subjects)}), got k={k}")
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(len(subjects), generator=generator)
    order = shuffled[torch.sort(counts[shuffled], descending=True, stable=True).indices]
    totals = [0] * k
    members: list[list[int]] = [[] for _ in range(k)]
    for i in order.tolist():
        fold = min(range(k), key=totals.__getitem__)
        totals[fold] += int(counts[i])
        members[fold].append(int(subjects[i]))
    return [torch.nonzero(torch.isin(groups, torch.tensor(m, dtype=groups.dtype))).flatten() for m in members]


def stratified_folds(labels: torch.Tensor, k: int, seed: int = 0) -> list[torch.Tensor]:
    """Split indices 0..N-1 into `k` folds with every class spread as evenly as possible.

    For data without subjects. Fold sizes differ by at most one, and so do a class's counts in
    any two folds. Each fold's indices are sorted.
    """
    if not 2 <= k <= len(labels):
        raise FerkitError(f"stratified folds need 2 <= k <= the number of images ({len(labels)}), got k={k}")
    generator = torch.Generator().manual_seed(seed)
    fold_of = torch.empty(len(labels), dtype=torch.int64)
    start = 0
    for label in torch.unique(labels, sorted=True):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        # Each class starts dealing where the previous one stopped, so fold sizes stay level too.
        fold_of[members] = (start + torch.arange(len(members))) % k
        start = (start + len(members)) % k
    return [torch.nonzero(fold_of == fold).flatten() for fold in range(k)]


def subject_split(groups: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices 0..N-1 into (rest, held_out) by whole groups, holding out about `fraction` of the images.

    Subjects are taken in a seeded random order until the held-out images reach the target,
    so the held-out share can exceed `fraction` by up to one subject. Both index tensors are sorted.
    """
    if not 0.0 <= fraction < 1.0:
        raise FerkitError(f"the held-out fraction must be in [0, 1), got {fraction}")
    subjects, counts = torch.unique(groups, return_counts=True)
    generator = torch.Generator().manual_seed(seed)
    target = fraction * len(groups)
    taken: list[int] = []
    total = 0
    for i in torch.randperm(len(subjects), generator=generator).tolist():
        if total >= target:
            break
        taken.append(int(subjects[i]))
        total += int(counts[i])
    mask = torch.isin(groups, torch.tensor(taken, dtype=groups.dtype))
    return torch.nonzero(~mask).flatten(), torch.nonzero(mask).flatten()
