"""Expressions from photos: detect faces, crop them, classify all crops in batches, return result objects."""
from __future__ import annotations

import dataclasses
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import cv2
import numpy as np
import torch
from PIL import Image

from ferkit.detect import Face, crop_face, detect_faces, detector_scales_itself, load_image
from ferkit.detect.faces import one_core, usable_cores
from ferkit.detect.image import decode_image, pil_to_array, to_rgb_array
from ferkit.engine import modelfile
from ferkit.engine.inference import OnnxForward, cached_onnx, onnx_runs_on, predict_logits, probabilities
from ferkit.engine.modelfile import ModelMeta, pretrained_path
from ferkit.engine.options import RecognizerOptions, check_options
from ferkit.engine.schema import TIME_DECIMALS, FaceRecord, ImageRecord, round_point, round_prob
from ferkit.errors import FerkitError

ImageInput = Union[str, Path, Image.Image, np.ndarray, bytes]
Box = tuple[int, int, int, int]


@dataclass
class FaceResult:
    """One face: where it is, how sure the detector was, and the expression probabilities."""

    box: Box
    probs: dict[str, float]
    score: float | None = None
    eyes: tuple[tuple[float, float], tuple[float, float]] | None = None
    track: int | None = None  # in video: the same number for the same person from frame to frame

    @property
    def top1(self) -> str:
        """The most likely expression."""
        return max(self.probs, key=self.probs.get)

    @property
    def top1conf(self) -> float:
        """Its probability."""
        return self.probs[self.top1]

    # The names of the output schema (JSON, CSV, HTTP) for the same two values.
    label = top1
    confidence = top1conf

    @property
    def caption(self) -> str:
        """How an annotated image labels this face: its track (in a video), expression and probability."""
        track = "" if self.track is None else f"#{self.track} "
        return f"{track}{self.top1} {self.top1conf:.0%}"

    def to_record(self) -> FaceRecord:
        """This face in the one output schema (:mod:`ferkit.engine.schema`), floats rounded."""
        eyes = [[round_point(x), round_point(y)] for x, y in self.eyes] if self.eyes is not None else None
        return FaceRecord(box=[int(v) for v in self.box], label=self.top1, confidence=round_prob(self.top1conf),
                          probs={k: round_prob(v) for k, v in self.probs.items()},
                          score=None if self.score is None else round_prob(self.score), eyes=eyes, track=self.track)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: :meth:`to_record` as a dict."""
        return dataclasses.asdict(self.to_record())


@dataclass
class Result:
    """What was found in one image or video frame: ``status`` is ``ok``, ``no_face`` or ``error`` (then ``error``
    says why). Its fields are those of :class:`~ferkit.engine.schema.ImageRecord`, the one output schema."""

    source: str
    faces: list[FaceResult] = field(default_factory=list)
    status: str = "ok"
    error: str | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    detector: str | None = None  # the face detector used; None when faces were given or detection was off
    frame: int | None = None  # video: the frame's index in the file
    time_s: float | None = None  # video: the frame's time from the start
    width: int | None = None  # the image's size; None when it could not be read
    height: int | None = None
    model: str | None = None  # the name of the model that read it

    @property
    def top1(self) -> str | None:
        """The expression of the largest face, if any."""
        return self.faces[0].top1 if self.faces else None

    @property
    def top1conf(self) -> float | None:
        """Its probability."""
        return self.faces[0].top1conf if self.faces else None

    def to_record(self) -> ImageRecord:
        """This result in the one output schema (:mod:`ferkit.engine.schema`), floats rounded."""
        return ImageRecord(source=self.source, status=self.status, error=self.error, frame=self.frame,
                           time_s=None if self.time_s is None else round(self.time_s, TIME_DECIMALS),
                           width=self.width, height=self.height, model=self.model, detector=self.detector,
                           faces=[face.to_record() for face in self.faces])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the image itself left out): :meth:`to_record` as a dict."""
        return self.to_record().to_dict()

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
            text = face.caption
            left, top, right, bottom = draw.textbbox((x, y), text, font=font)
            ty = y - (bottom - top) - 2 * width if y - (bottom - top) - 2 * width >= 0 else y + h + width
            draw.rectangle([x, ty, x + right - left + 2 * width, ty + bottom - top + 2 * width], fill=(0, 220, 90))
            draw.text((x + width, ty + width - (top - y)), text, fill=(0, 0, 0), font=font)
        return canvas


def default_workers() -> int:
    """Images a Recognizer reads and searches at once by default: one per core this process may use."""
    return usable_cores()


def resolve_backend(backend: str, device: str = "cpu", int8: bool = False) -> str:
    """The backend ``auto`` stands for on ``device`` (``int8``: the model has its int8 ONNX file); any other
    name as it is."""
    if backend != "auto":
        return backend
    # On a CPU at batch 1, onnxruntime runs this small model faster than eager PyTorch (9.5 against 13 ms for a
    # face's two test-time views), its int8 file 3.5x faster again (2.7 ms; benchmarks/predict_speed.py); on a
    # GPU, onnxruntime's CUDA provider where it is installed, else PyTorch
    if str(device) == "cpu" and onnx_runs_on("cpu"):
        return "onnx-int8" if int8 else "onnx"
    return "onnx" if str(device).startswith("cuda") and onnx_runs_on(device) else "torch"


def int8_companion_path(path: Path) -> Path:
    """Where the int8 ONNX file of the model file ``path`` lies: beside it, as ``NAME.int8.onnx``."""
    return path.with_name(path.with_suffix("").name + ".int8.onnx")


def int8_companion(path: Path) -> Path | None:
    """The int8 ONNX file beside a model file (:func:`int8_companion_path`, see ``ferkit export --weights int8``),
    if there is one; the Recognizer checks that it describes the same model when it opens it."""
    companion = int8_companion_path(path)
    return companion if companion.is_file() else None


class Recognizer:
    """Facial expressions of the faces in images, from one model; ``recognizer(images)`` -> list of :class:`Result`.

    Faces down to ``min_face`` pixels of the photo are looked for with ``detector``: ``blazeface``
    (the default) plans its own resolution, tiling the photo where small faces need it; the Haar
    detectors search a copy scaled down to ``detect_size`` pixels on its longer side (0: full size).
    A call with several images reads and searches them ``workers`` at a time (default: one per core),
    each on one core, then classifies all their faces in one batch.
    """

    def __init__(self, model: torch.nn.Module, meta: ModelMeta, options: RecognizerOptions | None = None, *,
                 onnx_path: str | Path | None = None, int8_path: str | Path | None = None, device: str = "cpu",
                 threads: int = 0, workers: int | None = None, **changes: Any):
        """``options`` (or single options as keywords: ``detect=False``, ``min_face=32``, ...) say how
        faces are found and read; see :class:`~ferkit.engine.options.RecognizerOptions`."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(RecognizerOptions)})
        if unknown:
            raise TypeError(f"Recognizer got unknown option(s) {', '.join(unknown)}")
        self.options = dataclasses.replace(options or RecognizerOptions(), **changes)
        check_options(workers=workers)
        backend = resolve_backend(self.options.backend, device, int8=int8_path is not None)
        int8 = self._int8_forward(int8_path, meta, threads) if backend == "onnx-int8" else None
        if backend == "onnx-int8" and int8 is None:
            if self.options.backend == "onnx-int8":
                raise FerkitError("backend onnx-int8: this model has no int8 ONNX file beside it (make one with "
                                  "`ferkit export MODEL --to onnx --weights int8 --data path/to/train_data`)")
            # auto: the file beside it is another model's, or damaged: the fp32 export instead, said once
            warnings.warn(f"{int8_path}: not this model's int8 file (it describes another model, or cannot be "
                          "read), so the model runs in fp32; make it again with `ferkit export MODEL --to onnx "
                          "--weights int8 --data path/to/train_data`", stacklevel=3)
            backend = "onnx"
        self.model, self.meta = model.eval(), meta
        self.classes = list(meta.classes)
        self.device = torch.device(device)
        self.margin = meta.crop_margin
        self.forward = self.model
        if threads and backend == "torch":
            torch.set_num_threads(threads)
        if backend == "onnx":
            self.forward = OnnxForward(onnx_path or cached_onnx(model, meta), threads, device)
            self.device = torch.device("cpu")  # onnxruntime takes its input from host memory
        elif backend == "onnx-int8":
            self.forward = int8
            self.device = torch.device("cpu")
        self.backend = backend
        self.workers = default_workers() if workers is None else workers
        self._pool: ThreadPoolExecutor | None = None  # made on first use
        self._pool_lock = threading.Lock()

    @staticmethod
    def _int8_forward(path: str | Path | None, meta: ModelMeta, threads: int) -> OnnxForward | None:
        """A session of the int8 file at ``path`` if it opens and describes the model of ``meta``; else None."""
        if path is None:
            return None
        try:
            forward = OnnxForward(path, threads)
        except FerkitError:
            return None
        return forward if forward.describes(meta) else None

    # The options, read-only: a call changes detect/tta/min_face for itself (see __call__), never for others.
    detect = property(lambda self: self.options.detect, doc="Whether faces are looked for.")
    detector = property(lambda self: self.options.detector, doc="The face detector's name.")
    min_face = property(lambda self: self.options.min_face, doc="Smallest face looked for, pixels.")
    detect_size = property(lambda self: self.options.detect_size, doc="Haar search size, pixels.")
    batch_size = property(lambda self: self.options.batch_size, doc="Faces per model call.")
    tta = property(lambda self: self.options.tta or self.meta.tta, doc="Test-time views in use.")

    def _map(self, fn: Any, items: list) -> list:
        """``fn`` over ``items`` in order: on the calling thread (its detector on every core) for one
        item, else ``workers`` at a time, each on one core (see :func:`ferkit.detect.faces.one_core`)."""
        if len(items) < 2 or self.workers < 2:
            return [fn(item) for item in items]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ferkit-detect")

        def on_one_core(item: Any) -> Any:
            with one_core():
                return fn(item)

        return list(self._pool.map(on_one_core, items))

    @classmethod
    def load(cls, model: str | Path = "default", options: RecognizerOptions | None = None, *,
             device: str = "cpu", **kwargs: Any) -> Recognizer:
        """The Recognizer of a shipped model's name (``default``, ``wild``: no download) or of a model file
        (``best.pt``/``last.pt`` from ``ferkit train``, ``.safetensors`` from ``ferkit export``)."""
        if options is not None or kwargs:
            # Options are checked before the model is read, so a bad one costs no load.
            dataclasses.replace(options or RecognizerOptions(), **{k: v for k, v in kwargs.items()
                                                                   if k in RecognizerOptions.__dataclass_fields__})
        path = modelfile.model_path(model)
        loaded, meta = modelfile.load(path, device)
        return cls(loaded, meta, options, device=device, int8_path=int8_companion(path), **kwargs)

    @classmethod
    def from_pretrained(cls, name: str = "default", **kwargs: Any) -> Recognizer:
        """The model that ships inside ferkit called ``name``; no download."""
        return cls.load(pretrained_path(name), **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> Recognizer:
        """A model from ``ferkit train`` (best.pt / last.pt) or ``ferkit export`` (.safetensors)."""
        return cls.load(Path(path), **kwargs)

    # -- classification ----------------------------------------------------------------------------
    def classify_crops(self, crops: torch.Tensor | np.ndarray, tta: str | None = None) -> torch.Tensor:
        """Class probabilities (N x K) of face crops: uint8 N x C x H x W, or N x H x W grey; ``tta``: this
        call's test-time views (default: the recognizer's)."""
        crops = torch.as_tensor(crops)
        if crops.ndim == 3:
            crops = crops.unsqueeze(1)
        if crops.dtype != torch.uint8 or crops.ndim != 4:
            raise FerkitError(f"face crops must be uint8 N x C x H x W, got {crops.dtype} {tuple(crops.shape)}")
        check_options(tta=tta)
        logits = predict_logits(self.forward, crops, self.meta, tta or self.tta, self.batch_size,
                                precision="fp32", channels_last=False, device=self.device)
        return probabilities(logits, self.meta).cpu()

    # -- images ------------------------------------------------------------------------------------
    @staticmethod
    def _as_array(item: ImageInput, bgr: bool, source: str) -> np.ndarray:
        """The input as an RGB (or grey) uint8 array; ``source`` names it in errors."""
        if isinstance(item, (str, Path)):
            return load_image(item)
        if isinstance(item, (bytes, bytearray, memoryview)):
            return decode_image(item, source)
        if isinstance(item, Image.Image):
            return pil_to_array(item, source)
        if isinstance(item, np.ndarray):
            array = to_rgb_array(item, source)
            return np.ascontiguousarray(array[..., ::-1]) if array.ndim == 3 and bgr else array
        raise FerkitError(f"{source}: cannot read an image from a {type(item).__name__}")

    def find_faces(self, image: np.ndarray, *, detect: bool | None = None, min_face: int | None = None) -> list[Face]:
        """The faces this recognizer would classify in an RGB (or grey) uint8 image, largest first."""
        return self._faces(to_rgb_array(image, "<image>"), None, self.options.with_call(detect=detect,
                                                                                       min_face=min_face))

    def crop_faces(self, image: np.ndarray, *, detect: bool | None = None,
                   min_face: int | None = None) -> list[tuple[Face, np.ndarray]]:
        """Each face of an RGB (or grey) uint8 image with its model-sized crop (H x W x C), as the model sees it."""
        options = self.options.with_call(detect=detect, min_face=min_face)
        array = to_rgb_array(image, "<image>")
        return self._cut(array, self._faces(array, None, options), options.detect)

    def _faces(self, image: np.ndarray, boxes: Sequence[Box] | None, options: RecognizerOptions) -> list[Face]:
        if boxes is not None:
            return [Face(tuple(int(v) for v in b), 1.0, None) for b in boxes]
        h, w = image.shape[:2]
        if not options.detect:
            return [Face((0, 0, w, h), 1.0, None)]
        # Detectors whose cost grows with the pixel count (the Haar cascades) search a copy no larger
        # than detect_size; one that picks its own resolution (BlazeFace) gets the photo as it is.
        shrink = options.detect_size > 0 and not detector_scales_itself(options.detector)
        scale = min(1.0, options.detect_size / max(h, w)) if shrink else 1.0
        if scale == 1.0:
            return detect_faces(image, min_size=options.min_face, detector=options.detector)
        # A side that would round to 0 (a 5 x 5000 strip) keeps one pixel.
        small_size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(image, small_size, interpolation=cv2.INTER_AREA)
        faces = detect_faces(small, min_size=max(1, round(options.min_face * scale)), detector=options.detector)

        def back(points):
            return None if points is None else tuple((x / scale, y / scale) for x, y in points)

        return [Face(tuple(round(v / scale) for v in f.box), f.score, back(f.eyes), back(f.keypoints))
                for f in faces]

    def _cut(self, array: np.ndarray, faces: list[Face], detected: bool) -> list[tuple[Face, np.ndarray]]:
        """Model-sized crops of ``faces``. A detector's box is tighter than a training crop, so it gets the
        model's margin; an input taken whole is a face crop already and goes in as it is."""
        margin = self.margin if detected else 0.0
        crops = []
        for face in faces:
            crop = crop_face(array, face, self.meta.input_size, margin, True, self.meta.in_chans)
            crops.append((face, crop if crop.ndim == 3 else crop[..., None]))
        return crops

    def _crops(self, item: ImageInput, index: int, bgr: bool, boxes: Sequence[Box] | None, keep_images: bool,
               options: RecognizerOptions) -> tuple[Result, list[tuple[Face, np.ndarray]]]:
        """One input decoded, its faces found and cropped; any failure becomes that input's error result."""
        source = str(item) if isinstance(item, (str, Path)) else f"<input {index}>"
        try:
            array = self._as_array(item, bgr, source)
            crops = self._cut(array, self._faces(array, boxes, options), options.detect or boxes is not None)
        except Exception as e:  # one bad input must not take the others down, whatever failed
            return Result(source, status="error", error=_one_line(e, source), model=self.meta.name), []
        status = "ok" if crops else "no_face"
        detector = options.detector if options.detect and boxes is None else None
        return Result(source, status=status, image=array if keep_images else None, detector=detector,
                      width=array.shape[1], height=array.shape[0], model=self.meta.name), crops

    def __call__(self, images: ImageInput | Iterable[ImageInput], *, bgr: bool = False,
                 boxes: Sequence[Sequence[Box]] | None = None, keep_images: bool = True,
                 detect: bool | None = None, tta: str | None = None, min_face: int | None = None) -> list[Result]:
        """Results for one image or a list of them (paths, PIL images, uint8 numpy arrays, RGB unless ``bgr``).

        Also accepted: encoded image bytes, and arrays of other depths (16-bit, float 0..1, bool).
        ``boxes`` gives, per image, face boxes (x, y, w, h) to use instead of detection. ``detect``,
        ``tta`` and ``min_face`` change the recognizer's options for this call only. Faces from all
        images go through the model together, in batches. An input that cannot be read, or whose
        faces cannot be found or cut, gets a result with status ``error``; the others go on.
        """
        options = self.options.with_call(detect=detect, tta=tta, min_face=min_face)
        if isinstance(images, (str, Path, Image.Image, np.ndarray, bytes, bytearray, memoryview)):
            images = [images]
        images = list(images)
        if boxes is not None and len(boxes) != len(images):
            raise FerkitError(f"boxes gives {len(boxes)} lists of boxes for {len(images)} images")

        def read(i: int) -> tuple[Result, list[tuple[Face, np.ndarray]]]:
            return self._crops(images[i], i, bgr, None if boxes is None else boxes[i], keep_images, options)

        results, crops, owners = [], [], []
        for result, found in self._map(read, list(range(len(images)))):
            for face, crop in found:
                crops.append(crop)
                owners.append((result, face))
            results.append(result)
        if crops:
            batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
            probs = self.classify_crops(batch, options.tta)
            for (result, face), p in zip(owners, probs.tolist()):
                result.faces.append(FaceResult(face.box, dict(zip(self.classes, p)), face.score, face.eyes))
        return results

    def describe(self) -> str:
        """One line on the model in use."""
        m = self.meta
        acc = f", FER2013 test {m.info['test_acc']:.1%}" if "test_acc" in m.info else ""
        faces = f"detector {self.detector}, faces from {self.min_face} px" if self.detect else "inputs are face crops"
        return (f"{m.name or 'model'}: {m.model} {m.attention} {m.stem} stem, "
                f"{m.input_size}px {'grey' if m.in_chans == 1 else 'colour'}{acc}; backend {self.backend}; "
                f"{faces}")


def _one_line(error: Exception, source: str) -> str:
    """A one-line message for an input's error, naming the input."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, FerkitError):
        return text if text.startswith(source) else f"{source}: {text}"
    return f"{source}: {type(error).__name__}: {text}"
