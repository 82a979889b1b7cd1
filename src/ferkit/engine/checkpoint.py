"""Checkpoints: everything needed to rebuild the model, written atomically, read without running code."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ferkit.config import TrainConfig
from ferkit.errors import FerkitError
from ferkit.fileio import atomic_write
from ferkit.models import create_model

META_KEYS = ("model", "stem", "attention", "reduction", "in_chans", "input_size", "drop_rate")


def model_meta(cfg: TrainConfig, classes: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The model's description as stored in checkpoints: architecture, classes, input and normalisation."""
    meta = {key: getattr(cfg, key) for key in META_KEYS}
    meta.update(classes=list(classes), num_classes=len(classes), mean=cfg.mean, std=cfg.std)
    return meta


def build_model(meta: dict[str, Any]) -> nn.Module:
    """A freshly initialised model of the architecture that ``meta`` describes."""
    return create_model(
        meta["model"],
        num_classes=meta["num_classes"],
        in_chans=meta["in_chans"],
        stem=meta["stem"],
        attention=meta["attention"],
        reduction=meta["reduction"],
        drop_rate=meta.get("drop_rate", 0.0),
    )


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a crash leaves the old file or the new one, never half of one."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a ferkit checkpoint with ``weights_only=True`` (never executes code from the file)."""
    path = Path(path)
    if not path.is_file():
        raise FerkitError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or foreign files
        raise FerkitError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or "meta" not in state or "model" not in state:
        raise FerkitError(f"{path}: not a ferkit checkpoint (no 'meta' and 'model' entries)")
    return state


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model stored in checkpoint ``path``, in eval mode on ``device``, with its metadata."""
    state = load_checkpoint(path)
    meta = state["meta"]
    try:
        model = build_model(meta)
        model.load_state_dict(state["model"])
    except (KeyError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0]
        raise FerkitError(f"{path}: checkpoint does not match its model description ({first})") from None
    return model.to(device).eval(), meta
