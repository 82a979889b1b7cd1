"""Training configuration: typed defaults in one dataclass, YAML files, ``key=value`` overrides."""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import yaml

from ferkit.errors import FerkitError


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``configs/defaults.yaml`` lists every key with its
    default and units; the choice keys accept the names of the registries noted beside them."""

    # model
    model: str = "resnet18"              # registered backbone (ferkit.models.list_models())
    stem: str = "cifar"                  # input stem (ferkit.models.resnet.STEMS)
    attention: str = "cbam"              # on every residual branch (ferkit.models.attention.ATTENTION_LAYERS)
    reduction: int = 16                  # channel-MLP reduction ratio r
    in_chans: int = 1                    # 1 grey, 3 colour; data is converted to this
    input_size: int = 48                 # model input, pixels (square); data is resized to this
    drop_rate: float = 0.0               # dropout before the classifier
    init: str = ""                       # start from a checkpoint (.pt), model file (.safetensors) or shipped model (default); "" = random
    freeze: int = 0                      # leading backbone parts kept fixed: 0 none, 1 the stem, 2 stem + stage 1, ... 5 all but the classifier
    # loss: L = L_S + lam * L_aux
    loss: str = "softmax"                # the L_aux term (ferkit.losses.list_losses())
    lam: float = 0.5                     # weight lambda of the center/island term
    lambda1: float = 10.0                # island loss: weight of the pairwise center-cosine term
    aux_normalize: bool = True           # center term on unit-length features and centers (false: raw, Wen et al.)
    label_smoothing: float = 0.0         # cross-entropy label smoothing
    class_balance: bool = False          # weigh each class's cross-entropy by its inverse training frequency
    soft_labels: bool = False            # train on the data's soft labels (FER+ annotator votes) instead of its hard ones
    soft_mix: float = 1.0                # soft_labels: share of the soft labels in the target, the rest the one-hot label
    teacher: list[str] = field(default_factory=list)  # distillation: models whose probabilities join the target
    teacher_mix: float = 0.5             # teacher: its share of the target, the rest the labels' target
    teacher_temperature: float = 1.0     # teacher: its logits are divided by this before the softmax
    center_lr: float = 0.5               # learning rate of the class centers (own SGD group, no decay)
    # optimisation
    epochs: int = 200                    # full passes over the training split
    batch_size: int = 128                # images per step
    lr: float = 0.1                      # peak learning rate for batch 128
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4           # the paper prints 0.05, likely a misprint for SGD
    decay_norm_bias: bool = False        # also decay BatchNorm weights and biases (off: conv/linear weights only)
    schedule: str = "cosine"             # cosine | multistep
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # multistep, as fractions of epochs
    gamma: float = 0.1                   # multistep decay factor
    warmup_epochs: float = 1.0           # linear warmup from 0, in epochs
    time_limit_min: float = 0.0          # skip epochs that would end past this many minutes (teachers read included)
    fit_time: bool = False               # with time_limit_min: as many epochs as fit the limit, the schedule ending with them
    # augmentation (training), on normalised tensors on the device
    pad: int = 4                         # random-crop padding, pixels
    flip: bool = True                    # horizontal flip
    degrees: float = 10.0                # rotation range, +/- degrees
    scale: list[float] = field(default_factory=lambda: [1.0, 1.0])  # zoom range ([0.8, 1.0] zooms in <= 20%)
    translate: float = 0.0               # extra shift, fraction of half the image
    erase: float = 0.0                   # random-erasing probability
    photometric: float = 0.0             # gamma/contrast/brightness jitter strength (0.3: +/-30 % contrast)
    noise: float = 0.0                   # largest Gaussian pixel noise (std, pixels in [0, 1])
    blur: float = 0.0                    # probability of a 3x3 blur per image
    aspect: float = 0.0                  # aspect-ratio jitter: one axis stretched, the other squeezed, by <= 1 + aspect
    perspective: float = 0.0             # perspective tilt (head pose), projective terms in +/- perspective
    lowres: float = 0.0                  # probability of a low-resolution view (shrunk to 12-32 px, enlarged back)
    exposure: float = 0.0                # probability of an over- or under-exposed view (highlights clipped)
    mixup: float = 0.0                   # mixup: Beta(alpha, alpha) of the blend of two images and their targets (0: off)
    cutmix: float = 0.0                  # CutMix: Beta(alpha, alpha) of the pasted rectangle's complement (0: off)
    mix_prob: float = 1.0                # share of batches mixed when mixup or cutmix is on
    tta: str = "flip"                    # test-time views for validation and test (ferkit.data.augment.TTA_MODES)
    mean: float = 0.5                    # normalisation of [0, 1] pixels
    std: float = 0.25
    # data
    val_fraction: float = 0.1            # validation share carved from train when the data has no val split
    skip_bad: bool = False               # skip unreadable images instead of stopping
    classes: int = 0                     # FER+: 7 or 8 classes (8 keeps contempt); 0 = the data's own
    hard_labels: str = "ferplus"         # FER+ with fer2013.csv: ferplus (majority vote) | fer2013 (its own labels)
    # machine
    device: str = "auto"                 # auto | cpu | cuda | cuda:N | mps
    precision: str = "bf16"              # autocast dtype (ferkit.precision.PRECISIONS)
    channels_last: bool = True           # NHWC memory format
    compile: bool = False                # torch.compile the model
    sync_bn: bool = False                # torchrun: synchronise BatchNorm statistics across processes
    threads: int = 0                     # torch intra-op threads; 0 = library default
    eval_batch_size: int = 512
    seed: int = 0


def _is_type(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        (item,) = set(typing.get_args(annotation)) or {Any}
        return isinstance(value, (list, tuple)) and all(_is_type(v, item) for v in value)
    if origin in (typing.Union, types.UnionType):
        return any(_is_type(value, a) for a in typing.get_args(annotation))
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is Any:
        return True
    return isinstance(value, annotation)


_HINTS = typing.get_type_hints(TrainConfig)
_SCHEDULES = ("cosine", "multistep")  # the learning-rate schedules engine/train.py implements


def _choices() -> dict[str, tuple[str, ...]]:
    """The names each choice key accepts, read from the registries that build them."""
    # Imported on use, not at the top: the registries import torch, and importing this module should not.
    from ferkit.data.augment import TTA_MODES
    from ferkit.data.ferplus import HARD_LABELS
    from ferkit.losses import list_losses
    from ferkit.models.attention import ATTENTION_LAYERS
    from ferkit.models.resnet import STEMS
    from ferkit.precision import PRECISIONS

    return {"stem": tuple(STEMS), "attention": tuple(ATTENTION_LAYERS), "loss": tuple(list_losses()),
            "schedule": _SCHEDULES, "tta": TTA_MODES, "precision": PRECISIONS, "hard_labels": HARD_LABELS}


# What each numeric value must satisfy, checked when a config is read so a bad value stops the
# run before anything is written; the text completes "must be ...".
_LIMITS: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: 0 < v <= 10, "> 0 and at most 10 (0.1 is usual for SGD at batch 128)"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "eval_batch_size": (lambda v: v >= 1, "at least 1"),
    "epochs": (lambda v: v >= 1, "at least 1"),
    "warmup_epochs": (lambda v: v >= 0, "at least 0"),
    "weight_decay": (lambda v: v >= 0, "at least 0"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "erase": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "blur": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "lowres": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "exposure": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "mixup": (lambda v: 0 <= v <= 10, "an alpha in [0, 10] (0: off; 0.2-1 is usual)"),
    "cutmix": (lambda v: 0 <= v <= 10, "an alpha in [0, 10] (0: off; 1 is usual)"),
    "mix_prob": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "aspect": (lambda v: 0 <= v <= 1, "in [0, 1] (0.2: one side up to 1.2x the other)"),
    "perspective": (lambda v: 0 <= v <= 0.5, "in [0, 0.5]"),
    "soft_mix": (lambda v: 0 <= v <= 1, "in [0, 1] (1: the soft labels alone)"),
    "teacher_mix": (lambda v: 0 <= v <= 1, "in [0, 1] (1: the teacher alone)"),
    "teacher_temperature": (lambda v: 0.1 <= v <= 20, "in [0.1, 20]"),
    "classes": (lambda v: v in (0, 7, 8), "0 (the data's own), 7 or 8"),
    "photometric": (lambda v: v >= 0, "at least 0"),
    "noise": (lambda v: v >= 0, "at least 0"),
    "pad": (lambda v: v >= 0, "at least 0"),
    "input_size": (lambda v: 8 <= v <= 1024, "in 8..1024 pixels"),
    "in_chans": (lambda v: v in (1, 3), "1 (grey) or 3 (colour)"),
    "drop_rate": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "time_limit_min": (lambda v: v >= 0, "at least 0 (0 = no limit)"),
    "threads": (lambda v: v >= 0, "at least 0 (0 = library default)"),
    "freeze": (lambda v: 0 <= v <= 5, "in 0..5 (0: none, 1: the stem, 2-5: the stem and that many stages)"),
}
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error message stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_value(key: str, value: Any, source: str) -> None:
    """Raise FerkitError when ``value`` is of the right type but not a usable ``key``."""
    where = f"{source}: {key}={_shown(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        raise FerkitError(f"{where} must be a finite number")
    if key in _LIMITS and not _LIMITS[key][0](value):
        raise FerkitError(f"{where} must be {_LIMITS[key][1]}")
    if key == "device" and not _DEVICE.fullmatch(value):
        raise FerkitError(f"{where} is not a device; use auto, cpu, cuda, cuda:N or mps")
    if key == "model":
        from ferkit.models import list_models  # imports torch: only when a config names a model

        if value not in list_models():
            raise FerkitError(f"{where} is not a registered model; use one of {', '.join(list_models())}")


def _check_key(key: str, source: str) -> None:
    if key not in _HINTS:
        close = difflib.get_close_matches(key, list(_HINTS), n=1) if isinstance(key, str) else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise FerkitError(f"{source}: unknown config key {_shown(key)}{hint}")


def _coerce(key: str, value: Any, source: str) -> Any:
    if _HINTS[key] == list[str] and isinstance(value, str):
        value = [value]  # teacher=default: one name is a list of one
    if _HINTS[key] is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not _is_type(value, _HINTS[key]):
        raise FerkitError(f"{source}: {key}={_shown(value)} should be of type {_HINTS[key]}")
    choices = _choices().get(key)
    if choices is not None and value not in choices:
        raise FerkitError(f"{source}: {key}={_shown(value)} is not one of {', '.join(choices)}")
    _check_value(key, value, source)
    return value


_DEFAULTS = "defaults"  # configs/defaults.yaml: every key at its default, documented; loads, but is no recipe


def shipped_configs() -> list[str]:
    """Names of the recipes that ship with ferkit (usable as ``--config NAME``); ``defaults`` is not listed."""
    names = (p.name[:-5] for p in resources.files("ferkit.configs").iterdir() if p.name.endswith(".yaml"))
    return sorted(name for name in names if name != _DEFAULTS)


def _resolve_path(config: str | Path) -> Path:
    path = Path(config)
    if path.is_file():
        return path
    shipped = resources.files("ferkit.configs") / f"{config}.yaml"
    if shipped.is_file():
        return Path(str(shipped))
    raise FerkitError(f"{config}: no such config file or shipped config (shipped: {', '.join(shipped_configs())})")


_MAX_CONFIG_BYTES = 1 << 20  # a config is a few dozen keys; a larger file is not one


class _ConfigLoader(yaml.SafeLoader):
    """safe_load without aliases: a config never needs them, and nested ones (a "billion laughs") make
    a 10-line file expand to gigabytes."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"aliases (*{event.anchor}) are not allowed in ferkit configs "
                                 f"(line {event.start_mark.line + 1}); write the value out")
        return super().compose_node(parent, index)


def _yaml(text: str) -> Any:
    """``text`` parsed as YAML without aliases (see :class:`_ConfigLoader`)."""
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)


def load_config(config: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file or shipped config name ``config``, then ``key=value`` overrides."""
    values: dict[str, Any] = {}
    if config is not None:
        path = _resolve_path(config)
        size = path.stat().st_size
        if size > _MAX_CONFIG_BYTES:
            raise FerkitError(f"{path}: {size} bytes is too large for a config (at most {_MAX_CONFIG_BYTES})")
        try:
            loaded = _yaml(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise FerkitError(f"{path}: not valid YAML ({str(e).splitlines()[0][:200]})") from None
        if not isinstance(loaded, dict):
            raise FerkitError(f"{path}: expected a mapping of config keys")
        for key, value in loaded.items():
            _check_key(key, str(path))
            values[key] = _coerce(key, value, str(path))
    items = overrides.items() if isinstance(overrides, dict) else (split_override(o) for o in overrides or [])
    for key, value in items:
        _check_key(key, "override")
        values[key] = _coerce(key, value, "override")
    return TrainConfig(**values)


def split_override(text: str) -> tuple[str, Any]:
    """``"key=value"`` -> (key, value parsed as YAML, or the text itself where it is not YAML)."""
    if "=" not in text:
        raise FerkitError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), _yaml(raw)
    except yaml.YAMLError:
        return key.strip(), raw


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """A plain dict of the config (JSON/YAML-safe)."""
    return dataclasses.asdict(cfg)
