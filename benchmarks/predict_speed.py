"""Prediction speed on the CPU: ferkit's torch and onnxruntime backends, and ferkit against the peer package fer.

One JSON line per figure, on stdout (notes go to stderr):

1. face-crop classification with :meth:`Recognizer.classify_crops` (the model's own TTA included): median
   latency at batch 1 and throughput at batch 64, for the torch and the onnxruntime backend of one model;
2. end-to-end milliseconds per photo, decoding excluded (photos are RGB arrays in memory): ferkit's
   :class:`Recognizer` with its default settings (BlazeFace detection, eye alignment, crop, classify) against
   fer's ``FER(mtcnn=False)`` (its default Haar detector and quantized TFLite classifier), plus how many
   photos each found exactly one face in, and whether that face is the pasted one;
3. the ratio ferkit ms / fer ms per photo.

The photos are 640x480, built from the shipped astronaut portrait: its head and shoulders, scaled so the
face is 100-190 px wide, pasted with a feathered edge at seeded positions on seeded backgrounds (flat,
gradient, smooth blobs, grain). fer runs in its own interpreter (``--fer-python``, a venv holding
``fer`` and TensorFlow) on the same photos, written to a temporary .npy file. Both sides get ``--threads``
threads for OpenCV and for their network runtime (torch / onnxruntime intra-op; TensorFlow intra-op and
the TFLite interpreter); per-photo time is the median over the timed passes of a round, the two tools take
turns for ``rounds`` rounds (this machine's speed drifts by 20 % and more within minutes), each photo's best
round is kept, and the figure is the mean over photos.

fer's venv: fer 25.10.3 requires facenet-pytorch, which pins an old torch and would pull a multi-GB CUDA build,
and imports ``pkg_resources``, gone from setuptools 81. Install it without those dependencies:

    python3 -m venv fer-venv && fer-venv/bin/pip install torch==2.13.0 tensorflow opencv-contrib-python \
        pillow requests tqdm pandas matplotlib "setuptools<81"
    fer-venv/bin/pip install --no-deps fer==25.10.3 facenet-pytorch moviepy ffmpeg-python

Time ferkit on an idle machine: beside a training run on the same two cores the int8 classifier measured 1.9x
the fp32 one and 2.5-3.1x without it, so pause other work (``kill -STOP PID``, then ``kill -CONT PID``).

    python benchmarks/predict_speed.py --fer-python /work/fer-venv/bin/python
    python benchmarks/predict_speed.py --model runs/x/best.safetensors --quick --fer-python ...
    python benchmarks/predict_speed.py --fer-python ... --out results/predict_speed.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch

from ferkit.detect import haar
from ferkit.detect import load_image, sample_image_path
from ferkit.engine.predict import Recognizer
from ferkit.engine.runtime import cpu_name, git_commit
from ferkit.errors import FerkitError

# Counts of calls, passes and photos for a full run and for a smoke check (--quick).
FULL = {"warmup": 20,            # untimed batch-1 calls before timing
        "calls": 200,            # timed batch-1 calls (median reported)
        "batch_warmup": 3,       # untimed batch-64 calls
        "batch_calls": 30,       # timed batch-64 calls (median reported)
        "photos": 20,            # synthetic 640x480 photos
        "photo_warmup": 1,       # untimed passes over all photos
        "photo_repeats": 5,      # timed passes over all photos, per round
        "rounds": 2}             # rounds of ferkit then fer on the same photos; each photo's best round kept
QUICK = {"warmup": 1, "calls": 3, "batch_warmup": 0, "batch_calls": 1, "photos": 4, "photo_warmup": 1,
         "photo_repeats": 1, "rounds": 1}
BATCH = 64                       # crops per call for the throughput figure
PHOTO_SIZE = (640, 480)          # width, height of the synthetic photos, px
FACE_WIDTHS = (100, 130, 160, 190)  # face box widths in the photos, px; cycled over the photos
# Posed portraits as lab data sets hold them: 256x256, the head filling most of the frame.
PORTRAIT_SIZE = (256, 256)
PORTRAIT_WIDTHS = (75, 90, 105)
# Where OpenCV's frontal Haar cascade puts the face in the shipped 512x512 portrait (x, y, w, h), and the
# head-and-shoulders region around it that is pasted: face box widened by 0.6 w per side, 0.5 h above
# and 0.9 h below, so a 190 px face still fits a 480 px high photo.
PORTRAIT_FACE = (177, 66, 95, 95)
PORTRAIT_REGION = (120, 19, 329, 247)  # x0, y0, x1, y1
FEATHER = 0.15                   # width of the paste's soft edge, as a fraction of the ellipse radius
MIN_IOU = 0.4                    # a found face this close to the pasted one counts as on target
BUSY_LOAD = 0.5                  # 1-minute load average above which the run is flagged as contended


# -- photos ------------------------------------------------------------------------------------------
def background(rng: np.random.Generator, kind: str, size: tuple[int, int] = PHOTO_SIZE) -> np.ndarray:
    """A ``size`` (width, height) RGB uint8 background: ``flat``, ``gradient``, ``blobs`` or ``grain``."""
    w, h = size
    if kind == "flat":
        return np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (h, w, 3)).copy()
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        t = (xx * np.cos(angle) + yy * np.sin(angle))
        t = ((t - t.min()) / (t.max() - t.min()))[..., None]
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        return (a * (1 - t) + b * t).astype(np.uint8)
    if kind == "blobs":
        coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.float32)
        return np.clip(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)
    if kind == "grain":
        noise = rng.normal(rng.uniform(60, 200), 40, (h, w, 3)).astype(np.float32)
        return np.clip(cv2.GaussianBlur(noise, (3, 3), 0), 0, 255).astype(np.uint8)
    raise ValueError(f"unknown background {kind!r}")


def make_photos(n: int, seed: int, size: tuple[int, int] = PHOTO_SIZE, widths: tuple[int, ...] = FACE_WIDTHS,
                ) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """``n`` RGB photos of ``size`` (N x H x W x 3 uint8) with one pasted face each, its width cycling through
    ``widths``, and those face boxes."""
    rng = np.random.default_rng(seed)
    portrait = load_image(sample_image_path())
    x0, y0, x1, y1 = PORTRAIT_REGION
    region = portrait[y0:y1, x0:x1].astype(np.float32)
    fx, fy, fw, fh = PORTRAIT_FACE
    kinds = ("flat", "gradient", "blobs", "grain")
    photos, boxes = [], []
    for i in range(n):
        scale = widths[i % len(widths)] / fw
        rw, rh = round(region.shape[1] * scale), round(region.shape[0] * scale)
        patch = cv2.resize(region, (rw, rh), interpolation=cv2.INTER_LINEAR)
        # An elliptical mask with a soft edge, so no straight paste border looks like a feature.
        yy, xx = np.mgrid[0:rh, 0:rw]
        r = np.hypot((xx - (rw - 1) / 2) / (rw / 2), (yy - (rh - 1) / 2) / (rh / 2))
        alpha = np.clip((1 - r) / FEATHER, 0, 1)[..., None]
        canvas = background(rng, kinds[(i // len(widths)) % len(kinds)], size).astype(np.float32)
        px = int(rng.integers(0, size[0] - rw + 1))
        py = int(rng.integers(0, size[1] - rh + 1))
        canvas[py:py + rh, px:px + rw] = alpha * patch + (1 - alpha) * canvas[py:py + rh, px:px + rw]
        photos.append(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
        boxes.append((px + round((fx - x0) * scale), py + round((fy - y0) * scale), round(fw * scale),
                      round(fh * scale)))
    return np.stack(photos), boxes


def iou(a: tuple[int, ...] | list[int], b: tuple[int, ...] | list[int]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def face_counts(found: list[list[list[int]]], truth: list[tuple[int, int, int, int]]) -> tuple[int, int]:
    """Photos with exactly one face found, and those of them where it is the pasted face."""
    one = [(f[0], t) for f, t in zip(found, truth) if len(f) == 1]
    return len(one), sum(iou(f, t) >= MIN_IOU for f, t in one)


# -- timing ------------------------------------------------------------------------------------------
def median_ms(fn: Callable[[], Any], warmup: int, calls: int) -> float:
    """Median wall-clock milliseconds of ``fn()`` over ``calls`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_photos(recognizer: Recognizer, photos: np.ndarray, warmup: int,
                repeats: int) -> tuple[list[float], list[list[list[int]]]]:
    """Per-photo milliseconds (median over ``repeats`` passes) of ``recognizer(photo)``, and the boxes found."""
    for _ in range(warmup):
        for photo in photos:
            recognizer(photo)
    times: list[list[float]] = [[] for _ in photos]
    boxes: list[list[list[int]]] = []
    for _ in range(repeats):
        boxes = []
        for i, photo in enumerate(photos):
            start = time.perf_counter()
            result = recognizer(photo)[0]
            times[i].append((time.perf_counter() - start) * 1e3)
            boxes.append([list(face.box) for face in result.faces])
    return [statistics.median(t) for t in times], boxes


def best_rounds(recognizer: Recognizer, photos: np.ndarray, fer_python: str | None, threads: int,
                counts: dict[str, int]) -> tuple[list[float], list, dict[str, Any] | None]:
    """ferkit's and (with ``fer_python``) fer's per-photo milliseconds on ``photos``, the tools taking turns for
    ``counts["rounds"]`` rounds and each photo's best round kept: ferkit's ms and boxes, and fer's worker result
    with its ms replaced the same way (None without fer)."""
    ours: list[list[float]] = []
    theirs: list[list[float]] = []
    fer = None
    for _ in range(counts["rounds"]):
        ms, found = time_photos(recognizer, photos, counts["photo_warmup"], counts["photo_repeats"])
        ours.append(ms)
        if fer_python:
            fer = run_fer(fer_python, photos, threads, counts)
            theirs.append(fer["ms"])
    if fer is not None:
        fer = {**fer, "ms": [min(t) for t in zip(*theirs)]}
    return [min(t) for t in zip(*ours)], found, fer


def run_fer(python: str, photos: np.ndarray, threads: int, counts: dict[str, int]) -> dict[str, Any]:
    """fer's per-photo milliseconds and boxes from ``_fer_worker.py`` run by the interpreter ``python``."""
    worker = Path(__file__).with_name("_fer_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with tempfile.TemporaryDirectory(prefix="ferkit-bench-") as tmp:
        path = Path(tmp) / "photos.npy"
        np.save(path, photos)
        done = subprocess.run([python, str(worker), str(path), "--threads", str(threads),
                               "--warmup", str(counts["photo_warmup"]), "--repeats", str(counts["photo_repeats"])],
                              capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise FerkitError(f"the fer worker failed (exit {done.returncode}): {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- reporting ---------------------------------------------------------------------------------------
def cpus() -> str:
    """The CPU model and logical core count."""
    return f"{cpu_name()}, {os.cpu_count()} logical CPUs"


def note(message: str) -> None:
    """A remark for the reader, kept off stdout so stdout stays one JSON figure per line."""
    print(f"note: {message}", file=sys.stderr, flush=True)


def write_record(out: str, benchmark: str, figures: list[dict[str, Any]], **extra: Any) -> None:
    """Write a benchmark's figures to ``out`` as JSON with provenance: command, commit, hardware, date."""
    record = {"benchmark": benchmark, "command": shlex.join(["python", *sys.argv]), "git_commit": git_commit(),
              "hardware": cpus(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              **extra, "figures": figures}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(record, indent=2) + "\n")
    note(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    """Measure and print every figure; with ``--out`` also write them with provenance."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="shipped model name or a .safetensors/.pt file")
    parser.add_argument("--threads", type=int, default=2, help="threads for both tools (OpenCV and the network)")
    parser.add_argument("--fer-python", help="python of a venv with fer installed; fer is skipped without it")
    parser.add_argument("--photos", type=int, help=f"synthetic photos (default {FULL['photos']})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the photos and the random crops")
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx", "onnx-int8"],
                        choices=["torch", "onnx", "onnx-int8"],
                        help="ferkit backends timed on face crops")
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke check, not a measurement")
    parser.add_argument("--out", help="also write all figures with provenance to this JSON file")
    args = parser.parse_args(argv)
    try:
        figures = measure(args)
    except FerkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.out:
        write_record(args.out, "predict_speed", figures, quick=args.quick)
    return 0


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every figure, each printed as one JSON line as soon as it is measured."""
    counts = dict(QUICK if args.quick else FULL)
    if args.photos is not None:
        counts["photos"] = args.photos
    if args.threads < 1 or counts["photos"] < 1:
        raise FerkitError("--threads and --photos must be at least 1")
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    figures: list[dict[str, Any]] = []

    def emit(figure: str, value: float | int, unit: str, **context: Any) -> None:
        line = {"figure": figure, "value": value, "unit": unit, **context, "threads": args.threads}
        figures.append(line)
        print(json.dumps(line), flush=True)

    load_1m = os.getloadavg()[0]
    if load_1m > BUSY_LOAD:
        # Threads that find their cores taken stall torch's OpenMP barriers far more than other runtimes.
        note(f"the machine is busy (1-minute load {load_1m:.2f}): these figures measure contention")
    env = {"torch": torch.__version__, "opencv": cv2.__version__, "numpy": np.__version__,
           "python": platform.python_version(), "cpu": cpus(), "load_1m": round(load_1m, 2),
           "quick": args.quick}
    recognizers: dict[str, Recognizer] = {}
    for backend in args.backends:
        if backend.startswith("onnx"):
            try:
                import onnxruntime
            except ImportError:
                note("onnx backend skipped: onnxruntime is not installed (pip install 'ferkit[onnx]')")
                continue
            env["onnxruntime"] = onnxruntime.__version__
        recognizers[backend] = Recognizer.load(args.model, backend=backend, threads=args.threads)
    first = next(iter(recognizers.values()), None)
    if first is None:
        raise FerkitError("no backend to time")
    meta = first.meta
    model = {"model": str(args.model), "arch": f"{meta.model} {meta.attention} {meta.stem} stem",
             "input": f"{meta.in_chans}x{meta.input_size}x{meta.input_size}", "tta": first.tta}

    # 1. face crops: the same random uint8 crops for every backend
    rng = np.random.default_rng(args.seed)
    crops = torch.from_numpy(rng.integers(0, 256, (BATCH, meta.in_chans, meta.input_size,
                                                    meta.input_size), dtype=np.uint8))
    for backend, recognizer in recognizers.items():
        ms = median_ms(lambda: recognizer.classify_crops(crops[:1]), counts["warmup"], counts["calls"])
        emit("crop_latency", round(ms, 3), "ms", tool="ferkit", backend=backend, batch=1, n=counts["calls"],
             **model, env=env)
        ms = median_ms(lambda: recognizer.classify_crops(crops), counts["batch_warmup"], counts["batch_calls"])
        emit("crop_throughput", round(BATCH / ms * 1e3, 1), "crops/s", tool="ferkit", backend=backend,
             batch=BATCH, n=counts["batch_calls"], **model, env=env)

    # 2. whole photos: ferkit's default Recognizer (backend "auto": the int8 file beside a shipped model) against
    # fer, same photos, same threads; the fp32 ONNX backend beside it when auto is another
    photos, truth = make_photos(counts["photos"], args.seed)
    default = Recognizer.load(args.model, threads=args.threads)
    photo_context = {"photos": counts["photos"], "size": "x".join(map(str, PHOTO_SIZE)),
                     "repeats": counts["photo_repeats"], "seed": args.seed}
    recognizer = default
    fer_python = args.fer_python
    if not fer_python:
        note("fer skipped: pass --fer-python PATH (the python of a venv with fer installed)")
    elif not Path(fer_python).is_file():
        note(f"fer skipped: no interpreter at {fer_python}")
        fer_python = None
    photo_context["rounds"] = counts["rounds"]
    ms, found, fer = best_rounds(recognizer, photos, fer_python, args.threads, counts)
    ferkit_ms = statistics.fmean(ms)
    one, on_target = face_counts(found, truth)
    detector = {"name": recognizer.detector, "min_face": recognizer.min_face}
    if recognizer.detector.startswith("haar"):
        detector.update({"scaleFactor": haar.SCALE_STEP, "minNeighbors": haar.MIN_NEIGHBORS,
                         "detect_size": recognizer.detect_size, "min_weight": haar.MIN_FACE_WEIGHT,
                         "cascade": "haarcascade_frontalface_default.xml + haarcascade_eye.xml (eye alignment)"})
    emit("photo_ms", round(ferkit_ms, 2), "ms/photo", tool="ferkit", backend=recognizer.backend,
         median_ms=round(statistics.median(ms), 2), **photo_context, **model, detector=detector, env=env)
    if default.backend != "onnx":
        fp32 = recognizers.get("onnx") or Recognizer.load(args.model, backend="onnx", threads=args.threads)
        ms, _ = time_photos(fp32, photos, counts["photo_warmup"], counts["photo_repeats"])
        emit("photo_ms", round(statistics.fmean(ms), 2), "ms/photo", tool="ferkit", backend="onnx",
             median_ms=round(statistics.median(ms), 2), **{**photo_context, "rounds": 1}, **model, env=env)
    emit("photos_one_face", one, "photos", tool="ferkit", on_target=on_target, **photo_context)

    if fer is None:
        return figures
    fer_ms = statistics.fmean(fer["ms"])
    fer_env = {**fer["versions"], "cpu": cpus(), "load_1m": round(os.getloadavg()[0], 2), "quick": args.quick}
    one, on_target = face_counts(fer["boxes"], truth)
    emit("photo_ms", round(fer_ms, 2), "ms/photo", tool="fer", backend="tflite",
         median_ms=round(statistics.median(fer["ms"]), 2), **photo_context, model="FER(mtcnn=False)",
         detector=fer["haar"], env=fer_env)
    emit("photos_one_face", one, "photos", tool="fer", on_target=on_target, **photo_context)

    # 3. the ratio
    emit("photo_ms_ratio", round(ferkit_ms / fer_ms, 3), "ferkit/fer", ferkit_ms=round(ferkit_ms, 2),
         fer_ms=round(fer_ms, 2), photos=counts["photos"])

    # 4. the same on posed portraits (256x256, the head filling the frame): both tools, then the ratio
    portraits, truth = make_photos(counts["photos"], args.seed, PORTRAIT_SIZE, PORTRAIT_WIDTHS)
    portrait_context = {**photo_context, "size": "x".join(map(str, PORTRAIT_SIZE))}
    ms, found, fer = best_rounds(default, portraits, fer_python, args.threads, counts)
    ours = statistics.fmean(ms)
    one, on_target = face_counts(found, truth)
    emit("photo_ms", round(ours, 2), "ms/photo", tool="ferkit", backend=default.backend,
         median_ms=round(statistics.median(ms), 2), **portrait_context, **model, env=env)
    emit("photos_one_face", one, "photos", tool="ferkit", on_target=on_target, **portrait_context)
    theirs = statistics.fmean(fer["ms"])
    one, on_target = face_counts(fer["boxes"], truth)
    emit("photo_ms", round(theirs, 2), "ms/photo", tool="fer", backend="tflite",
         median_ms=round(statistics.median(fer["ms"]), 2), **portrait_context, model="FER(mtcnn=False)", env=fer_env)
    emit("photos_one_face", one, "photos", tool="fer", on_target=on_target, **portrait_context)
    emit("photo_ms_ratio", round(ours / theirs, 3), "ferkit/fer", ferkit_ms=round(ours, 2), fer_ms=round(theirs, 2),
         photos=counts["photos"], size=portrait_context["size"])
    return figures


if __name__ == "__main__":
    sys.exit(main())
