"""What a scaled-out prediction run reads and where it stands, without Ray: the inputs listed once into
deterministic shards, the run's manifest, and its output folder of Parquet shards written atomically.

An output folder holds ``part-NNNNNN.parquet`` (one per shard, the flat rows of :mod:`ferkit.engine.schema`),
``_listing.parquet`` (one row per shard: what it reads) and ``_manifest.json`` (what made the run). Readers of
Parquet folders (pyarrow, pandas, Ray, Spark, DuckDB) skip names that start with ``_`` or ``.``, so the folder
reads as one table of results. A shard is written to a hidden temp file and renamed into place, so a part file
that exists is whole; a rerun skips those and redoes the others.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from ferkit.errors import FerkitError

LISTING = "_listing.parquet"
MANIFEST = "_manifest.json"
PART = "part-{:06d}.parquet"
TEMP_PREFIX = "."          # temp files: .part-NNNNNN.parquet.<random>.tmp, skipped by Parquet readers
TEMP_SUFFIX = ".tmp"
SHARD_SIZE = 256           # images per shard, by default
SEGMENT_FRAMES = 9000      # frames per video segment (5 min at 30 fps), by default
TRACK_SPAN = 100_000       # a segment's track numbers start at segment x TRACK_SPAN + 1
LISTING_GROUP = 64         # shards per row group of the listing: a worker reads one group to find its shard
LISTING_CHUNK = 16 * LISTING_GROUP  # shards held before they are written to the listing
MANIFEST_KEYS = ("ferkit", "model", "options", "sources", "inputs_from", "shard_size", "segment_frames")
"""What a rerun must share with the run it resumes."""


def is_uri(text: str) -> bool:
    """Whether ``text`` names a file through a URI (``s3://``, ``gs://``, ``file://``, ...) rather than a path."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.replace("+", "").replace("-", "").isalnum()


def open_folder(uri_or_path: str) -> tuple[Any, str]:
    """The pyarrow file system and path of an output folder given as a local path or a URI."""
    import pyarrow.fs as pafs

    if not is_uri(uri_or_path):
        return pafs.LocalFileSystem(), str(Path(uri_or_path).absolute())
    try:
        return pafs.FileSystem.from_uri(uri_or_path)
    except (ValueError, OSError, ImportError) as e:
        raise FerkitError(f"{uri_or_path}: pyarrow cannot open this location ({str(e).splitlines()[0]})") from None


@dataclass(frozen=True)
class Item:
    """One unit of work: an image, or a segment of frames [start, stop) of a video. ``source`` is how results
    name it (as ``ferkit predict`` does), ``location`` where it is read (an absolute path or a URI);
    ``error`` when it cannot be read at all."""

    source: str
    location: str
    kind: str = "image"
    error: str | None = None
    start: int | None = None
    stop: int | None = None
    segment: int | None = None


def list_inputs(items: list[str], segment_frames: int = SEGMENT_FRAMES,
                inputs_from: str | None = None) -> Iterator[Item]:
    """The inputs ``items`` name, then those of the lines of the file ``inputs_from``, in order: local files
    and folders as ``ferkit predict`` walks them, URIs of any file system pyarrow knows walked the same way
    (sorted, hidden names skipped); each video split into segments of ``segment_frames`` frames. A name that
    cannot be read gives one item with an error."""
    for item in items:
        yield from _list_one(item, segment_frames)
    if inputs_from is not None:
        for line in read_input_lines(inputs_from):
            yield from _list_one(line, segment_frames)


def read_input_lines(path: str) -> Iterator[str]:
    """The inputs a list file names, one a line (blank lines and ``#`` comments skipped), read as it goes."""
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            line = line.rstrip("\r\n")
            if line.strip() and not line.lstrip().startswith("#"):
                yield line


def check_input_list(path: str) -> str:
    """The sha256 of the list file ``path``, after checking that it reads as UTF-8 text; FerkitError if not."""
    digest, text = hashlib.sha256(), codecs.getincrementaldecoder("utf-8")()
    read = at = 0  # bytes read; where the bytes being decoded start (the decoder may hold a split character)
    try:
        with open(path, "rb") as data:  # one pass: hashed and decoded as it is read
            while piece := data.read(1 << 20):
                digest.update(piece)
                at = read - len(text.getstate()[0])
                read += len(piece)
                text.decode(piece)
            at = read - len(text.getstate()[0])
            text.decode(b"", final=True)
    except OSError as e:
        raise FerkitError(f"--inputs-from {path}: cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise FerkitError(f"--inputs-from {path}: not UTF-8 text (byte {at + e.start}); give one path or URI a "
                          "line") from None
    return digest.hexdigest()


def _list_one(item: str, segment_frames: int) -> Iterator[Item]:
    """The items one name gives (see :func:`list_inputs`)."""
    from ferkit.engine.sources import expand_sources

    if is_uri(item):
        yield from _list_uri(item)
        return
    for source in expand_sources([item]):
        location = source.location if source.error else str(Path(source.location).absolute())
        if source.kind == "webcam":
            yield Item(source.location, source.location, "image",
                       f"webcam {source.location}: a webcam is read by `ferkit predict` without --engine ray")
        elif source.kind == "video" and source.error is None:
            yield from _segments(source.location, location, segment_frames)
        else:
            yield Item(source.location, location, source.kind, source.error)


def _list_uri(uri: str) -> Iterator[Item]:
    import pyarrow.fs as pafs

    from ferkit.engine.sources import VIDEO_SUFFIXES

    scheme = uri[:uri.index("://") + 3]
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            found = [f for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                     if f.type == pafs.FileType.File
                     and not any(part.startswith(".") for part in posixpath.relpath(f.path, path).split("/"))]
            paths = sorted(f.path for f in found)
            if not paths:
                yield Item(uri, uri, "image", f"{uri}: the folder holds no files")
            for p in paths:
                name = scheme + p
                kind = "video" if posixpath.splitext(p)[1].lower() in VIDEO_SUFFIXES else "image"
                yield Item(name, name, kind, None, *((0, None, 0) if kind == "video" else ()))
        elif info.type == pafs.FileType.File:
            kind = "video" if posixpath.splitext(path)[1].lower() in VIDEO_SUFFIXES else "image"
            yield Item(uri, uri, kind, None, *((0, None, 0) if kind == "video" else ()))
        else:
            yield Item(uri, uri, "image", f"{uri}: no such file or folder")
    except (ValueError, OSError, ImportError) as e:
        yield Item(uri, uri, "image", f"{uri}: cannot be listed ({str(e).splitlines()[0]})")


def _segments(source: str, location: str, segment_frames: int) -> Iterator[Item]:
    """A local video as segments of ``segment_frames`` frames (one segment when its length is unknown)."""
    import cv2

    from ferkit.engine.sources import quiet_opencv

    with quiet_opencv():
        probe = cv2.VideoCapture(location)
        frames = int(probe.get(cv2.CAP_PROP_FRAME_COUNT)) if probe.isOpened() else 0
        probe.release()
    if frames <= segment_frames:
        yield Item(source, location, "video", None, 0, None, 0)
        return
    for n, start in enumerate(range(0, frames, segment_frames)):
        # The last segment reads to the end, whatever the header's frame count said.
        stop = start + segment_frames if start + segment_frames < frames else None
        yield Item(source, location, "video", None, start, stop, n)


def shards(items: Iterable[Item], shard_size: int = SHARD_SIZE) -> Iterator[list[Item]]:
    """``items`` grouped into shards in order: runs of up to ``shard_size`` images, each video segment alone
    (its frames are read in order by one worker)."""
    run: list[Item] = []
    for item in items:
        if item.kind == "video" and item.error is None:
            if run:
                yield run
                run = []
            yield [item]
            continue
        run.append(item)
        if len(run) == shard_size:
            yield run
            run = []
    if run:
        yield run


def listing_schema() -> Any:
    """One row per shard: its number and, per item, the fields of :class:`Item`."""
    import pyarrow as pa

    return pa.schema([("shard", pa.int32()), ("source", pa.list_(pa.string())), ("location", pa.list_(pa.string())),
                      ("kind", pa.list_(pa.string())), ("error", pa.list_(pa.string())),
                      ("start", pa.list_(pa.int64())), ("stop", pa.list_(pa.int64())),
                      ("segment", pa.list_(pa.int32()))])


def shard_rows(numbered: Iterable[tuple[int, list[Item]]]) -> dict[str, list]:
    """Shards as the listing's columns."""
    columns: dict[str, list] = {name: [] for name in listing_schema().names}
    for shard, members in numbered:
        columns["shard"].append(shard)
        for name in ("source", "location", "kind", "error", "start", "stop", "segment"):
            columns[name].append([getattr(item, name) for item in members])
    return columns


def shard_items(row: dict[str, Any]) -> list[Item]:
    """The items of one listing row (a dict of its columns)."""
    names = ("source", "location", "kind", "error", "start", "stop", "segment")
    return [Item(*values) for values in zip(*(row[name] for name in names))]


class ListingReader:
    """A worker's view of a listing file: the items of shard ``n``, read one row group at a time."""

    def __init__(self, fs: Any, folder: str):
        import pyarrow.parquet as pq

        self.file = pq.ParquetFile(fs.open_input_file(posixpath.join(folder, LISTING)))
        self.group, self.rows = -1, []

    def items(self, shard: int) -> list[Item]:
        group = shard // LISTING_GROUP
        if group != self.group:
            self.rows, self.group = self.file.read_row_group(group).to_pylist(), group
        row = self.rows[shard % LISTING_GROUP]
        if row["shard"] != shard:
            raise FerkitError(f"the listing's row for shard {shard} holds shard {row['shard']}: a damaged listing")
        return shard_items(row)


def write_listing(fs: Any, folder: str, items: Iterable[Item], shard_size: int) -> tuple[int, int, str]:
    """Write the listing of ``items`` in ``folder`` (atomically, memory bounded by :data:`LISTING_CHUNK`
    shards); returns (inputs, shards, the listing's sha256)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = listing_schema()
    target = posixpath.join(folder, LISTING)
    temp = temp_name(folder, LISTING)
    inputs = count = 0
    with fs.open_output_stream(temp) as stream:
        writer = pq.ParquetWriter(stream, schema)
        chunk: list[tuple[int, list[Item]]] = []
        for members in shards(items, shard_size):
            chunk.append((count, members))
            inputs += len(members)
            count += 1
            if len(chunk) == LISTING_CHUNK:
                writer.write_table(pa.table(shard_rows(chunk), schema=schema), row_group_size=LISTING_GROUP)
                chunk = []
        if chunk or count == 0:
            writer.write_table(pa.table(shard_rows(chunk), schema=schema), row_group_size=LISTING_GROUP)
        writer.close()
    fs.move(temp, target)
    return inputs, count, file_sha256(fs, target)


def temp_name(folder: str, name: str) -> str:
    """A new hidden temp file's path beside ``folder/name``."""
    return posixpath.join(folder, f"{TEMP_PREFIX}{name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")


def file_sha256(fs: Any, path: str) -> str:
    """The sha256 of a file, read in 1 MB pieces."""
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while piece := stream.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(fs: Any, folder: str) -> dict[str, Any] | None:
    """The manifest of the run in ``folder``; None when it has none."""
    import pyarrow.fs as pafs

    path = posixpath.join(folder, MANIFEST)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    try:
        with fs.open_input_stream(path) as stream:
            manifest = json.loads(stream.read(1 << 20).decode())
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise FerkitError(f"{path}: not a readable run manifest ({e}); use a new output folder") from None
    if not isinstance(manifest, dict) or any(key not in manifest for key in (*MANIFEST_KEYS, "shards")):
        raise FerkitError(f"{path}: not a ferkit run manifest; use a new output folder")
    return manifest


def write_manifest(fs: Any, folder: str, manifest: dict[str, Any]) -> None:
    temp = temp_name(folder, MANIFEST)
    with fs.open_output_stream(temp) as stream:
        stream.write((json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    fs.move(temp, posixpath.join(folder, MANIFEST))


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The manifest fields that differ, as ``name: old -> new`` lines (nested fields dotted)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {_short(a)} -> {_short(b)}")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_resume(old: dict[str, Any], new: dict[str, Any], folder: str) -> None:
    """Refuse to resume the run of manifest ``old`` with what would make ``new``: its rows would mix two runs."""
    changed = differences({k: old.get(k) for k in MANIFEST_KEYS}, {k: new.get(k) for k in MANIFEST_KEYS})
    if changed:
        raise FerkitError(f"{folder} holds a run made with other settings, so its results would mix two runs: "
                          f"{'; '.join(changed)}. Rerun with the same ones to resume it, or give a new --out folder")


def remove_temps(fs: Any, folder: str) -> int:
    """Remove the temp files an interrupted run left in ``folder``; returns how many."""
    import pyarrow.fs as pafs

    removed = 0
    for info in fs.get_file_info(pafs.FileSelector(folder)):
        name = posixpath.basename(info.path)
        if info.type == pafs.FileType.File and name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
            fs.delete_file(info.path)
            removed += 1
    return removed


def part_path(folder: str, shard: int) -> str:
    return posixpath.join(folder, PART.format(shard))


def shard_done(fs: Any, path: str) -> bool:
    """Whether the part file at ``path`` exists whole (its Parquet footer reads); a damaged one is removed."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    if fs.get_file_info(path).type != pafs.FileType.File:
        return False
    try:
        with fs.open_input_file(path) as handle:
            pq.read_metadata(handle)
        return True
    except (OSError, ValueError):  # pyarrow raises ArrowInvalid (a ValueError) or OSError
        fs.delete_file(path)
        return False
