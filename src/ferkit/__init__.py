"""ferkit: facial expression recognition with ResNet-18 + CBAM and island loss (Sun 2021).

The public API is loaded on first use, so ``import ferkit`` (and the ``ferkit`` command's start) stays cheap.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ferkit.errors import FerkitError

__version__ = "0.1.0"

# name -> the module it comes from
_API = {
    "TrainConfig": "ferkit.config", "load_config": "ferkit.config",
    "FERDataset": "ferkit.data", "load_dataset": "ferkit.data",
    "Recognizer": "ferkit.engine.predict", "RecognizerOptions": "ferkit.engine.options",
    "create_loss": "ferkit.losses",
    "create_model": "ferkit.models", "list_models": "ferkit.models",
}

__all__ = ["FERDataset", "FerkitError", "Recognizer", "RecognizerOptions", "TrainConfig", "create_loss",
           "create_model", "list_models", "load_config", "load_dataset", "__version__"]

if TYPE_CHECKING:
    from ferkit.config import TrainConfig, load_config
    from ferkit.data import FERDataset, load_dataset
    from ferkit.engine.options import RecognizerOptions
    from ferkit.engine.predict import Recognizer
    from ferkit.losses import create_loss
    from ferkit.models import create_model, list_models


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'ferkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
