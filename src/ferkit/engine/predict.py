"""Expressions from photos: detect faces, crop them, classify all crops in batches, return result objects."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ferkit.detect import Face, crop_face, detect_faces, load_image
from ferkit.engine.calibrate import adjusted_logits
from ferkit.engine.checkpoint import load_checkpoint, load_model
from ferkit.engine.evaluate import predict_logits
from ferkit.engine.export import load_ferkit_model
from ferkit.errors import FerkitError

ImageInput = Union[str, Path, Image.Image, np.ndarray]
Box = tuple[int, int, int, int]
PRETRAINED = ("default",)
BACKENDS = ("auto", "torch", "onnx")
# Haar boxes grown by 10% of their side on each side frame faces as FER2013's 48x48 crops do
# (median over 164 PublicTest faces found by the detector at 4x scale: 0.096).
DEFAULT_CROP_MARGIN = 0.1


@dataclass
class FaceResult:
    """One face: where it is, how sure the detector was, and the expression probabilities."""

    box: Box
    probs: dict[str, float]
    score: float | None = None
    eyes: tuple[tuple[float, float], tuple[float, float]] | None = None

    @property
    def top1(self) -> str:
        """The most likely expression."""
        return max(self.probs, key=self.probs.get)

    @property
    def top1conf(self) -> float:
        """Its probability."""
        return self.probs[self.top1]

    label = top1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"box": list(self.box), "score": self.score, "label": self.top1, "confidence": self.top1conf,
                "probs": self.probs}


@dataclass
class Result:
    """What was found in one image: ``status`` is ``ok``, ``no face`` or ``error`` (then ``error`` says why)."""

    source: str
    faces: list[FaceResult] = field(default_factory=list)
    status: str = "ok"
    error: str | None = None
    image: np.ndarray | None = field(default=None, repr=False)

    @property
    def top1(self) -> str | None:
        """The expression of the largest face, if any."""
        return self.faces[0].top1 if self.faces else None

    @property
    def top1conf(self) -> float | None:
        """Its probability."""
        return self.faces[0].top1conf if self.faces else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the image itself left out)."""
        return {"source": self.source, "status": self.status, "error": self.error,
                "faces": [f.to_dict() for f in self.faces]}

    def plot(self) -> Image.Image:
        """The image with each face's box, expression and probability drawn on it."""
        from PIL import ImageDraw, ImageFont

        if self.image is None:
            raise FerkitError(f"{self.source}: no image to draw on ({self.status})")
        canvas = Image.fromarray(self.image).convert("RGB")
        draw = ImageDraw.Draw(canvas)
        side = max(canvas.size)
        font = ImageFont.load_default(size=max(12, side // 40))
        width = max(2, side // 250)
        for face in self.faces:
            x, y, w, h = face.box
            draw.rectangle([x, y, x + w, y + h], outline=(0, 220, 90), width=width)
            text = f"{face.top1} {face.top1conf:.0%}"
            left, top, right, bottom = draw.textbbox((x, y), text, font=font)
            ty = y - (bottom - top) - 2 * width if y - (bottom - top) - 2 * width >= 0 else y + h + width
            draw.rectangle([x, ty, x + right - left + 2 * width, ty + bottom - top + 2 * width], fill=(0, 220, 90))
            draw.text((x + width, ty + width - (top - y)), text, fill=(0, 0, 0), font=font)
        return canvas


class OnnxForward:
    """An onnxruntime session used like a model: normalised float batch in, logits out."""

    def __init__(self, path: str | Path, threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise FerkitError("the onnx backend needs onnxruntime: pip install onnxruntime") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # onnxruntime's workers spin for a while after each run by default, which starves the face
        # detector (OpenCV) that runs between model calls: 40 -> 26 ms a photo here with spinning off.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"input": x.float().contiguous().numpy()})[0])


def cached_onnx(model: torch.nn.Module, meta: dict[str, Any]) -> Path:
    """An ONNX file of ``model``, exported once and kept in the cache folder under a hash of its weights."""
    from ferkit.data import default_cache_dir
    from ferkit.engine.export import export_onnx

    digest = hashlib.sha1(json.dumps(meta, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    path = default_cache_dir() / "onnx" / f"{digest.hexdigest()[:20]}.onnx"
    return path if path.is_file() else export_onnx(model, meta, path)


def pretrained_path(name: str = "default") -> Path:
    """The shipped model file called ``name``."""
    path = Path(str(resources.files("ferkit.weights") / f"{name}.safetensors"))
    if not path.is_file():
        shipped = sorted(p.name[: -len(".safetensors")] for p in resources.files("ferkit.weights").iterdir()
                         if p.name.endswith(".safetensors"))
        raise FerkitError(f"no shipped model called {name!r} (shipped: {', '.join(shipped) or 'none'})")
    return path


def load_any_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """A model from a training checkpoint (.pt) or a ferkit model file (.safetensors)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_ferkit_model(path, device)
    model, meta = load_model(path, device)
    return model, {**meta, **load_checkpoint(path).get("deploy", {})}


class Recognizer:
    """Facial expressions of the faces in images, from one model; ``recognizer(images)`` -> list of :class:`Result`.

    Faces are looked for on a copy of each image scaled down to ``detect_size`` pixels on its longer
    side (0: full size), down to ``min_face`` pixels of that copy; raise ``detect_size`` for small faces
    in large photos.
    """

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any], *, backend: str = "auto",
                 onnx_path: str | Path | None = None, detect: bool = True, detector: str = "haar",
                 min_face: int = 24, detect_size: int = 320, tta: str | None = None, batch_size: int = 64,
                 device: str = "cpu", threads: int = 0):
        if backend not in BACKENDS:
            raise FerkitError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if backend == "auto":
            # onnxruntime runs this small model ~3x faster than eager PyTorch on a CPU at batch 1
            backend = "onnx" if device == "cpu" and importlib.util.find_spec("onnxruntime") else "torch"
        self.model, self.meta = model.eval(), meta
        self.classes = list(meta["classes"])
        self.detect, self.detector, self.min_face, self.detect_size = detect, detector, min_face, detect_size
        self.tta = tta or meta.get("tta", "flip")
        self.batch_size, self.device = batch_size, torch.device(device)
        self.temperature = float(meta.get("temperature", 1.0))
        self.margin = float(meta.get("crop_margin", DEFAULT_CROP_MARGIN))
        self.forward = self.model
        if threads and backend == "torch":
            torch.set_num_threads(threads)
        if backend == "onnx":
            self.forward = OnnxForward(onnx_path or cached_onnx(model, meta), threads)
            self.device = torch.device("cpu")
        self.backend = backend

    @classmethod
    def from_pretrained(cls, name: str = "default", **kwargs: Any) -> Recognizer:
        """The model that ships inside ferkit (``default``); no download."""
        model, meta = load_ferkit_model(pretrained_path(name))
        return cls(model, meta, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> Recognizer:
        """A model from ``ferkit train`` (best.pt / last.pt) or ``ferkit export`` (.safetensors)."""
        model, meta = load_any_model(path, kwargs.get("device", "cpu"))
        return cls(model, meta, **kwargs)

    # -- classification ----------------------------------------------------------------------------
    def classify_crops(self, crops: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Class probabilities (N x K) of face crops: uint8 N x C x H x W, or N x H x W grey."""
        crops = torch.as_tensor(crops)
        if crops.ndim == 3:
            crops = crops.unsqueeze(1)
        if crops.dtype != torch.uint8 or crops.ndim != 4:
            raise FerkitError(f"face crops must be uint8 N x C x H x W, got {crops.dtype} {tuple(crops.shape)}")
        logits = predict_logits(self.forward, crops, self.meta, self.tta, self.batch_size,
                                precision="fp32", channels_last=False, device=self.device)
        return F.softmax(adjusted_logits(logits, self.meta), dim=1).cpu()

    # -- images ------------------------------------------------------------------------------------
    def _as_array(self, item: ImageInput, bgr: bool) -> tuple[str, np.ndarray]:
        if isinstance(item, (str, Path)):
            return str(item), load_image(item)
        if isinstance(item, Image.Image):
            return "<PIL image>", np.asarray(item.convert("RGB"))
        if isinstance(item, np.ndarray):
            array = item
            if array.dtype != np.uint8:
                raise FerkitError(f"numpy images must be uint8, got {array.dtype}")
            if array.ndim == 3 and array.shape[2] == 4:
                array = array[..., :3]
            if array.ndim == 3 and array.shape[2] == 3 and bgr:
                array = array[..., ::-1]
            if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3):
                return "<array>", np.ascontiguousarray(array)
            raise FerkitError(f"numpy images must be H x W or H x W x 3, got shape {array.shape}")
        raise FerkitError(f"cannot read an image from a {type(item).__name__}")

    def _faces(self, image: np.ndarray, boxes: Sequence[Box] | None) -> list[Face]:
        if boxes is not None:
            return [Face(tuple(int(v) for v in b), 1.0, None) for b in boxes]
        h, w = image.shape[:2]
        if not self.detect:
            return [Face((0, 0, w, h), 1.0, None)]
        # Detect on a copy no larger than detect_size: cascades cost grows with the pixel count, and
        # min_face then counts pixels of that copy (24 of 320 = 48 px of a 640-px photo).
        scale = min(1.0, self.detect_size / max(h, w)) if self.detect_size else 1.0
        if scale == 1.0:
            return detect_faces(image, min_size=self.min_face, detector=self.detector)
        small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        faces = detect_faces(small, min_size=self.min_face, detector=self.detector)
        return [Face(tuple(round(v / scale) for v in f.box), f.score,
                     None if f.eyes is None else tuple((x / scale, y / scale) for x, y in f.eyes))
                for f in faces]

    def __call__(self, images: ImageInput | Iterable[ImageInput], *, bgr: bool = False,
                 boxes: Sequence[Sequence[Box]] | None = None, keep_images: bool = True) -> list[Result]:
        """Results for one image or a list of them (paths, PIL images, uint8 numpy arrays, RGB unless ``bgr``).

        ``boxes`` gives, per image, face boxes (x, y, w, h) to use instead of detection. Faces from
        all images go through the model together, in batches.
        """
        if isinstance(images, (str, Path, Image.Image, np.ndarray)):
            images = [images]
        results, crops, owners = [], [], []
        for i, item in enumerate(images):
            try:
                source, array = self._as_array(item, bgr)
            except FerkitError as e:
                results.append(Result(str(item) if isinstance(item, (str, Path)) else f"<input {i}>",
                                      status="error", error=str(e)))
                continue
            faces = self._faces(array, None if boxes is None else boxes[i])
            # With detection off, each input is a face crop already: it goes in as it is, no margin
            # added (a detector's box is tighter than a training crop, so its crop gets the margin).
            margin = self.margin if self.detect or boxes is not None else 0.0
            result = Result(source, status="ok" if faces else "no face", image=array if keep_images else None)
            for face in faces:
                crop = crop_face(array, face, self.meta["input_size"], margin, True, self.meta["in_chans"])
                crops.append(crop if crop.ndim == 3 else crop[..., None])
                owners.append((result, face))
            results.append(result)
        if crops:
            batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
            probs = self.classify_crops(batch)
            for (result, face), p in zip(owners, probs.tolist()):
                result.faces.append(FaceResult(face.box, dict(zip(self.classes, p)), face.score, face.eyes))
        return results

    def describe(self) -> str:
        """One line on the model in use."""
        m = self.meta
        acc = f", FER2013 test {m['test_acc']:.1%}" if "test_acc" in m else ""
        return (f"{m.get('name', 'model')}: {m['model']} {m['attention']} {m['stem']} stem, "
                f"{m['input_size']}px {'grey' if m['in_chans'] == 1 else 'colour'}{acc}; backend {self.backend}")


def results_to_json(results: list[Result]) -> str:
    """JSON lines, one result per line."""
    return "\n".join(json.dumps(r.to_dict()) for r in results)
