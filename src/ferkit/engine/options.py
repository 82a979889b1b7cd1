"""How a Recognizer finds and reads faces: one typed set of options and their defaults, shared by the Python
API, ``ferkit predict`` and ``ferkit serve``. Importing this module loads no model code."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ferkit.errors import FerkitError

BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
PER_CALL = ("detect", "tta", "min_face")  # the options a single call may change


@dataclass(frozen=True)
class RecognizerOptions:
    """Face finding and classification settings of a Recognizer (``None`` tta: the model file's own)."""

    backend: str = "auto"        # auto: onnxruntime on a CPU (int8 where the model has its int8 file), else torch
    detect: bool = True          # find faces; False: every input is a face crop already
    detector: str = field(default_factory=lambda: _default_detector())  # a name in ferkit.detect.list_detectors()
    min_face: int = 48           # smallest face to find, pixels of the photo
    detect_size: int = 320       # Haar detectors search a copy this large (longer side; 0: full size)
    tta: str | None = None       # test-time views; None: the model's setting
    batch_size: int = 64         # faces per model call

    def __post_init__(self) -> None:
        check_options(batch_size=self.batch_size, min_face=self.min_face, detect_size=self.detect_size,
                      tta=self.tta, detector=self.detector)
        if self.backend not in BACKENDS:
            raise FerkitError(f"backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if not isinstance(self.detect, bool):
            raise FerkitError(f"detect must be true or false, got {self.detect!r}")

    def with_call(self, **changes: Any) -> RecognizerOptions:
        """These options with one call's ``detect``/``tta``/``min_face`` (``None``: unchanged)."""
        unknown = sorted(set(changes) - set(PER_CALL))
        if unknown:
            raise FerkitError(f"a call may change only {', '.join(PER_CALL)}, not {', '.join(unknown)}")
        changes = {key: value for key, value in changes.items() if value is not None}
        return dataclasses.replace(self, **changes) if changes else self


def _default_detector() -> str:
    from ferkit.detect import DEFAULT_DETECTOR

    return DEFAULT_DETECTOR


def check_options(*, batch_size: int = 1, min_face: int = 1, detect_size: int = 0, tta: str | None = None,
                  detector: str | None = None, stride: int = 1, smooth: float = 0.0,
                  workers: int | None = None, spelled: dict[str, str] | None = None) -> None:
    """Raise FerkitError for a prediction option out of its range, before any work is done; ``spelled`` names
    the options as the caller's user typed them (``{"batch_size": "--batch-size"}``)."""
    spelled = spelled or {}
    for name, value, low in (("batch_size", batch_size, 1), ("min_face", min_face, 1),
                             ("detect_size", detect_size, 0), ("stride", stride, 1),
                             ("workers", 1 if workers is None else workers, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise FerkitError(f"{spelled.get(name, name)} must be a whole number >= {low}, got {value!r}")
    if isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or not 0 <= smooth < 1:
        raise FerkitError(f"{spelled.get('smooth', 'smooth')} must be a number from 0 to below 1 "
                          f"(the weight of the previous frame), got {smooth!r}")
    if tta is not None:
        from ferkit.data.augment import TTA_MODES

        if tta not in TTA_MODES:
            raise FerkitError(f"{spelled.get('tta', 'tta')} {tta!r}: choose one of {', '.join(TTA_MODES)}")
    if detector is not None:
        from ferkit.detect import list_detectors

        if detector not in list_detectors():
            raise FerkitError(f"{spelled.get('detector', 'detector')} {detector!r}: choose one of "
                              f"{', '.join(list_detectors())}")
