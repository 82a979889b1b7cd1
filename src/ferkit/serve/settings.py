"""The settings of ``ferkit serve``, typed, with their limits; one place for every default."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferkit.engine.options import RecognizerOptions
from ferkit.errors import FerkitError

API_KEY_ENV = "FERKIT_API_KEY"
CONFIG_ENV = "FERKIT_SERVE_CONFIG"  # hands the settings to uvicorn's worker processes (--workers > 1)


@dataclass(frozen=True)
class ServeConfig:
    """How the server listens, batches and limits what clients may send."""

    model: str = "default"            # shipped model name, or a .pt / .safetensors file
    backend: str = RecognizerOptions.backend  # Recognizer backend: auto | torch | onnx | onnx-int8
    device: str = "auto"              # where the model runs: auto | cpu | cuda | mps
    host: str = "127.0.0.1"           # loopback only unless told otherwise
    port: int = 8000
    workers: int = 1                  # processes, each with its own model
    api_key: str | None = field(default=None, repr=False)  # required on /v1/* when set (X-API-Key or Bearer)
    cors: tuple[str, ...] = ()        # allowed browser origins; none: CORS off
    batching: bool = True             # gather concurrent requests into one model call
    max_batch: int = 32               # images per model call, at most
    max_wait_ms: float = 5.0          # ms the first request of a batch waits for others
    queue_size: int = 64              # requests waiting for the model; beyond it: 503 + Retry-After
    max_upload_mb: float = 10.0       # MB per uploaded image
    max_files: int = 16               # images per request
    max_pixels: int = 40_000_000      # pixels per image (also capped by PIL.Image.MAX_IMAGE_PIXELS)
    pixel_budget: int = 120_000_000   # pixels decoded at once over all requests; also the most one request holds
    header_timeout_s: float = 5.0     # s a client may take to send a request's line and headers
    upload_timeout_s: float = 30.0    # s a client may take to send its request body
    predict_timeout_s: float = 60.0   # s a request may wait for the model, queue included
    refusal_delay_s: float = 1.0      # s a refused upload (413: too large, too many images or pixels) waits for
                                      # its answer: a client sending such requests in a loop sends one a second

    def __post_init__(self) -> None:
        for name in ("port", "workers", "max_batch", "queue_size", "max_files", "max_pixels", "pixel_budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "port" else 1):
                raise FerkitError(f"serve: {name} must be a whole number >= {0 if name == 'port' else 1}, "
                                  f"got {value!r}")
        if self.pixel_budget < self.max_pixels:
            raise FerkitError(f"serve: pixel_budget ({self.pixel_budget}) must be at least max_pixels "
                              f"({self.max_pixels}), or the largest image allowed could never be read")
        if self.port > 65535:
            raise FerkitError(f"serve: port must be at most 65535, got {self.port}")
        for name in ("max_wait_ms", "max_upload_mb", "header_timeout_s", "upload_timeout_s", "predict_timeout_s",
                     "refusal_delay_s"):
            value = getattr(self, name)
            zero_ok = name in ("max_wait_ms", "refusal_delay_s")
            low_ok = value >= 0 if zero_ok else value > 0
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not low_ok
                    or not math.isfinite(value)):
                raise FerkitError(f"serve: {name} must be a finite number {'>= 0' if zero_ok else '> 0'}, "
                                  f"got {value!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise FerkitError("serve: the API key is empty; give a non-empty key or none")
        if self.api_key is not None and not all(33 <= ord(c) <= 126 for c in self.api_key):
            # HTTP headers carry visible ASCII: a key with other characters could never be sent back.
            raise FerkitError("serve: the API key must be visible ASCII characters (letters, digits, punctuation; "
                              "no spaces), or no client could ever send it")

    @property
    def max_upload_bytes(self) -> int:
        """The size limit of one uploaded image, in bytes."""
        return int(self.max_upload_mb * 1_000_000)

    def to_json(self) -> str:
        """The settings as JSON, the API key left out (it travels in its own environment variable)."""
        return json.dumps({**dataclasses.asdict(self), "api_key": None})

    @classmethod
    def from_json(cls, text: str, **changes: Any) -> ServeConfig:
        """Settings written by :meth:`to_json`, with ``changes`` applied."""
        data = json.loads(text)
        data["cors"] = tuple(data.get("cors", ()))
        return cls(**{**data, **changes})


def read_api_key(path: str | Path) -> str:
    """The API key in the file at ``path`` (its first line, surrounding whitespace removed)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FerkitError(f"--api-key-file {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    key = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not key:
        raise FerkitError(f"--api-key-file {path}: the file holds no key")
    return key

