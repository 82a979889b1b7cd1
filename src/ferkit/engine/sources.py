"""What ``ferkit predict`` reads: image files, folders, video files and webcams, streamed with bounded memory."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from ferkit.detect.faces import box_iou
from ferkit.engine.predict import FaceResult, Recognizer, Result
from ferkit.errors import FerkitError

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})


@dataclass(frozen=True)
class Source:
    """One thing to read: ``kind`` is ``image``, ``video`` or ``webcam``; ``error`` when it cannot be read at all.

    ``relative`` is where its outputs go under a ``--save`` folder: its path inside the folder it
    was found in, or its file name when it was named itself.
    """

    kind: str
    location: str
    error: str | None = None
    relative: str = ""


def expand_sources(items: list[str]) -> list[Source]:
    """Files as given, folders walked recursively (hidden files skipped), digits as webcam indices.

    An empty name, a missing path and a folder with no files each give one source with an error.
    """
    out: list[Source] = []
    for item in items:
        path = Path(item)
        if not item.strip():
            out.append(Source("image", item, "an empty name is not a file, folder or webcam"))
        elif item.isdigit() and not path.exists():
            out.append(Source("webcam", item, relative=f"webcam{item}"))
        elif path.is_dir():
            found = len(out)
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        file = Path(root) / name
                        out.append(_file_source(file, file.relative_to(path)))
            if len(out) == found:
                out.append(Source("image", item, f"{item}: the folder holds no files"))
        elif path.is_file():
            out.append(_file_source(path, Path(path.name)))
        else:
            out.append(Source("image", item, f"{item}: no such file, folder or webcam"))
    return out


def _file_source(path: Path, relative: Path) -> Source:
    kind = "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"
    return Source(kind, str(path), relative=relative.as_posix())


class SaveFolder:
    """Where ``--save`` writes annotated images and videos: every name new, nothing overwritten, no link followed.

    An output keeps its input's relative path (``a/x.jpg`` -> ``a/x_ferkit.jpg``); a name already
    taken, by an earlier run, another input or anything else (a symlink included), gets a counter.
    """

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise FerkitError(f"--save {self.folder}: exists and is not a folder")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FerkitError(f"--save {self.folder}: cannot create the folder ({e.strerror})") from None
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise FerkitError(f"--save {self.folder}: the folder is not writable")

    def claim(self, relative: str, suffix: str) -> Path:
        """A new, empty file for the output of the input at ``relative``, created so no one else has it."""
        rel = Path(relative or "input")
        parts = [p for p in rel.parent.parts if p not in ("", ".", "..")]
        parent = self.folder.joinpath(*parts)
        if parent.is_symlink():
            raise FerkitError(f"{parent}: a link inside the --save folder; not followed")
        parent.mkdir(parents=True, exist_ok=True)
        stem = rel.stem or "input"
        for n in range(1, 10_000):
            path = parent / (f"{stem}_ferkit{suffix}" if n == 1 else f"{stem}_ferkit_{n}{suffix}")
            try:
                # O_EXCL: fails on any existing name, a dangling or live symlink included, so no
                # file is overwritten and no link is followed out of the folder.
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                return path
            except FileExistsError:
                continue
        raise FerkitError(f"{parent}: no free name for {stem}_ferkit{suffix}")

    def write_image(self, image: Image.Image, relative: str) -> Path:
        """Save an annotated image as a JPEG under a new name for the input at ``relative``."""
        path = self.claim(relative, ".jpg")
        try:
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)), "wb") as f:
                image.save(f, format="JPEG", quality=90)
        except OSError as e:
            path.unlink(missing_ok=True)
            raise FerkitError(f"{path}: cannot write ({e.strerror or e})") from None
        return path


class FaceTracker:
    """Track numbers for the faces of consecutive video frames, and optional smoothing along each track.

    A face continues the track whose last box overlaps it most (intersection over union at least
    ``min_iou``; best-overlapping pairs are matched first, each track and face once); any other face
    starts a new track. A track not seen for ``patience`` frames ends. With ``keep`` > 0 a face's
    probabilities are ``keep`` x its track's last (smoothed) ones + (1 - ``keep``) x its own.
    """

    def __init__(self, keep: float = 0.0, min_iou: float = 0.3, patience: int = 10):
        self.keep, self.min_iou, self.patience = keep, min_iou, patience
        self.tracks: dict[int, tuple[FaceResult, int]] = {}  # track -> (its last face, the frame it was seen)
        self.frame, self.next_track = 0, 1

    def __call__(self, faces: list[FaceResult]) -> list[FaceResult]:
        self.frame += 1
        pairs = sorted(((box_iou(last.box, face.box), track, i) for track, (last, _) in self.tracks.items()
                        for i, face in enumerate(faces)), key=lambda p: -p[0])
        matched: dict[int, int] = {}  # face index -> track
        for overlap, track, i in pairs:
            if overlap < self.min_iou:
                break
            if i not in matched and track not in matched.values():
                matched[i] = track
        out = []
        for i, face in enumerate(faces):
            track, probs = matched.get(i), face.probs
            if track is None:
                track, self.next_track = self.next_track, self.next_track + 1
            elif self.keep > 0:
                last = self.tracks[track][0].probs
                probs = {k: self.keep * last[k] + (1 - self.keep) * v for k, v in face.probs.items()}
            face = FaceResult(face.box, probs, face.score, face.eyes, track)
            self.tracks[track] = (face, self.frame)
            out.append(face)
        self.tracks = {t: v for t, v in self.tracks.items() if self.frame - v[1] <= self.patience}
        return out


def iter_video(recognizer: Recognizer, source: Source, stride: int = 1, chunk: int = 16,
               smooth: float = 0.0) -> Iterator[tuple[int, np.ndarray, Result]]:
    """(frame index, RGB frame, result) for every ``stride``-th frame; at most ``chunk`` frames held at once."""
    import cv2

    capture = cv2.VideoCapture(int(source.location) if source.kind == "webcam" else source.location)
    if not capture.isOpened():
        raise OSError(f"{source.location}: cannot open this {'webcam' if source.kind == 'webcam' else 'video'}")
    tracker = FaceTracker(keep=smooth)
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
                result.faces = tracker(result.faces)
                yield i, frame, result
    finally:
        capture.release()
