"""Where and how a run computes (device, precision) and what it records about the machine and the code."""
from __future__ import annotations

import os
import platform
import subprocess
from contextlib import nullcontext
from pathlib import Path

import torch

from ferkit.errors import FerkitError
from ferkit.precision import AUTOCAST_DTYPES


def autocast(device: torch.device, precision: str):
    """The autocast context for ``precision`` (a name in ``ferkit.precision.PRECISIONS``) on ``device``
    (a no-op for fp32)."""
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def native_half(dtype: str) -> bool:
    """Whether this CPU computes ``dtype`` (bf16 or fp16) in its own instructions (oneDNN's check).

    Where it does not (e.g. AVX2 without AVX-512), PyTorch emulates it: a bf16 ResNet step runs ~100x
    slower than fp32 there. Where the check itself is missing, the CPU is assumed able.
    """
    check = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[dtype]
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):
        return True


def usable_precision(device: torch.device, precision: str) -> tuple[str, str]:
    """The precision to compute in on ``device`` when ``precision`` is asked for, and a line saying why
    it differs ("" when it does not): a CPU without native bf16/fp16 computes in fp32."""
    if device.type != "cpu" or precision == "fp32" or native_half(precision):
        return precision, ""
    return "fp32", (f"precision={precision}: this CPU ({cpu_name()}) has no native {precision} arithmetic, "
                    f"where {precision} runs many times slower than fp32 (~100x for a ResNet step), so this run "
                    "computes in fp32")


DEVICES = ("auto", "cpu", "cuda", "mps")


def _mps() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else Apple's MPS, else the CPU; a device asked for by name must be there
    (FerkitError saying so, and what there is, when it is not)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise FerkitError(f"device {name!r}: not a device name; choose one of {', '.join(DEVICES)} "
                          "(or cuda:N)") from None
    missing = ((device.type == "cuda" and not torch.cuda.is_available()) or (device.type == "mps" and not _mps())
               or (device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count()))
    if missing or device.type not in ("cpu", "cuda", "mps"):
        there = "cpu" + (f", cuda (x{torch.cuda.device_count()})" if torch.cuda.is_available() else "") \
            + (", mps" if _mps() else "")
        raise FerkitError(f"device {name!r} is not available to this torch {torch.__version__} (there is: {there}); "
                          "use --device auto or cpu")
    return device


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
