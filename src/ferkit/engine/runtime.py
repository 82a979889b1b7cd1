"""Where and how a run computes (device, precision) and what it records about the machine and the code."""
from __future__ import annotations

import os
import platform
import subprocess
from contextlib import nullcontext
from pathlib import Path

import torch

from ferkit.precision import AUTOCAST_DTYPES


def autocast(device: torch.device, precision: str):
    """The autocast context for ``precision`` (a name in ``ferkit.precision.PRECISIONS``) on ``device``
    (a no-op for fp32)."""
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def git_commit() -> str | None:
    """The commit of the ferkit source tree, when it is a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> str:
    """A one-line description of the machine the run used."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
