"""Knowledge distillation: the probabilities teacher models give each training image, as part of the target.

A run with ``teacher=[...]`` trains on ``teacher_mix`` of the teachers' probabilities plus the rest of the
labels' own target. The teachers read each training image as it is (no augmentation, the flip views averaged),
once, before the first epoch; the student then learns that clean reading from every augmented view of it, so
a teacher also passes on how a face reads before the light, the framing or the camera changed it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ferkit.engine import modelfile
from ferkit.engine.inference import predict_logits
from ferkit.errors import FerkitError
from ferkit.fileio import atomic_write

CHUNK = 2048
"""Images read per step of the progress bar."""
CACHE_NAME = "teacher.pt"
"""The teachers' probabilities, kept in the run folder so a resumed run reads them instead of recomputing them."""


def teacher_paths(sources: Sequence[str | Path]) -> list[Path]:
    """The model file of each teacher in ``sources`` (checkpoints, model files, shipped names); FerkitError
    for one that is not there."""
    paths = []
    for source in sources:
        path = modelfile.model_path(source)
        if not path.is_file():
            raise FerkitError(f"teacher {source!r}: no such checkpoint or model file")
        paths.append(path)
    return paths


def check_teachers(sources: Sequence[str | Path], classes: Sequence[str]) -> list[Path]:
    """The teachers' files, each checked to read ``classes`` in that order (read, not built: cheap)."""
    paths = teacher_paths(sources)
    for path in paths:
        meta, _ = modelfile.read(path)
        if list(meta.classes) != list(classes):
            raise FerkitError(f"teacher {path}: reads {', '.join(meta.classes)}; the data's classes are "
                              f"{', '.join(classes)} (a teacher must read the same classes in the same order)")
    return paths


def _fingerprint(paths: Sequence[Path], images: torch.Tensor, temperature: float, tta: str) -> str:
    """What cached probabilities were computed from: the teachers' bytes, the images, the temperature, the views."""
    digest = hashlib.sha256(f"{tuple(images.shape)} {temperature!r} {tta}".encode())
    digest.update(images.contiguous().cpu().numpy().tobytes())
    for path in paths:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _cached(cache: Path, key: str | None, shape: tuple[int, int]) -> torch.Tensor | None:
    """The probabilities kept in ``cache`` under ``key`` (any key when None), or None (no file, another key, or not
    a readable one)."""
    if not cache.is_file():
        return None
    try:
        saved = torch.load(cache, map_location="cpu", weights_only=True)
    except Exception:  # a cut-off or foreign file: computed again and replaced
        return None
    probs = saved.get("probabilities") if isinstance(saved, dict) else None
    if key is not None and saved.get("key") != key:
        return None
    if not isinstance(probs, torch.Tensor) or tuple(probs.shape) != shape:
        return None
    return probs


@torch.no_grad()
def teacher_probabilities(teachers: Sequence[str | Path], images: torch.Tensor, classes: Sequence[str], *,
                          temperature: float = 1.0, tta: str = "flip", device: torch.device | str = "cpu",
                          precision: str = "fp32", batch_size: int = 512, cache: Path | None = None,
                          reuse: bool = False, progress: bool = False,
                          log: Callable[[str], None] = print) -> torch.Tensor:
    """N x K probabilities of the uint8 ``images``: the softmax of the mean raw logits of the ``teachers``
    (checkpoints, model files, shipped names; each a mean over its ``tta`` views, no class bias) over ``temperature``.

    ``progress`` shows a bar per teacher. With ``cache`` (a file), probabilities computed from the same teachers,
    images, temperature and views are read from it instead, and new ones are written to it. With ``reuse`` too,
    those in the cache are taken whatever teachers they came from, so a resumed run keeps the targets it started
    with after a teacher's file was replaced (a new ``default``) or deleted.
    """
    if reuse and cache is not None:
        kept = _cached(cache, None, (len(images), len(classes)))
        if kept is not None:
            log(f"teacher: probabilities of {len(images)} images read from {cache}, as the run started with them")
            return kept
    paths = check_teachers(teachers, classes)
    key = _fingerprint(paths, images, temperature, tta)
    kept = _cached(cache, key, (len(images), len(classes))) if cache is not None else None
    if kept is not None:
        log(f"teacher: probabilities of {len(images)} images read from {cache}")
        return kept
    total = torch.zeros(len(images), len(classes))
    for path in paths:
        model, meta = modelfile.load(path, device)
        log(f"teacher: reading {len(images)} training images with {path}")
        starts = range(0, len(images), CHUNK)
        for start in tqdm(starts, desc=f"teacher {path.name}", unit="chunk", disable=not progress, leave=False):
            total[start: start + CHUNK] += predict_logits(
                model, images[start: start + CHUNK], meta, tta=tta, batch_size=batch_size, precision=precision,
                channels_last=False, device=device).cpu()
    probs = F.softmax(total / len(paths) / temperature, dim=1)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda tmp: torch.save({"key": key, "probabilities": probs}, tmp))
    return probs


def mixed_targets(base: torch.Tensor, teacher: torch.Tensor, mix: float) -> torch.Tensor:
    """``mix`` of the teacher's probabilities plus ``1 - mix`` of ``base``, the labels' target: class indices
    (made one-hot) or N x K distributions."""
    if base.dim() == 1:
        base = F.one_hot(base, teacher.shape[1]).float()
    return mix * teacher.to(base.device) + (1 - mix) * base
