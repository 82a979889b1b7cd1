"""Shared fixtures: small generated data sets in the layouts users have."""
from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ferkit.data import FER_CLASSES, FERDataset

KAGGLE_FOLDERS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def fake_training_clock(monkeypatch, readings: Iterable[float]) -> None:
    """The training module's clock (``time.perf_counter``) giving ``readings`` one at a time, then the real clock."""
    from ferkit.engine import train as train_module

    ticks = iter(readings)
    real = time.perf_counter

    def perf_counter() -> float:
        for tick in ticks:
            return float(tick)
        return real()

    monkeypatch.setattr(train_module, "time", SimpleNamespace(perf_counter=perf_counter))


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


def pytest_configure(config):
    """Under pytest-xdist, each worker computes on one core: two workers on two cores each asking for two
    threads would run slower than one worker alone."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
        cv2.setNumThreads(1)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Give the next test the torch thread count this one started with: a run with ``threads=1`` sets it
    for the whole process."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# input 32: a 3x3 stride-2 conv on a 1x1 map (input 16) gets garbage bf16 weight gradients from
# oneDNN on this CPU (torch 2.13), a library bug outside ferkit.
# fp32: on this CPU bf16 convolutions on 32-pixel inputs are ~20x slower than fp32 (a oneDNN quirk);
# the bf16 path is covered at 48 pixels by the CLI test.
# resnet_tiny: these tests exercise the engine (train loop, resume, checkpoints, CLI), not ResNet-18;
# the 78 k-parameter model trains ~10x faster than the 11 M one and has the same layers and loss inputs.
# threads=1: on a busy CPU two threads on these small tensors wait on each other (a 2-epoch ResNet-18
# run took 31-57 s with two threads, 1.9 s with one, beside a training job); conftest restores the count.
FAST = {"model": "resnet_tiny", "stem": "imagenet", "input_size": 32, "batch_size": 32, "epochs": 2,
        "degrees": 0.0, "eval_batch_size": 64, "warmup_epochs": 0.5, "precision": "fp32", "threads": 1}
"""Config overrides that train the tiny registered model in seconds: the engine is under test, not ResNet-18."""


@pytest.fixture
def written_files(monkeypatch) -> list[str]:
    """The names of the files written through ``ferkit.fileio.atomic_write`` during the test, in order."""
    from ferkit import fileio

    written: list[str] = []
    real = fileio.atomic_write

    def recording(path, write):
        written.append(Path(path).name)
        return real(path, write)

    monkeypatch.setattr(fileio, "atomic_write", recording)
    return written

