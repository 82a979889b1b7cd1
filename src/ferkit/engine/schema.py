"""The one schema of a prediction, written once: what ``Result.to_dict``, ``ferkit predict --format jsonl/csv``
and the HTTP API all give, field for field. Plain dataclasses, so the server can publish them as its OpenAPI
response schema and other writers (CSV, Parquet) can read the field list from here.

Floats are rounded where they are made (probabilities to 4 decimals, points to 0.1 px, times to the ms), so
every output shows the same numbers.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

STATUSES = ("ok", "no_face", "error")
Status = Literal["ok", "no_face", "error"]
PROB_DECIMALS = 4
POINT_DECIMALS = 1
TIME_DECIMALS = 3


def round_prob(value: float) -> float:
    """A probability or score as every output shows it."""
    return round(float(value), PROB_DECIMALS)


def round_point(value: float) -> float:
    """A point coordinate (pixels) as every output shows it."""
    return round(float(value), POINT_DECIMALS)


@dataclass
class FaceRecord:
    """One face: where it is, the expression read from it, and its track in a video."""

    box: list[int]                      # x, y, w, h in pixels of the image
    label: str                          # the most likely expression
    confidence: float                   # its probability
    probs: dict[str, float]             # every class's probability, in the model's class order
    score: float | None = None          # the detector's confidence; None when the face was given
    eyes: list[list[float]] | None = None  # the eye centres [[x, y], [x, y]] (the person's right eye first)
    track: int | None = None            # in a video: the same number for the same person across frames


@dataclass
class ImageRecord:
    """What was found in one input (an image, or one frame of a video)."""

    source: str                         # the file, folder entry, upload name or video it came from
    status: Status = "ok"               # ok, no_face, or error (then ``error`` says why)
    error: str | None = None
    frame: int | None = None            # video: the frame's index in the file (0-based)
    time_s: float | None = None         # video: the frame's time from the start, seconds
    width: int | None = None            # the image's size in pixels; None when it could not be read
    height: int | None = None
    model: str | None = None            # the model's name
    detector: str | None = None         # the face detector; None when faces were given or detection was off
    faces: list[FaceRecord] = field(default_factory=list)  # largest first

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with every field, in this order."""
        return dataclasses.asdict(self)


@dataclass
class PredictResponse:
    """The HTTP API's answer to ``POST /v1/predict``: one record per image, in the order they were sent."""

    model: str
    images: list[ImageRecord]


IMAGE_COLUMNS = tuple(f.name for f in dataclasses.fields(ImageRecord) if f.name != "faces")
FACE_COLUMNS = ("face", "track", "x", "y", "w", "h", "score", "label", "confidence",
                "right_eye_x", "right_eye_y", "left_eye_x", "left_eye_y")
"""A face's columns in a flat table, between the image's and one probability column per class."""


def csv_header(classes: list[str]) -> list[str]:
    """The columns of a flat table (CSV, Parquet): one row per face, or per input without a face."""
    return [*IMAGE_COLUMNS, *FACE_COLUMNS, *classes]


def csv_rows(record: ImageRecord, classes: list[str]) -> list[list[Any]]:
    """The rows of ``record`` under :func:`csv_header`; an input with no face gets one row with empty face cells."""
    head = [getattr(record, name) for name in IMAGE_COLUMNS]
    if not record.faces:
        return [[*head, *[None] * (len(FACE_COLUMNS) + len(classes))]]
    rows = []
    for n, face in enumerate(record.faces, start=1):
        eyes = [coordinate for point in face.eyes for coordinate in point] if face.eyes else [None] * 4
        rows.append([*head, n, face.track, *face.box, face.score, face.label, face.confidence, *eyes,
                     *(face.probs.get(c) for c in classes)])
    return rows


# The type of each flat column (CSV reads them back as text; Parquet keeps them): everything not listed is a
# string, and every column may be empty (null).
_INT_COLUMNS = ("frame", "width", "height", "face", "track", "x", "y", "w", "h")
_FLOAT_COLUMNS = ("time_s", "score", "confidence", "right_eye_x", "right_eye_y", "left_eye_x", "left_eye_y")


def arrow_schema(classes: list[str]) -> Any:
    """The flat table's columns as an explicit pyarrow schema: ints, floats (one per class probability) and
    strings, all nullable, so an all-empty column keeps its type."""
    import pyarrow as pa

    def kind(name: str) -> Any:
        if name in _INT_COLUMNS:
            return pa.int32()
        if name in _FLOAT_COLUMNS or name in classes:
            return pa.float32()
        return pa.string()

    return pa.schema([pa.field(name, kind(name), nullable=True) for name in csv_header(classes)])


def arrow_table(rows: list[list[Any]], classes: list[str]) -> Any:
    """Rows of :func:`csv_rows` as a pyarrow table of :func:`arrow_schema` (no rows: an empty, typed table)."""
    import pyarrow as pa

    schema = arrow_schema(classes)
    columns = list(zip(*rows)) if rows else [[] for _ in schema]
    return pa.Table.from_arrays([pa.array(column, type=f.type) for column, f in zip(columns, schema)], schema=schema)
