"""Model files: the one module that reads and writes them, and the typed description they carry.

Two kinds of file hold a model:
- a training checkpoint (``best.pt`` / ``last.pt``), a ``torch.save`` mapping with ``meta`` (the model's
  description), ``model`` (its weights) and the trainer's state, read with ``weights_only=True``;
- a ferkit model file (``.safetensors``): the weights, int8/fp16/fp32, and the description as JSON in
  the header, checked before any tensor is read.

:func:`load` reads either; :func:`save` writes a model file, :func:`save_checkpoint` a checkpoint.
Loading never runs code from the file, and a description is checked before any model is built.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ferkit.data.augment import TTA_MODES
from ferkit.errors import FerkitError
from ferkit.fileio import atomic_write
from ferkit.models import create_model, list_models
from ferkit.models.attention import ATTENTION_LAYERS
from ferkit.models.ensemble import Ensemble
from ferkit.models.resnet import STEMS

MAX_CLASSES = 1000
MAX_MEMBERS = 8  # models in one ensemble file
INPUT_SIZES = (8, 1024)  # smallest and largest model input, pixels
WEIGHT_DTYPES = ("int8", "fp16", "fp32")
DEFAULT_CROP_MARGIN = 0.1
"""Face-box margin per side when a file names none: Haar boxes grown by 10 % of their side frame faces as
FER2013's 48x48 crops do (median over 164 PublicTest faces found by the detector at 4x scale: 0.096)."""


@dataclass(frozen=True)
class ModelMeta:
    """What a model file says about its model: enough to rebuild it, feed it and read its outputs."""

    model: str                      # registered architecture, e.g. resnet18
    stem: str                       # ResNet stem
    attention: str                  # attention layer in each residual branch
    reduction: int                  # channel-MLP reduction ratio of the attention layer
    in_chans: int                   # 1 grey, 3 colour
    input_size: int                 # square input side, pixels
    classes: tuple[str, ...]        # one name per output, in output order
    mean: float                     # input normalisation: (x / 255 - mean) / std
    std: float
    drop_rate: float = 0.0          # dropout before the classifier
    crop_margin: float = DEFAULT_CROP_MARGIN  # detector box grown by this fraction of its side, per side
    tta: str = "flip"               # test-time views the model is read with
    temperature: float = 1.0        # logits are divided by it (calibration)
    class_bias: tuple[float, ...] | None = None  # added to the logits first (rare-class adjustment)
    class_counts: tuple[int, ...] | None = None  # training images per class: the prior for that adjustment
    name: str | None = None         # the model's name, e.g. default
    weights: str | None = None      # how a model file stores conv/linear weights: int8, fp16 or fp32
    members: int = 1                # models of this architecture whose logits are averaged (an ensemble)
    info: dict[str, Any] = field(default_factory=dict, compare=False)  # provenance, calibration, accuracies

    ARCHITECTURE = ("model", "stem", "attention", "reduction", "in_chans")
    """The fields that fix the shapes of the model's weights."""
    INPUT = ("input_size", "mean", "std")
    """The fields that say what the model reads: its input side and the normalisation of its pixels."""

    @property
    def num_classes(self) -> int:
        """The number of outputs."""
        return len(self.classes)

    @classmethod
    def from_config(cls, cfg: Any, classes: tuple[str, ...] | list[str], **more: Any) -> ModelMeta:
        """The description of the model a training config builds for ``classes``."""
        arch = {key: getattr(cfg, key) for key in (*cls.ARCHITECTURE, *cls.INPUT, "drop_rate")}
        return cls.from_dict({**arch, "classes": list(classes), **more}, "training config")

    @classmethod
    def from_dict(cls, meta: Any, source: str | Path) -> ModelMeta:
        """The description in a file's metadata mapping; FerkitError naming ``source`` when it is not usable.

        Keys that are not fields (provenance, calibration figures) are kept in ``info``.
        """
        check_meta(meta, source)
        names = {f.name for f in dataclasses.fields(cls)} - {"info"}
        values = {key: value for key, value in meta.items() if key in names}
        values["classes"] = tuple(values["classes"])
        for key in ("class_bias", "class_counts"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        info = {key: value for key, value in meta.items() if key not in names and key != "num_classes"}
        return cls(**values, info=info)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready mapping stored in files (``num_classes`` included; unset optional fields left out)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "info" or (value is None and f.default is None) or (f.name == "members" and value == 1):
                continue  # a single model's file says nothing of members, as files before ensembles
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out["num_classes"] = self.num_classes
        return {**out, **self.info}

    def replace(self, **changes: Any) -> ModelMeta:
        """A copy with ``changes``; keys that are not fields go into ``info``; the result is checked."""
        current = {key: value for key, value in self.to_dict().items() if key != "num_classes"}  # follows classes
        return ModelMeta.from_dict({**current, **changes}, "model description")

    def architecture(self) -> dict[str, Any]:
        """The fields that fix the shapes of the weights, by name."""
        return {key: getattr(self, key) for key in self.ARCHITECTURE}


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _meta_rules(k: int) -> list[tuple[str, Callable[[Any], bool], str]]:
    """(key, test, what the value should be) for each metadata key; ``k`` is the number of classes."""
    low, high = INPUT_SIZES
    return [
        ("model", lambda v: isinstance(v, str) and v in list_models(), f"one of {', '.join(list_models())}"),
        ("stem", lambda v: isinstance(v, str) and v in STEMS, f"one of {', '.join(STEMS)}"),
        ("attention", lambda v: isinstance(v, str) and v in ATTENTION_LAYERS, f"one of {', '.join(ATTENTION_LAYERS)}"),
        ("reduction", lambda v: _whole(v) and v >= 1, "a whole number >= 1"),
        ("in_chans", lambda v: _whole(v) and v in (1, 3), "1 (grey) or 3 (colour)"),
        ("num_classes", lambda v: _whole(v) and v == k, f"the number of class names ({k})"),
        ("input_size", lambda v: _whole(v) and low <= v <= high, f"a whole number of pixels from {low} to {high}"),
        ("mean", _finite, "a finite number"),
        ("std", lambda v: _finite(v) and v > 0, "a finite number > 0"),
        ("drop_rate", lambda v: _finite(v) and 0 <= v < 1, "a finite number from 0 to below 1"),
        ("temperature", lambda v: _finite(v) and v > 0, "a finite number > 0"),
        ("class_bias", lambda v: v is None or (isinstance(v, (list, tuple)) and len(v) == k and all(map(_finite, v))),
         f"{k} finite numbers, one per class"),
        ("class_counts", lambda v: v is None or (isinstance(v, (list, tuple)) and len(v) == k
                                                 and all(_whole(c) and c >= 0 for c in v)),
         f"{k} whole numbers >= 0, one per class"),
        ("crop_margin", lambda v: _finite(v) and v > -0.5, "a finite number > -0.5"),
        ("tta", lambda v: isinstance(v, str) and v in TTA_MODES, f"one of {', '.join(TTA_MODES)}"),
        ("name", lambda v: v is None or isinstance(v, str), "a string"),
        ("weights", lambda v: v is None or v in WEIGHT_DTYPES, f"one of {', '.join(WEIGHT_DTYPES)}"),
        ("members", lambda v: _whole(v) and 1 <= v <= MAX_MEMBERS, f"a whole number from 1 to {MAX_MEMBERS}"),
    ]


REQUIRED_META = ("model", "stem", "attention", "reduction", "in_chans", "input_size", "classes", "mean", "std")


def _short(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({len(value)} items)" if isinstance(value, (list, tuple)) else text


def check_meta(meta: Any, source: str | Path) -> dict[str, Any]:
    """``meta`` if it is a mapping that describes a model ferkit can build and use, else FerkitError.

    Run before anything is built, so a damaged or foreign description (a huge class count, a wrong
    type, fewer class names than outputs) fails in one line naming ``source``, not inside torch.
    """
    where = f"{source}: bad model metadata"
    if not isinstance(meta, dict):
        raise FerkitError(f"{where}: expected a mapping of keys, got {type(meta).__name__}; "
                          "the file is damaged or was not written by ferkit")
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise FerkitError(f"{where}: missing {', '.join(missing)}; the file is damaged or was not written by ferkit")
    classes = meta["classes"]
    if not (isinstance(classes, (list, tuple)) and 1 <= len(classes) <= MAX_CLASSES and len(set(classes)) == len(classes)
            and all(isinstance(c, str) and c for c in classes)):
        raise FerkitError(f"{where}: classes={_short(classes)} should be 1 to {MAX_CLASSES} distinct class names, "
                          "one per output")
    for key, valid, expected in _meta_rules(len(classes)):
        if key in meta and not valid(meta[key]):
            raise FerkitError(f"{where}: {key}={_short(meta[key])} should be {expected}")
    return meta


# -- weights ---------------------------------------------------------------------------------------
def build_model(meta: ModelMeta) -> nn.Module:
    """A freshly initialised model of the architecture ``meta`` describes (an :class:`Ensemble` of ``members``
    such models when there are several)."""
    def one() -> nn.Module:
        return create_model(meta.model, num_classes=meta.num_classes, in_chans=meta.in_chans, stem=meta.stem,
                            attention=meta.attention, reduction=meta.reduction, drop_rate=meta.drop_rate)

    return Ensemble([one() for _ in range(meta.members)]) if meta.members > 1 else one()


ENSEMBLE_KEYS = (*ModelMeta.ARCHITECTURE, *ModelMeta.INPUT, "classes")
"""What the members of an ensemble must share: one architecture, one input, one set of classes."""


def ensemble(sources: list[str | Path]) -> tuple[nn.Module, ModelMeta, list[tuple[Path, ModelMeta]]]:
    """The models in ``sources`` (checkpoints, model files or shipped names) joined as one :class:`Ensemble`,
    with a description of it (the first member's, ``members`` set, no calibration) and each file read with
    its own description.

    Every member must share :data:`ENSEMBLE_KEYS`; FerkitError names the first that does not.
    """
    if not 2 <= len(sources) <= MAX_MEMBERS:
        raise FerkitError(f"an ensemble joins 2 to {MAX_MEMBERS} models; {len(sources)} given")
    paths = [model_path(source) for source in sources]
    loaded = [load(path) for path in paths]
    first = loaded[0][1]
    for path, (_, meta) in zip(paths, loaded):
        if meta.members > 1:
            raise FerkitError(f"{path}: is an ensemble of {meta.members} models already; give its members instead")
        differ = [f"{key} {getattr(meta, key)!r} (first: {getattr(first, key)!r})" for key in ENSEMBLE_KEYS
                  if getattr(meta, key) != getattr(first, key)]
        if differ:
            raise FerkitError(f"{path}: cannot join {paths[0]} in an ensemble: {', '.join(differ)}")
    # the first member's description without its own provenance, calibration and scores
    kept = {f.name for f in dataclasses.fields(first)} - {"info", "class_bias", "temperature", "name", "weights"}
    meta = ModelMeta.from_dict({**{k: v for k, v in first.to_dict().items() if k in kept}, "members": len(paths)},
                               "ensemble")
    return Ensemble([model for model, _ in loaded]).eval(), meta, [(path, m) for path, (_, m) in zip(paths, loaded)]


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


def _quantize(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """Symmetric int8 with one scale per output channel: about 1/4 of fp32, error under 0.4% of each row's max."""
    rows = tensor.float().reshape(len(tensor), -1)
    scale = rows.abs().amax(dim=1).clamp_min(1e-12) / 127
    q = torch.round(rows / scale[:, None]).to(torch.int8).reshape(tensor.shape)
    return {f"{name}.int8": q, f"{name}.scale": scale}


def _stored_as_int8(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and tensor.ndim >= 2 and tensor.numel() >= 1024


def quantize_weights(model: nn.Module) -> nn.Module:
    """``model`` with its conv/linear weights replaced by their int8 round trip: what an int8 file holds."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if _stored_as_int8(tensor):
                q = _quantize(name, tensor)
                scale = q[f"{name}.scale"].view(-1, *([1] * (tensor.ndim - 1)))
                tensor.copy_(q[f"{name}.int8"].float() * scale)
    return model


# -- files -----------------------------------------------------------------------------------------
def check_not_input(out: str | Path, source: str | Path) -> None:
    """FerkitError if writing ``out`` would replace ``source``, the model file it is made from."""
    out, source = Path(out), Path(source)
    same = out.resolve() == source.resolve()
    if not same and out.exists() and source.exists():
        try:
            same = os.path.samefile(out, source)  # hard links, case-insensitive file systems
        except OSError:
            same = False
    if same:
        raise FerkitError(f"{out}: this is the input model {source} itself, and writing it would replace the model "
                          "it is made from; choose another output file (--out)")


def save(model: nn.Module, meta: ModelMeta, path: str | Path, weights: str = "int8",
         source: str | Path | None = None) -> Path:
    """Write ``model`` and ``meta`` to one safetensors model file; ``weights`` sets how conv/linear weights are stored.

    ``source``, the file the model was read from, is never overwritten: writing onto it raises FerkitError.
    """
    from safetensors.torch import save_file

    if weights not in WEIGHT_DTYPES:
        raise FerkitError(f"weights={weights!r}: choose one of {', '.join(WEIGHT_DTYPES)}")
    if source is not None:
        check_not_input(path, source)
    # a description made by hand (not by from_dict / from_config / replace) is checked here, before writing
    header = check_meta(dataclasses.replace(meta, weights=weights).to_dict(), path)
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            continue  # BN batch counters: not needed for inference
        tensor = tensor.detach().cpu().contiguous()
        if weights == "int8" and _stored_as_int8(tensor):
            tensors.update(_quantize(name, tensor))
        elif weights == "fp32":
            tensors[name] = tensor.float()
        else:
            tensors[name] = tensor.half()
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={
        "format": "ferkit", "meta": json.dumps(header)}))
    return Path(path)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a training checkpoint ``state`` (``meta`` as a mapping, ``model`` weights, trainer state) atomically."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint's mapping, read with ``weights_only=True``; its ``meta`` checked."""
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


_MAX_META_BYTES = 1 << 20  # a description is a few KB; provenance and calibration figures included
_MAX_META_DEPTH = 16       # mappings and lists in it nest 2-3 deep


def _json_depth(text: str) -> int:
    """How deep ``[`` and ``{`` nest in JSON ``text`` (brackets inside strings not counted), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _parse_meta(text: str, path: Path) -> Any:
    """A model file's description JSON, bounded in size and depth before it is parsed."""
    if len(text) > _MAX_META_BYTES:
        raise FerkitError(f"{path}: model metadata is {len(text)} bytes, more than a description holds "
                          f"({_MAX_META_BYTES}); the file is damaged or not a ferkit model")
    if _json_depth(text) > _MAX_META_DEPTH:
        raise FerkitError(f"{path}: model metadata nests deeper than {_MAX_META_DEPTH} levels; "
                          "the file is damaged or not a ferkit model")
    try:
        return json.loads(text)
    except ValueError as e:
        raise FerkitError(f"{path}: model metadata is not valid JSON ({e}); the file is damaged") from None


_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I8": torch.int8}


def _expected_dtypes(weights: str | None, key: str) -> tuple[torch.dtype, ...]:
    """The dtypes a tensor called ``key`` may have in a model file whose conv/linear weights are ``weights``.

    A header can name any dtype for the same bytes (F32 <-> I32, F16 <-> BF16): each must be the one the
    writer (:func:`save`) uses, or the bytes would be read as other numbers.
    """
    if key.endswith(".int8"):
        return (torch.int8,)
    if key.endswith(".scale"):
        return (torch.float32,)
    return {"fp32": (torch.float32,), "fp16": (torch.float16,), "int8": (torch.float16,)}.get(weights or "", _FLOATS)


def _read_model_file(path: Path) -> tuple[ModelMeta, dict[str, torch.Tensor]]:
    """The description and float32 weights of a ferkit model file; the description is checked first."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != "ferkit" or "meta" not in header:
                raise FerkitError(f"{path}: not a ferkit model file (no ferkit metadata)")
            meta = ModelMeta.from_dict(_parse_meta(header["meta"], path), path)  # before any tensor is read
            for key in f.keys():
                dtype = f.get_slice(key).get_dtype()
                allowed = _expected_dtypes(meta.weights, key)
                if _SAFETENSORS_DTYPES.get(dtype) not in allowed:
                    names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
                    raise FerkitError(f"{path}: tensor {key} is stored as {dtype}, but a model file with "
                                      f"{meta.weights or 'float'} weights holds it as {names}; the file is damaged")
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise FerkitError(f"{path}: not a readable safetensors file ({e})") from None
    weights: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if key.endswith(".int8"):
            name = key[: -len(".int8")]
            scale = tensors.get(f"{name}.scale")
            if scale is None or tensor.ndim < 1 or scale.shape != tensor.shape[:1]:
                raise FerkitError(f"{path}: tensor {name} has no matching per-row scale; the file is damaged")
            weights[name] = tensor.float() * scale.float().view(-1, *([1] * (tensor.ndim - 1)))
        elif not key.endswith(".scale"):
            weights[key] = tensor.float()
    return meta, weights


def read(path: str | Path) -> tuple[ModelMeta, dict[str, torch.Tensor]]:
    """The description and weights in a checkpoint (.pt) or model file (.safetensors), no model built."""
    path = Path(path).expanduser()
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FerkitError(f"{path}: no such model file")
        return _read_model_file(path)
    state = load_checkpoint(path)
    return ModelMeta.from_dict(state["meta"], path), state["model"]


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelMeta]:
    """The model in a checkpoint (.pt) or model file (.safetensors), weights checked, in eval mode on ``device``."""
    meta, weights = read(path)
    return model_from(meta, weights, path, device), meta


def model_from(meta: ModelMeta, weights: dict[str, Any], source: str | Path,
               device: str | torch.device = "cpu") -> nn.Module:
    """The model ``meta`` describes with ``weights`` (checked, ``source`` named in errors), in eval mode on ``device``."""
    return load_weights(build_model(meta), weights, source).to(device).eval()


def shipped_models() -> list[str]:
    """The names of the models that ship inside ferkit (``ferkit/weights/NAME.safetensors``), sorted."""
    return sorted(p.name[: -len(".safetensors")] for p in resources.files("ferkit.weights").iterdir()
                  if p.name.endswith(".safetensors"))


def pretrained_path(name: str = "default") -> Path:
    """The shipped model file called ``name``."""
    path = Path(str(resources.files("ferkit.weights") / f"{name}.safetensors"))
    if not path.is_file():
        raise FerkitError(f"no shipped model called {name!r} (shipped: {', '.join(shipped_models()) or 'none'})")
    return path


def model_path(name_or_path: str | Path) -> Path:
    """A model file's path: ``name_or_path`` itself when it is a file or names one (.pt, .safetensors),
    else the shipped model of that name."""
    path = Path(name_or_path).expanduser()
    if path.is_file() or path.suffix in (".pt", ".safetensors") or len(path.parts) > 1:
        return path
    return pretrained_path(str(name_or_path))

