"""What ``ferkit predict`` reads: image files, folders, video files and webcams, streamed with bounded memory."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ferkit.engine.predict import FaceResult, Recognizer, Result

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})


@dataclass(frozen=True)
class Source:
    """One thing to read: ``kind`` is ``image``, ``video`` or ``webcam``; ``error`` when it cannot be read at all."""

    kind: str
    location: str
    error: str | None = None


def expand_sources(items: list[str]) -> list[Source]:
    """Files as given, folders walked recursively (hidden files skipped), digits as webcam indices."""
    out: list[Source] = []
    for item in items:
        path = Path(item)
        if item.isdigit() and not path.exists():
            out.append(Source("webcam", item))
        elif path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        out.append(_file_source(Path(root) / name))
        elif path.is_file():
            out.append(_file_source(path))
        else:
            out.append(Source("image", item, f"{item}: no such file, folder or webcam"))
    return out


def _file_source(path: Path) -> Source:
    return Source("video" if path.suffix.lower() in VIDEO_SUFFIXES else "image", str(path))


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    return inter / float(aw * ah + bw * bh - inter) if inter else 0.0


class FaceSmoother:
    """Per-face exponential smoothing of probabilities over video frames; faces matched by box overlap."""

    def __init__(self, keep: float = 0.6, min_iou: float = 0.3):
        self.keep, self.min_iou = keep, min_iou
        self.tracks: list[FaceResult] = []

    def __call__(self, faces: list[FaceResult]) -> list[FaceResult]:
        smoothed = []
        for face in faces:
            best = max(self.tracks, key=lambda t: _iou(t.box, face.box), default=None)
            if best is not None and _iou(best.box, face.box) >= self.min_iou:
                probs = {k: self.keep * best.probs[k] + (1 - self.keep) * v for k, v in face.probs.items()}
                face = FaceResult(face.box, probs, face.score, face.eyes)
            smoothed.append(face)
        self.tracks = smoothed
        return smoothed


def iter_video(recognizer: Recognizer, source: Source, stride: int = 1, chunk: int = 16,
               smooth: float = 0.0) -> Iterator[tuple[int, np.ndarray, Result]]:
    """(frame index, RGB frame, result) for every ``stride``-th frame; at most ``chunk`` frames held at once."""
    import cv2

    capture = cv2.VideoCapture(int(source.location) if source.kind == "webcam" else source.location)
    if not capture.isOpened():
        raise OSError(f"{source.location}: cannot open this {'webcam' if source.kind == 'webcam' else 'video'}")
    smoother = FaceSmoother(keep=smooth) if smooth > 0 else None
    index = 0
    try:
        while True:
            frames: list[tuple[int, np.ndarray]] = []
            while len(frames) < chunk:
                ok, frame = capture.read()
                if not ok:
                    break
                if index % stride == 0:
                    frames.append((index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
                index += 1
            if not frames:
                return
            results = recognizer([f for _, f in frames], keep_images=False)
            for (i, frame), result in zip(frames, results):
                result.source = f"{source.location}#{i}"
                if smoother is not None:
                    result.faces = smoother(result.faces)
                yield i, frame, result
    finally:
        capture.release()
