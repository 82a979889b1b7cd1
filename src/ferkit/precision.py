"""Numeric precisions by name: the autocast dtype behind each ``precision`` choice of training and evaluation."""
from __future__ import annotations

import torch

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
"""The autocast dtype of each precision; None runs in float32 without autocast."""
PRECISIONS = tuple(AUTOCAST_DTYPES)
"""The ``precision`` choices of training and evaluation."""
