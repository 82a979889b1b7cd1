"""Model files for deployment: the ferkit format (one safetensors file holding weights and metadata) and ONNX."""
from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ferkit.engine.checkpoint import build_model, check_meta, load_weights
from ferkit.errors import FerkitError
from ferkit.fileio import atomic_write

WEIGHT_DTYPES = ("int8", "fp16", "fp32")


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


def save_ferkit_model(model: nn.Module, meta: dict[str, Any], path: str | Path, weights: str = "int8",
                      source: str | Path | None = None) -> Path:
    """Write ``model`` and ``meta`` to one safetensors file; ``weights`` sets how conv/linear weights are stored.

    ``source``, the file the model was read from, is never overwritten: writing onto it raises FerkitError.
    """
    from safetensors.torch import save_file

    if weights not in WEIGHT_DTYPES:
        raise FerkitError(f"weights={weights!r}: choose one of {', '.join(WEIGHT_DTYPES)}")
    if source is not None:
        check_not_input(path, source)
    meta = check_meta({**meta, "weights": weights}, path)
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
        "format": "ferkit", "meta": json.dumps(meta)}))
    return path


def _header_meta(header: dict[str, str], path: Path) -> dict[str, Any]:
    """The checked model metadata in a safetensors header."""
    if header.get("format") != "ferkit" or "meta" not in header:
        raise FerkitError(f"{path}: not a ferkit model file (no ferkit metadata)")
    try:
        meta = json.loads(header["meta"])
    except ValueError as e:
        raise FerkitError(f"{path}: model metadata is not valid JSON ({e}); the file is damaged") from None
    return check_meta(meta, path)


def load_ferkit_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model and metadata of a ferkit-format file, in eval mode, weights restored to float32."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FerkitError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = _header_meta(f.metadata() or {}, path)  # before any tensor is read or model built
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise FerkitError(f"{path}: not a readable safetensors file ({e})") from None
    state: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if key.endswith(".int8"):
            name = key[: -len(".int8")]
            scale = tensors.get(f"{name}.scale")
            if scale is None or tensor.ndim < 1 or scale.shape != tensor.shape[:1]:
                raise FerkitError(f"{path}: tensor {name} has no matching per-row scale; the file is damaged")
            state[name] = tensor.float() * scale.float().view(-1, *([1] * (tensor.ndim - 1)))
        elif not key.endswith(".scale"):
            state[key] = tensor.float()
    model = load_weights(build_model(meta, path), state, path)
    return model.to(device).eval(), meta


def onnx_bytes(model: nn.Module, meta: dict[str, Any], opset: int = 17) -> bytes:
    """``model`` as serialised ONNX: input ``input`` (N x C x H x W, normalised float, any N), output ``logits``."""
    import onnx

    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    example = torch.zeros(2, meta["in_chans"], meta["input_size"], meta["input_size"])
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # forward's return_features switch is a Python bool; tracing it as a constant is intended
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # the TorchScript exporter is deprecated but exports this model in 1 s; the dynamo one takes 10 s
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (example,), buffer, input_names=["input"], output_names=["logits"], opset_version=opset,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
        )
    proto = onnx.load_model_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = "ferkit_meta", json.dumps(meta)
    return proto.SerializeToString()


def export_onnx(model: nn.Module, meta: dict[str, Any], path: str | Path, opset: int = 17) -> Path:
    """Write ``model`` as ONNX (see :func:`onnx_bytes`) to ``path``."""
    data = onnx_bytes(model, meta, opset)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
