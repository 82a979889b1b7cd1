"""Inference at the bottom of the engine: logits with test-time views, the logit adjustment a model file
asks for, and ONNX sessions of a model. ``predict``, ``evaluate``, ``export`` and ``analysis`` all read a
model's outputs through here."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ferkit.data.augment import TTA_VIEW_COUNTS, prepare, tta_views
from ferkit.engine.modelfile import ModelMeta
from ferkit.engine.runtime import autocast
from ferkit.errors import FerkitError

ONNX_CACHE_FORMAT = 1  # bump when the export changes, so older cached files are not used


@torch.no_grad()
def predict_logits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    meta: ModelMeta,
    tta: str = "flip",
    batch_size: int = 512,
    precision: str = "bf16",
    channels_last: bool = True,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Logits (N x K, float32, on ``device``) of uint8 ``images``, averaged over the TTA views.

    ``forward`` maps a normalised float batch to logits: a model in eval mode, or another backend.
    """
    device = torch.device(device)
    views_per_image = TTA_VIEW_COUNTS.get(tta, 1)  # an unknown mode is reported by tta_views
    # All views of a chunk go through the model in one call; the chunk keeps that call within batch_size.
    chunk = max(1, batch_size // views_per_image)
    out = []
    for start in range(0, len(images), chunk):
        x = prepare(images[start : start + chunk].to(device), meta.in_chans, meta.input_size,
                    meta.mean, meta.std)
        views = torch.cat(tta_views(x, tta))
        if channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = forward(views).float()
        out.append(logits.view(-1, len(x), logits.shape[-1]).mean(dim=0))
    if not out:
        return torch.zeros(0, meta.num_classes, device=device)
    return torch.cat(out)


def adjusted_logits(logits: torch.Tensor, class_bias: Sequence[float] | None = None,
                    temperature: float = 1.0) -> torch.Tensor:
    """Logits as a model file asks them read: plus its per-class ``class_bias`` (if any), over its ``temperature``."""
    if class_bias is not None:
        logits = logits + torch.as_tensor(class_bias, dtype=logits.dtype, device=logits.device)
    return logits / temperature


def probabilities(logits: torch.Tensor, meta: ModelMeta) -> torch.Tensor:
    """Class probabilities from a model's raw logits, read as its file asks (:func:`adjusted_logits`)."""
    return F.softmax(adjusted_logits(logits, meta.class_bias, meta.temperature), dim=1)


def onnx_bytes(model: nn.Module, meta: ModelMeta, opset: int = 17) -> bytes:
    """``model`` as serialised ONNX: input ``input`` (N x C x H x W, normalised float, any N), output ``logits``."""
    import onnx

    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    example = torch.zeros(2, meta.in_chans, meta.input_size, meta.input_size)
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
    entry.key, entry.value = "ferkit_meta", json.dumps(meta.to_dict())
    return proto.SerializeToString()


def int8_onnx_bytes(model: nn.Module, meta: ModelMeta, faces: torch.Tensor, batch: int = 32) -> bytes:
    """``model`` as a statically quantised ONNX file whose activation ranges were calibrated on ``faces`` (uint8
    N x C x H x W: training faces, never test ones) and their mirror images, as test-time views show them; the
    same input, output and metadata as :func:`onnx_bytes`.

    Convolutions and the classifier run in int8 (QDQ: weights per channel, int8 in 7 bits, activations uint8);
    the attention gates' products stay in float. The 7-bit weights (``reduce_range``) keep CPUs without VNNI
    from saturating their 16-bit sums: with 8 bits the shipped model lost 3.2 points on PublicTest
    (69.85 -> 66.68 %), with 7 it keeps them (69.96 %), at 2.5-3.1x the fp32 file's crops/s at batch 64 on an
    idle 2-core CPU (1.9x with a training run beside it; ``benchmarks/predict_speed.py``).
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    views = prepare(faces, meta.in_chans, meta.input_size, meta.mean, meta.std)
    views = torch.cat([views, views.flip(-1)])
    chunks = [views[i : i + batch].numpy() for i in range(0, len(views), batch)]

    class Faces(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(chunks)

        def get_next(self) -> dict | None:
            chunk = next(self.left, None)
            return None if chunk is None else {"input": chunk}

    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxruntime's advice to pre-process: done below
        fp32, ready, int8 = (Path(folder) / name for name in ("fp32.onnx", "ready.onnx", "int8.onnx"))
        fp32.write_bytes(onnx_bytes(model, meta))
        quant_pre_process(str(fp32), str(ready))  # shapes inferred, batch norms folded into the convolutions
        quantize_static(str(ready), str(int8), Faces(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        op_types_to_quantize=["Conv", "Gemm", "MatMul"])
        proto = onnx.load_model(str(int8))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = "ferkit_meta", json.dumps(meta.to_dict())
    return proto.SerializeToString()


def onnx_providers(device: str = "cpu") -> list[str]:
    """The onnxruntime providers a session on ``device`` uses: CUDA's first where the installed onnxruntime
    has it and a CUDA device is asked for, the CPU's always (as the fallback for what CUDA does not run)."""
    import onnxruntime as ort

    cuda = str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers()
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]


def onnx_runs_on(device: str) -> bool:
    """Whether onnxruntime can run a model on ``device`` here: the CPU, or CUDA with its provider installed."""
    if importlib.util.find_spec("onnxruntime") is None:
        return False
    return str(device) == "cpu" or len(onnx_providers(device)) > 1


class OnnxForward:
    """An onnxruntime session used like a model: normalised float batch in, logits out."""

    def __init__(self, model: str | Path | bytes, threads: int = 0, device: str = "cpu"):
        """``model``: an ONNX file, or the bytes of one; ``threads``: the cores a call may use (0: all usable)."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise FerkitError("the onnx backend needs onnxruntime: pip install onnxruntime") from None
        from ferkit.detect.cores import usable_cores

        options = ort.SessionOptions()
        # On the CPU a batch is cut into one part per core, each run on one thread, side by side: onnxruntime's
        # own threads share out each layer and meet between layers, which costs more at these small sizes.
        # The int8 model took 5.4 ms for the two test-time views of one face this way, 6.9 ms on onnxruntime's
        # two threads; 35 against 47 ms for 16 views, 158 against 179 for 64 (2 cores; benchmarks/predict_speed.py).
        on_cpu = len(onnx_providers(device)) == 1
        self.parts = max(1, threads or usable_cores()) if on_cpu else 1
        if self.parts > 1:
            options.intra_op_num_threads = 1
        elif threads:
            options.intra_op_num_threads = threads
        # onnxruntime's workers spin for a while after each run by default, which starves the face
        # detector (OpenCV) that runs between model calls: 40 -> 26 ms a photo here with spinning off.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Batch sizes vary from call to call: memory planned per input shape, and an arena that keeps
        # its largest size, would grow with each new size a long-running server sees (+87 MB over 600
        # calls of random sizes 1..64 here; +4 to 12 MB without them, at the same speed).
        options.enable_mem_pattern = False
        options.enable_cpu_mem_arena = False
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                                providers=onnx_providers(device))
        except Exception as e:  # onnxruntime raises its own types for missing, damaged or foreign files
            where = "ONNX model" if isinstance(model, bytes) else str(model)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise FerkitError(f"{where}: not a loadable ONNX model ({first}); export it again") from None

    def describes(self, meta: ModelMeta) -> bool:
        """Whether the file's ferkit description (:func:`onnx_bytes`) is ``meta``: the model it was made from."""
        found = self.session.get_modelmeta().custom_metadata_map.get("ferkit_meta")
        try:
            return found is not None and json.loads(found) == json.loads(json.dumps(meta.to_dict()))
        except ValueError:
            return False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from ferkit.detect.cores import on_one_core, spread

        batch = x.float().contiguous().numpy()
        parts = min(self.parts, len(batch))
        if parts < 2 or on_one_core():
            return torch.from_numpy(self._run(batch))
        cuts = [len(batch) * k // parts for k in range(parts + 1)]
        # onnxruntime lets go of the GIL while it runs, and a session may run several inputs at once.
        return torch.from_numpy(np.concatenate(spread(self._run, [batch[a:b] for a, b in zip(cuts, cuts[1:])])))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": batch})[0]


def _onnx_cache_key(model: torch.nn.Module, meta: ModelMeta) -> str:
    """A sha256 hex digest of everything an ONNX export of ``model`` depends on: its metadata and weights."""
    digest = hashlib.sha256(f"ferkit-onnx {ONNX_CACHE_FORMAT}\n".encode())
    digest.update(json.dumps(meta.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cached_onnx(model: torch.nn.Module, meta: ModelMeta) -> bytes:
    """``model`` exported to ONNX (the bytes), exported once and kept in the cache folder.

    Beside ``onnx/<key>.onnx`` lies ``<key>.json``: the full key of the model the export came from and
    the sha256 of the file's bytes, both checked on every use, so a truncated, damaged or swapped file is
    exported again instead of used. When the cache folder cannot be written, the export is used from memory.
    """
    from ferkit.data.cache import default_cache_dir
    from ferkit.fileio import atomic_write, write_json

    key = _onnx_cache_key(model, meta)
    path = default_cache_dir() / "onnx" / f"{key[:20]}.onnx"
    record_path = path.with_suffix(".json")
    try:
        record = json.loads(record_path.read_text())
        data = path.read_bytes()
        if (isinstance(record, dict) and record.get("source") == key
                and record.get("sha256") == hashlib.sha256(data).hexdigest()):
            return data  # the very bytes checked are the ones used
    except (OSError, ValueError):
        pass  # missing or unreadable: exported again below
    data = onnx_bytes(model, meta)
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
        write_json({"source": key, "sha256": hashlib.sha256(data).hexdigest()}, record_path)
    except OSError:
        pass  # a read-only or full cache folder costs this export again next time, nothing else
    return data
