"""Shared fixtures: small generated data sets in the layouts users have."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ferkit.data import FER_CLASSES, FERDataset

KAGGLE_FOLDERS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def pattern_images(labels: np.ndarray, size: int = 16, seed: int = 0) -> np.ndarray:
    """Grey images whose class is readable: a bright horizontal band at a row set by the label, plus noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(len(labels), size, size)).astype(np.uint8)
    band = size // len(FER_CLASSES)
    for i, label in enumerate(labels):
        images[i, label * band : label * band + band, :] = 220
    return images


def write_kaggle_tree(root: Path, per_class: dict[str, int], size: int = 16) -> Path:
    """A FER2013 Kaggle folder tree with ``per_class[prefix]`` JPEG-free PNG images per class and split prefix."""
    folders = {"Training": "train", "PublicTest": "test", "PrivateTest": "test"}
    for seed, (prefix, count) in enumerate(per_class.items()):
        for folder in KAGGLE_FOLDERS:
            label = FER_CLASSES.index(folder)
            images = pattern_images(np.full(count, label), size, seed * 100 + label)
            out = root / folders[prefix] / folder
            out.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(images):
                Image.fromarray(img).save(out / f"{prefix}_{label}{i:04d}.png")
    return root


def tiny_split_dict() -> dict[str, FERDataset]:
    """Learnable in-memory train/val/test splits of 16x16 images, 7 classes."""
    out = {}
    for seed, (split, n) in enumerate({"train": 140, "val": 35, "test": 35}.items()):
        labels = np.arange(n) % len(FER_CLASSES)
        images = torch.from_numpy(pattern_images(labels, 16, seed)).unsqueeze(1)
        out[split] = FERDataset(images, torch.from_numpy(labels).long(), FER_CLASSES, split, f"generated:{split}")
    return out


@pytest.fixture
def tiny_splits() -> dict[str, FERDataset]:
    """The splits of :func:`tiny_split_dict`, fresh for each test."""
    return tiny_split_dict()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep every test's decode cache out of the user's home."""
    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
