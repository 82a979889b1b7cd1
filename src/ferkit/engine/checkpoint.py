"""Checkpoints: everything needed to rebuild the model, written atomically, read without running code."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ferkit.config import TrainConfig
from ferkit.data.augment import TTA_MODES
from ferkit.errors import FerkitError
from ferkit.fileio import atomic_write
from ferkit.models import create_model, list_models
from ferkit.models.attention import ATTENTION_LAYERS
from ferkit.models.resnet import STEMS

META_KEYS = ("model", "stem", "attention", "reduction", "in_chans", "input_size", "drop_rate")
REQUIRED_META = ("model", "stem", "attention", "reduction", "in_chans", "input_size", "classes", "num_classes",
                 "mean", "std")
MAX_CLASSES = 1000
INPUT_SIZES = (8, 1024)  # smallest and largest model input, pixels


def model_meta(cfg: TrainConfig, classes: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The model's description as stored in checkpoints: architecture, classes, input and normalisation."""
    meta = {key: getattr(cfg, key) for key in META_KEYS}
    meta.update(classes=list(classes), num_classes=len(classes), mean=cfg.mean, std=cfg.std)
    return meta


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _meta_rules(k: Any) -> list[tuple[str, Callable[[Any], bool], str]]:
    """(key, test, what the value should be) for each metadata key; ``k`` is the file's num_classes."""
    low, high = INPUT_SIZES
    return [
        ("model", lambda v: isinstance(v, str) and v in list_models(), f"one of {', '.join(list_models())}"),
        ("stem", lambda v: isinstance(v, str) and v in STEMS, f"one of {', '.join(STEMS)}"),
        ("attention", lambda v: isinstance(v, str) and v in ATTENTION_LAYERS, f"one of {', '.join(ATTENTION_LAYERS)}"),
        ("reduction", lambda v: _whole(v) and v >= 1, "a whole number >= 1"),
        ("in_chans", lambda v: _whole(v) and v in (1, 3), "1 (grey) or 3 (colour)"),
        ("num_classes", lambda v: _whole(v) and 1 <= v <= MAX_CLASSES, f"a whole number from 1 to {MAX_CLASSES}"),
        ("input_size", lambda v: _whole(v) and low <= v <= high, f"a whole number of pixels from {low} to {high}"),
        ("mean", _finite, "a finite number"),
        ("std", lambda v: _finite(v) and v > 0, "a finite number > 0"),
        ("classes", lambda v: isinstance(v, (list, tuple)) and len(v) == k and len(set(v)) == k
         and all(isinstance(c, str) and c for c in v), f"{k} distinct class names, one per output (num_classes={k})"),
        ("drop_rate", lambda v: _finite(v) and 0 <= v < 1, "a finite number from 0 to below 1"),
        ("temperature", lambda v: _finite(v) and v > 0, "a finite number > 0"),
        ("class_bias", lambda v: isinstance(v, (list, tuple)) and len(v) == k and all(map(_finite, v)),
         f"{k} finite numbers, one per class (num_classes={k})"),
        ("crop_margin", lambda v: _finite(v) and v > -0.5, "a finite number > -0.5"),
        ("tta", lambda v: isinstance(v, str) and v in TTA_MODES, f"one of {', '.join(TTA_MODES)}"),
    ]


def _short(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({len(value)} items)" if isinstance(value, (list, tuple)) else text


def check_meta(meta: Any, source: str | Path) -> dict[str, Any]:
    """``meta`` if it describes a model ferkit can build and use, else FerkitError naming ``source`` and the problem.

    Every model loader calls this before building anything, so a damaged or foreign description
    (a huge class count, a wrong type, fewer class names than outputs) fails in one line, not in torch.
    """
    where = f"{source}: bad model metadata"
    if not isinstance(meta, dict):
        raise FerkitError(f"{where}: expected a mapping of keys, got {type(meta).__name__}; "
                          "the file is damaged or was not written by ferkit")
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise FerkitError(f"{where}: missing {', '.join(missing)}; the file is damaged or was not written by ferkit")
    for key, valid, expected in _meta_rules(meta["num_classes"]):
        if key in meta and not valid(meta[key]):
            raise FerkitError(f"{where}: {key}={_short(meta[key])} should be {expected}")
    return meta


def load_weights(model: nn.Module, weights: dict[str, Any], source: str | Path) -> nn.Module:
    """Copy ``weights`` into ``model``; FerkitError naming ``source`` for a missing, extra, misshapen or NaN tensor."""
    expected = model.state_dict()
    # BatchNorm's batch counters only count training steps; ferkit model files leave them out.
    missing = [key for key in expected if key not in weights and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in weights if key not in expected]
    if missing or unexpected:
        raise FerkitError(f"{source}: the set of tensors does not match the model it describes "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for key, tensor in expected.items():  # in model order, so the first mismatch named is the earliest layer
        if key not in weights:
            continue
        value = weights[key]
        if not isinstance(value, torch.Tensor) or value.shape != tensor.shape:
            found = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise FerkitError(f"{source}: tensor {key} is {found} but the model it describes needs "
                              f"{list(tensor.shape)}; the file is damaged or its metadata does not match its weights")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise FerkitError(f"{source}: tensor {key} holds NaN or infinite values; the weights are damaged "
                              "(training diverged or the file is corrupt): use another checkpoint")
    model.load_state_dict(weights, strict=False)
    return model


def build_model(meta: dict[str, Any], source: str | Path = "model description") -> nn.Module:
    """A freshly initialised model of the architecture that ``meta`` describes, checked by :func:`check_meta`."""
    check_meta(meta, source)
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
    """Read a ferkit checkpoint with ``weights_only=True`` (never executes code from the file); its metadata checked."""
    path = Path(path)
    if not path.is_file():
        raise FerkitError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or foreign files
        raise FerkitError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or "meta" not in state or "model" not in state:
        raise FerkitError(f"{path}: not a ferkit checkpoint (no 'meta' and 'model' entries)")
    if not isinstance(state["model"], dict):
        raise FerkitError(f"{path}: not a ferkit checkpoint ('model' is not a mapping of tensors)")
    check_meta(state["meta"], path)
    return state


def model_from_state(state: dict[str, Any], meta: dict[str, Any], path: str | Path,
                     device: str | torch.device = "cpu") -> nn.Module:
    """The model of a loaded checkpoint ``state`` described by ``meta``, weights checked, in eval mode on ``device``."""
    model = load_weights(build_model(meta, path), state["model"], path)
    return model.to(device).eval()


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model stored in checkpoint ``path``, in eval mode on ``device``, with its metadata."""
    state = load_checkpoint(path)
    return model_from_state(state, state["meta"], path, device), state["meta"]
