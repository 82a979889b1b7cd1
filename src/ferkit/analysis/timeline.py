"""Emotion over time: each tracked person's expression probabilities through a video, from the results of
``ferkit predict`` (its JSON lines or CSV, or :class:`~ferkit.engine.predict.Result` objects)."""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferkit.engine.schema import csv_header
from ferkit.errors import FerkitError
from ferkit.fileio import new_figure, save_figure

MAX_TRACKS = 8  # people drawn per video, the longest-seen first


@dataclass
class Track:
    """One person through one video: the time (or frame) of each sighting and the class probabilities there."""

    source: str
    track: int
    unit: str = "s"  # of the times: seconds, or "frame" where the video gave no frame rate
    times: list[float] = field(default_factory=list)
    probs: list[dict[str, float]] = field(default_factory=list)


def tracks_of(records: Iterable[dict[str, Any]]) -> list[Track]:
    """The tracks in result records (the one output schema, as dicts), by video then track number.

    Records of still images (no frame) and faces without a track are left out; time is ``time_s`` where the
    video gave a frame rate, else the frame index.
    """
    found: dict[tuple[str, int], Track] = {}
    for record in records:
        if record.get("frame") is None:
            continue
        timed = record.get("time_s") is not None
        when = record["time_s"] if timed else record["frame"]
        for face in record.get("faces") or []:
            if face.get("track") is None:
                continue
            key = (record["source"], int(face["track"]))
            track = found.setdefault(key, Track(*key, unit="s" if timed else "frame"))
            track.times.append(float(when))
            track.probs.append({k: float(v) for k, v in face["probs"].items()})
    return [found[key] for key in sorted(found)]


def read_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Result records from a file ``ferkit predict`` wrote: JSON lines (``.jsonl``) or CSV (one face a row)."""
    path = Path(path)
    if not path.is_file():
        raise FerkitError(f"{path}: no such results file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FerkitError(f"{path}: cannot read ({e})") from None
    if path.suffix.lower() == ".csv":
        return _records_from_csv(text, path)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise FerkitError(f"{path}:{number}: not a JSON line of `ferkit predict --format jsonl`") from None
        if not isinstance(record, dict) or "source" not in record:
            raise FerkitError(f"{path}:{number}: not a result record (no source)")
        records.append(record)
    return records


def _records_from_csv(text: str, path: Path) -> list[dict[str, Any]]:
    """Rows of ``ferkit predict --format csv`` regrouped into records with faces."""
    rows = list(csv.DictReader(text.splitlines()))
    if rows and not {"source", "frame", "track", "label"} <= set(rows[0]):
        raise FerkitError(f"{path}: not a CSV of `ferkit predict --format csv` (no source, frame, track, label)")
    fixed = set(csv_header([]))  # every column but the class probabilities
    records: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        record = records.setdefault((row["source"], row["frame"]), {
            "source": row["source"], "frame": int(row["frame"]) if row["frame"] else None,
            "time_s": float(row["time_s"]) if row.get("time_s") else None, "faces": []})
        if row["label"]:
            record["faces"].append({"track": int(row["track"]) if row["track"] else None,
                                    "probs": {k: float(v) for k, v in row.items() if k not in fixed and v}})
    return list(records.values())


def plot_timeline(records: Iterable[dict[str, Any]], out_path: str | os.PathLike[str],
                  source: str | None = None) -> Path:
    """One panel per tracked person of a video (``source``, or the only video in ``records``): each
    expression's probability against time. Up to :data:`MAX_TRACKS` people, those seen longest first."""
    tracks = tracks_of(records)
    videos = sorted({t.source for t in tracks})
    if source is None:
        if len(videos) > 1:
            raise FerkitError(f"the results hold {len(videos)} videos; name one ({', '.join(videos[:3])}...)")
        source = videos[0] if videos else None
    tracks = [t for t in tracks if t.source == source]
    if not tracks:
        raise FerkitError("no tracked faces in video frames to draw (give the results of `ferkit predict` on a video)")
    shown = sorted(tracks, key=lambda t: -len(t.times))[:MAX_TRACKS]
    shown.sort(key=lambda t: t.track)
    classes = list(shown[0].probs[0])
    fig = new_figure(figsize=(10.0, 1.9 * len(shown) + 0.9), layout="constrained")
    from matplotlib import colormaps  # there once new_figure found matplotlib

    palette = colormaps["tab10"]
    axes = fig.subplots(len(shown), 1, sharex=True, squeeze=False)[:, 0]
    for ax, track in zip(axes, shown):
        for k, name in enumerate(classes):
            ax.plot(track.times, [p.get(name, 0.0) for p in track.probs], color=palette(k % 10), linewidth=1.4,
                    label=name)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"person #{track.track}")
        ax.grid(alpha=0.3)
    axes[0].legend(ncol=len(classes), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.45), frameon=False)
    axes[-1].set_xlabel("time (s)" if shown[0].unit == "s" else "frame")
    fig.suptitle(f"{Path(str(source)).name}: expression probability over time"
                 + (f" ({len(shown)} of {len(tracks)} people)" if len(tracks) > len(shown) else ""), fontsize=10)
    return save_figure(fig, out_path)
