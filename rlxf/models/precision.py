"""Precision: which dtype weights are stored in and which dtype matmuls compute in.

``precision`` is one setting shared by training, rollouts, scoring and evaluation:

* ``fp32``: weights and compute in float32;
* ``bf16-mixed``: float32 weights (and optimizer state), matmuls in bfloat16 under ``torch.autocast``
  (the default where bf16 is native: ~2.7x faster training steps on an AVX-512 BF16 CPU);
* ``bf16``: weights stored in bfloat16 too (least memory; small updates can round away);
* ``auto``: ``bf16-mixed`` where the hardware computes bf16 natively, ``fp32`` elsewhere.

Every layer that runs a model under a precision asks this module, so a policy is sampled, scored and
trained under the same arithmetic.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from rlxf.models.load import cpu_has_native_bf16

Precision = Literal["auto", "fp32", "bf16-mixed", "bf16"]
ResolvedPrecision = Literal["fp32", "bf16-mixed", "bf16"]


def resolve_precision(precision: Precision, device: torch.device) -> ResolvedPrecision:
    """``auto`` -> ``bf16-mixed`` where bf16 is native on ``device``, else ``fp32``; others as given."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16-mixed" if cpu_has_native_bf16() else "fp32"


def weight_dtype(precision: ResolvedPrecision) -> str:
    """The dtype (a ``ModelConfig.dtype`` value) to load trainable weights in for ``precision``."""
    return "bfloat16" if precision == "bf16" else "float32"


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 compute for ``bf16-mixed`` (weights stay as stored); a no-op context otherwise."""
    device_type = device if isinstance(device, str) else device.type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


__all__ = ["Precision", "ResolvedPrecision", "autocast", "resolve_precision", "weight_dtype"]
