"""Tests for ferkit.data's in-memory form (FERDataset, its optional fields, stratified splits) and folds."""
from __future__ import annotations

import re

import pytest
import torch

from ferkit.data import FER_CLASSES, FERDataset, stratified_folds, stratified_split, subject_folds, subject_split
from ferkit.errors import FerkitError

# ---- the in-memory form ----

def make_dataset(n: int = 6, **overrides) -> FERDataset:
    fields = dict(
        images=torch.zeros(n, 1, 4, 4, dtype=torch.uint8),
        labels=torch.arange(n, dtype=torch.int64) % 7,
        classes=FER_CLASSES,
        split="train",
        source="memory",
    )
    return FERDataset(**{**fields, **overrides})


def test_dataset_counts_and_subset() -> None:
    data = make_dataset(9)
    assert len(data) == 9
    assert data.class_counts() == {
        "angry": 2, "disgust": 2, "fear": 1, "happy": 1, "sad": 1, "surprise": 1, "neutral": 1
    }
    part = data.subset(torch.tensor([0, 7, 8]))
    assert part.labels.tolist() == [0, 0, 1]
    assert part.images.shape == (3, 1, 4, 4)
    assert (part.split, part.source, part.classes) == ("train", "memory", FER_CLASSES)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"images": torch.zeros(6, 1, 4, 4)}, "uint8"),
        ({"images": torch.zeros(6, 4, 4, dtype=torch.uint8)}, "N x C x H x W"),
        ({"images": torch.zeros(6, 2, 4, 4, dtype=torch.uint8)}, "C = 1 or 3"),
        ({"labels": torch.zeros(6, dtype=torch.int32)}, "int64"),
        ({"labels": torch.zeros(5, dtype=torch.int64)}, "6 images but 5 labels"),
        ({"labels": torch.full((6,), 7, dtype=torch.int64)}, "0..6"),
        ({"split": "dev"}, "split must be one of"),
    ],
)
def test_dataset_validation(overrides: dict, message: str) -> None:
    with pytest.raises(FerkitError, match=message):
        make_dataset(**overrides)


def test_stratified_split_keeps_proportions_and_is_deterministic() -> None:
    labels = torch.tensor([0] * 10 + [1] * 20 + [2] * 30)
    rest, held = stratified_split(labels, 0.1, seed=3)
    assert torch.bincount(labels[held]).tolist() == [1, 2, 3]
    assert sorted(rest.tolist() + held.tolist()) == list(range(60))
    again_rest, again_held = stratified_split(labels, 0.1, seed=3)
    assert torch.equal(held, again_held) and torch.equal(rest, again_rest)


# ---- the in-memory form's optional fields ----

def test_subset_carries_groups_and_soft_labels() -> None:
    data = FERDataset(
        images=torch.zeros(4, 1, 2, 2, dtype=torch.uint8), labels=torch.tensor([0, 1, 2, 3]),
        classes=FER_CLASSES, split="train", source="memory",
        groups=torch.tensor([1, 0, 1, 0]), group_names=("S1", "S2"),
        soft_labels=torch.eye(7)[:4],
    )
    part = data.subset(torch.tensor([2, 3]))
    assert part.groups.tolist() == [1, 0] and part.group_names == ("S1", "S2")
    assert torch.equal(part.soft_labels, torch.eye(7)[2:4])
    base = (data.images, data.labels, FER_CLASSES, "train", "m")
    with pytest.raises(FerkitError, match=re.escape("groups must be int64 with shape (4,)")):
        FERDataset(*base, groups=torch.tensor([0, 1]), group_names=("a", "b"))
    with pytest.raises(FerkitError, match=re.escape("groups must index group_names (1 names)")):
        FERDataset(*base, groups=torch.tensor([0, 1, 0, 0]), group_names=("a",))
    with pytest.raises(FerkitError, match=re.escape("soft_labels must be float32 with shape (4, 7)")):
        FERDataset(*base, soft_labels=torch.zeros(4, 8))


# ---- folds ----

SUBJECT_SIZES = [7, 1, 3, 5, 2, 2, 4, 6, 1, 3]


def subject_groups() -> torch.Tensor:
    groups = torch.cat([torch.full((n,), s) for s, n in enumerate(SUBJECT_SIZES)])
    return groups[torch.randperm(len(groups), generator=torch.Generator().manual_seed(0))]


@pytest.mark.parametrize("k", [2, 3, 5])
def test_subject_folds_disjoint_cover_and_balanced(k: int) -> None:
    groups = subject_groups()
    folds = subject_folds(groups, k, seed=4)
    assert len(folds) == k
    assert sorted(torch.cat(folds).tolist()) == list(range(len(groups)))
    subjects = [set(groups[f].tolist()) for f in folds]
    assert all(not subjects[a] & subjects[b] for a in range(k) for b in range(a + 1, k))
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= max(SUBJECT_SIZES)
    assert all(torch.equal(a, b) for a, b in zip(folds, subject_folds(groups, k, seed=4)))


def test_stratified_folds_and_subject_split() -> None:
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 4)
    folds = stratified_folds(labels, 3, seed=1)
    assert sorted(torch.cat(folds).tolist()) == list(range(21))
    assert sorted(len(f) for f in folds) == [7, 7, 7]
    for c in range(3):
        per_fold = [int((labels[f] == c).sum()) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1
    with pytest.raises(FerkitError, match="k <= the number of images"):
        stratified_folds(labels[:2], 3)

    groups = subject_groups()
    rest, held = subject_split(groups, 0.25, seed=2)
    assert sorted(rest.tolist() + held.tolist()) == list(range(len(groups)))
    assert not set(groups[rest].tolist()) & set(groups[held].tolist())
    assert 0.25 * len(groups) <= len(held) < 0.25 * len(groups) + max(SUBJECT_SIZES)
