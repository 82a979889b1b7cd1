"""``ferkit predict`` as a library: what it reads (image files, folders, video files, webcams, streamed with
bounded memory), the annotated copies it saves, and the table, JSON-lines or CSV rows it prints."""
from __future__ import annotations

import csv
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, TextIO

import numpy as np
from PIL import Image

from ferkit.detect.faces import box_iou
from ferkit.engine.predict import FaceResult, Recognizer, Result
from ferkit.engine.schema import arrow_schema, arrow_table, csv_header, csv_rows
from ferkit.errors import FerkitError
from ferkit.fileio import atomic_write, check_writable, short_path

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
        try:
            out += _expand(item)
        except OSError as e:  # a name the file system refuses to look up (too long, a loop of links)
            out.append(Source("image", item, f"{short_path(item)}: cannot be read ({e.strerror or e})"))
    return out


def _expand(item: str) -> list[Source]:
    """The sources one command-line item names (see :func:`expand_sources`)."""
    out: list[Source] = []
    path = Path(item)
    if not item.strip():
        return [Source("image", item, "an empty name is not a file, folder or webcam")]
    if item.isdigit() and not path.exists():
        return [Source("webcam", item, relative=f"webcam{item}")]
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith("."):
                    file = Path(root) / name
                    out.append(_file_source(file, file.relative_to(path)))
        return out or [Source("image", item, f"{item}: the folder holds no files")]
    if path.is_file():
        return [_file_source(path, Path(path.name))]
    return [Source("image", item, f"{short_path(item)}: no such file, folder or webcam")]


def _file_source(path: Path, relative: Path) -> Source:
    kind = "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"
    return Source(kind, str(path), relative=relative.as_posix())


def _fit(name: str, limit: int) -> str:
    """``name`` cut to at most ``limit`` bytes of UTF-8, whole characters kept."""
    return name.encode()[:limit].decode(errors="ignore")


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
        check_writable(self.folder)

    def claim(self, relative: str, suffix: str) -> Path:
        """A new, empty file for the output of the input at ``relative``, created so no one else has it."""
        rel = Path(relative or "input")
        parent = self.folder
        for part in (p for p in rel.parent.parts if p not in ("", ".", "..", "/")):
            # Every level is checked, not only the last: out/a -> /elsewhere would take a/b/y.jpg out of the folder.
            parent = parent / part
            if parent.is_symlink():
                raise FerkitError(f"{parent}: a link inside the --save folder; not followed")
            if parent.exists() and not parent.is_dir():
                raise FerkitError(f"{parent}: a file inside the --save folder where a folder would go")
            parent.mkdir(exist_ok=True)
        # A name near the file system's limit of 255 bytes leaves no room for "_ferkit_N.jpg".
        stem = _fit(rel.stem or "input", 200)
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
            # Renamed over the claimed empty file: a link put in its place meanwhile is replaced, never followed.
            atomic_write(path, lambda tmp: image.save(tmp, format="JPEG", quality=90))
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


@contextmanager
def quiet_opencv() -> Iterator[None]:
    """OpenCV's own log lines (``[ WARN ]`` for a missing webcam or an odd file) kept out of ferkit's output; a
    failure is still reported, by ferkit, in one line."""
    import cv2

    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def iter_video(recognizer: Recognizer, source: Source, stride: int = 1, chunk: int = 16, smooth: float = 0.0,
               start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray, Result]]:
    """(frame index, RGB frame, result) for every ``stride``-th frame of the file (index % stride == 0) from
    frame ``start`` up to ``stop`` (None: the end); at most ``chunk`` frames held at once."""
    import cv2

    with quiet_opencv():  # a missing webcam makes OpenCV print [ WARN ] lines of its own
        capture = cv2.VideoCapture(int(source.location) if source.kind == "webcam" else source.location)
    fps = capture.get(cv2.CAP_PROP_FPS) if source.kind == "video" else 0.0
    if not capture.isOpened():
        raise OSError(f"{source.location}: cannot open this {'webcam' if source.kind == 'webcam' else 'video'}")
    if start > 0 and not (capture.set(cv2.CAP_PROP_POS_FRAMES, start)
                          and int(capture.get(cv2.CAP_PROP_POS_FRAMES)) == start):
        capture.release()
        raise OSError(f"{source.location}: cannot seek to frame {start}")
    tracker = FaceTracker(keep=smooth)
    index = start
    try:
        while stop is None or index < stop:
            frames: list[tuple[int, np.ndarray]] = []
            while len(frames) < chunk and (stop is None or index < stop):
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
                result.source, result.frame = source.location, i
                result.time_s = i / fps if fps > 0 else None
                result.faces = tracker(result.faces)
                yield i, frame, result
    finally:
        capture.release()


def annotate_video(recognizer: Recognizer, source: Source, stride: int = 1, smooth: float = 0.0,
                   save: SaveFolder | None = None, progress: bool = True) -> Iterator[Result]:
    """The result of every ``stride``-th frame of a video or webcam, faces tracked (and smoothed with
    ``smooth``); with ``save``, each frame is also drawn into a new MP4 there. A source that cannot be
    read ends with one ``error`` result."""
    import cv2
    from tqdm.auto import tqdm

    fps, total = 25.0, None
    if source.kind == "video":
        probe = cv2.VideoCapture(source.location)
        total = int(probe.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        fps = probe.get(cv2.CAP_PROP_FPS) or fps
        probe.release()
    out, frames = None, 0
    # The bar counts the frames read, stride included, and ends full however the stride divides the video.
    bar = tqdm(total=total, desc=Path(source.location).name, unit="frame", disable=not progress)
    try:
        for index, frame, result in iter_video(recognizer, source, stride, smooth=smooth):
            frames += 1
            bar.update(min(index + stride, total or index + stride) - bar.n)
            if save is not None:
                result.image = frame
                annotated = cv2.cvtColor(np.asarray(result.plot()), cv2.COLOR_RGB2BGR)
                result.image = None
                if out is None:
                    out = cv2.VideoWriter(str(save.claim(source.relative, ".mp4")), cv2.VideoWriter_fourcc(*"mp4v"),
                                          fps / stride, (annotated.shape[1], annotated.shape[0]))
                out.write(annotated)
            yield result
    except (OSError, FerkitError) as e:
        yield Result(source.location, status="error", error=str(e))
        return
    finally:
        bar.close()
        if out is not None:
            out.release()
    if frames == 0:
        yield Result(source.location, status="error", error=f"{source.location}: no frames could be read")


def predict_sources(recognizer: Recognizer, sources: list[Source], batch_size: int = 64, stride: int = 1,
                    smooth: float = 0.0, save: SaveFolder | None = None, progress: bool = True) -> Iterator[Result]:
    """Results for every source in the order given: runs of images ``batch_size`` at a time, videos and webcams
    frame by frame (see :func:`annotate_video`). With ``save``, annotated copies are written there; an input
    that cannot be read or saved gives an ``error`` result and the others go on."""
    from tqdm.auto import tqdm

    images = sum(s.kind == "image" for s in sources)
    bar = tqdm(total=images, desc="images", unit="image", disable=images < 2 or not progress)
    try:
        run: list[Source] = []
        for source in [*sources, None]:  # None: the end, which flushes the last run of images
            if source is not None and source.kind == "image":
                run.append(source)
                if len(run) < batch_size:
                    continue
            if run:
                yield from _image_results(recognizer, run, save)
                bar.update(len(run))
                run = []
            if source is not None and source.kind != "image":
                yield from annotate_video(recognizer, source, stride, smooth, save, progress)
    finally:
        bar.close()


def _image_results(recognizer: Recognizer, sources: list[Source], save: SaveFolder | None) -> Iterator[Result]:
    """The results of one batch of image sources, in order, their annotated copies saved."""
    readable = [s for s in sources if s.error is None]
    results = {id(s): r for s, r in zip(readable, recognizer([s.location for s in readable]))}
    for s in sources:
        result = results.get(id(s)) or Result(s.location, status="error", error=s.error,
                                              model=recognizer.meta.name)
        if save is not None and result.image is not None:
            try:
                save.write_image(result.plot(), s.relative)
            except (FerkitError, OSError) as e:
                result.status, result.error = "error", f"--save: {e}"
        yield result


class RunSummary:
    """Counts of a prediction run, for its closing line: inputs, faces, inputs without a face, errors, speed."""

    CROP_SIDE = 256  # an image no larger than this on its longer side, and without a face, may be a face crop

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.inputs = self.faces = self.no_face = self.errors = self.small_no_face = 0

    def add(self, result: Result) -> None:
        """Count one result (an image, or a video frame)."""
        self.inputs += 1
        self.faces += len(result.faces)
        self.no_face += result.status == "no_face"
        self.errors += result.status == "error"
        self.small_no_face += (result.status == "no_face" and result.frame is None and result.width is not None
                               and max(result.width, result.height) <= self.CROP_SIDE)

    def hint(self) -> str | None:
        """Once per run: where small images had no face found, they may be face crops, and what to do then."""
        if not self.small_no_face:
            return None
        return (f"{self.small_no_face} image(s) of at most {self.CROP_SIDE} px had no face found: if they are face "
                "crops already (as FER2013's 48x48 images are), run with --no-detect")

    def line(self, save: SaveFolder | None = None) -> str:
        """One line saying what the run did and where its copies went."""
        seconds = max(time.perf_counter() - self.start, 1e-9)
        text = (f"{self.inputs} input{'s' if self.inputs != 1 else ''} (images and frames), {self.faces} "
                f"face{'s' if self.faces != 1 else ''}, {self.no_face} without a face, {self.errors} "
                f"error{'s' if self.errors != 1 else ''}; {self.inputs / seconds:.1f} inputs/s")
        return text + (f"; annotated copies in {save.folder}" if save is not None else "")


OUTPUT_FORMATS = ("table", "jsonl", "csv", "parquet")
PARQUET_ROWS = 4096  # rows buffered before a row group is written


class ResultWriter:
    """Writes results to a text stream as a readable ``table``, ``jsonl`` (one result a line, the fields of
    :class:`~ferkit.engine.schema.ImageRecord`) or ``csv`` (:func:`~ferkit.engine.schema.csv_header`: one face a
    row, a probability column per class; an input with no face gets one row)."""

    def __init__(self, stream: TextIO | BinaryIO, format: str, classes: list[str]):
        if format not in OUTPUT_FORMATS:
            raise FerkitError(f"output format {format!r}: choose one of {', '.join(OUTPUT_FORMATS)}")
        self.stream, self.format, self.classes = stream, format, list(classes)
        self.csv = csv.writer(stream) if format == "csv" else None
        if self.csv is not None:
            self.csv.writerow(csv_header(self.classes))
        self.parquet, self.rows = None, []
        if format == "parquet":  # the CSV's rows, typed (schema.arrow_schema); stream: a binary file
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise FerkitError('Parquet output needs pyarrow: pip install "ferkit[parquet]"') from None
            self.arrow = arrow_schema(self.classes)
            self.parquet = pq.ParquetWriter(stream, self.arrow)

    def write(self, result: Result) -> None:
        """Write one result."""
        if self.parquet is not None:
            self.rows += csv_rows(result.to_record(), self.classes)
            if len(self.rows) >= PARQUET_ROWS:
                self._flush()
        elif self.format == "jsonl":
            print(json.dumps(result.to_dict()), file=self.stream)
        elif self.csv is not None:
            self.csv.writerows([["" if cell is None else cell for cell in row]
                                for row in csv_rows(result.to_record(), self.classes)])
        else:
            where = result.source if result.frame is None else f"{result.source} frame {result.frame}"
            if result.status != "ok":
                print(f"{where}: {result.status.replace('_', ' ')}" + (f" ({result.error})" if result.error else ""),
                      file=self.stream)
            for n, face in enumerate(result.faces):
                ranked = "  ".join(f"{k} {v:.2f}" for k, v in sorted(face.probs.items(), key=lambda kv: -kv[1])[:3])
                track = "" if face.track is None else f" (track {face.track})"
                print(f"{where}  face {n + 1}{track} at {face.box}: {face.top1} {face.top1conf:.0%}   ({ranked})",
                      file=self.stream)

    def _flush(self) -> None:
        self.parquet.write_table(arrow_table(self.rows, self.classes))
        self.rows = []

    def close(self) -> None:
        """Finish the output (a Parquet file's last rows and footer); text formats need nothing."""
        if self.parquet is not None:
            if self.rows:
                self._flush()
            self.parquet.close()
            self.parquet = None
